"""The processes a capture starts and lets run: CMD started as the user
who ran sudo, and every process BPF stopped at its exec (SIGSTOP, until its
maps are read) continued, however the capture ends (README "Guarantees").
"""
from __future__ import annotations

import os
import select
import signal
import time

from tracer.layout import C
from tracer.probes import Probes


def user_args(run_as: tuple[int, int, list[int]] | None) -> dict:
    """subprocess.Popen's arguments that run CMD as `run_as` (uid, gid, groups)."""
    if run_as is None:
        return {}
    uid, gid, groups = run_as
    return {"user": uid, "group": gid, "extra_groups": groups}


def as_whom(run_as: tuple[int, int, list[int]] | None) -> str:
    return "" if run_as is None else f" as uid {run_as[0]}"


class ExitWatch:
    """A pidfd of CMD in the capture's epoll set: readable once CMD has
    exited, so the loop reaps it then, not at its next poll timeout (up to
    `poll_interval` later, the end's largest wait before: its exit event
    comes before it can be reaped). Unregistered once CMD is reaped (a pidfd
    stays readable). Without pidfd_open (Linux < 5.3) the timeout serves."""

    def __init__(self, poller: select.epoll, pid: int) -> None:
        self._poller = poller
        try:
            self.fd: int | None = os.pidfd_open(pid)
            poller.register(self.fd, select.EPOLLIN)
        except (OSError, AttributeError):
            self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            try:
                self._poller.unregister(self.fd)
            except (OSError, ValueError):
                pass
            os.close(self.fd)
            self.fd = None


def release_held(probes: Probes, held: set[int], stop_at_exec: bool) -> None:
    """Continues every process BPF stopped at exec that was not continued
    yet: those seen (`held`), and those whose exec record is still in the
    ring. Runs however the capture ends; only a SIGKILL of memtrace skips it."""
    if stop_at_exec:
        try:
            probes.set_config(C["MT_CFG_STOP_AT_EXEC"], 0)
            time.sleep(0.02)  # an exec's BPF program in flight has sent its SIGSTOP
            late = probes.rings["execs"].read()
            if "kind" in (late.dtype.names or ()):
                late = late[late["kind"] == C["MT_EV_EXEC"]]
            held.update(late["pid"].tolist())
        except Exception:
            pass
    for pid in sorted(held):
        resume(pid)
    held.clear()


def resume(pid: int) -> None:
    _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
