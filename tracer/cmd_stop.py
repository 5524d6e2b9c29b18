"""What becomes of the CMD memtrace started when memtrace is told to stop
(SIGINT, SIGTERM, SIGHUP) while CMD still runs (README "Guarantees").

memtrace does not exit leaving it running. CMD gets the signal: a
terminal's Ctrl-C or hang-up reaches CMD's whole process group by itself,
and SIGTERM is passed on at once (as strace does). If CMD is still there
GRACE seconds later, it gets SIGTERM (what perf record sends its workload):
CMD may ignore the first signal (a command a script starts with `&` ignores
SIGINT, and so does the CMD it starts), or the signal went to memtrace
alone (`kill -INT PID`). GRACE seconds after that, SIGKILL. Each step is
said on stderr; memtrace then exits with the status CMD died of.

Tracing goes on meanwhile (the caller keeps draining), so CMD's last events
and its exit are in the trace, and wait4 gives the kernel's counts for it.
Only CMD itself is signalled: its children get what the terminal sends them.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable

GRACE = 2.0   # seconds CMD has to exit after each signal


class Ending:
    """Ends the CMD memtrace started (`pid`, command name `name`) after
    memtrace got the signal `reason` ("SIGINT", "SIGTERM" or "SIGHUP").
    Call `step()` at each turn of the capture loop until CMD is reaped."""

    def __init__(self, pid: int, name: str, reason: str, say: Callable[[str], None],
                 grace: float = GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        self.pid, self.name, self.say, self.grace, self.clock = pid, name, say, grace, clock
        self.last, self.since = reason, clock()    # the last signal CMD got, and when
        if reason == "SIGTERM":   # sent to memtrace, not to CMD's group: pass it on
            _send(pid, signal.SIGTERM)
            self.plan = [signal.SIGKILL]
        else:
            self.plan = [signal.SIGTERM, signal.SIGKILL]

    def step(self) -> bool:
        """Sends the next signal if CMD has had GRACE seconds since the last.
        False once CMD has outlived its SIGKILL by GRACE (an uninterruptible
        sleep): the caller stops waiting, and that is said too."""
        waited = self.clock() - self.since
        if waited < self.grace:
            return True
        if not self.plan:
            self.say(f"{self.name} (pid {self.pid}) has not exited {waited:.0f} s after"
                     " SIGKILL: left to the kernel")
            return False
        sig = self.plan.pop(0)
        action = "killed it (SIGKILL)" if sig == signal.SIGKILL else f"sent it {sig.name}"
        self.say(f"{self.name} (pid {self.pid}) still running {waited:.0f} s after"
                 f" {self.last}: {action}")
        _send(self.pid, sig)
        self.last, self.since = sig.name, self.clock()
        return True


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
        if sig != signal.SIGKILL:   # a stopped CMD acts on it only once continued
            os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
