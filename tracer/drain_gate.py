"""When the capture loop reads the rings while the traced programs run.

The records wait in the kernel's rings (memory already allocated and
mapped) until one of these, whichever comes first:
- BPF wakes the loop: a process held at its exec, a fork (the rss sampler
  and the process table want the child), a process's end;
- a ring is half full (the loop looks every poll interval, 0.1 s);
- `interval` has passed since the last read (the flush interval, 1 s: a
  long run's trace reaches the disk as before);
- the run ends (the capture's last reads do not ask the gate).

Why: reading the rings while a program that keeps every CPU busy runs costs
that program more wall time than the reads' CPU time. `churn 100000`
(three actors on two CPUs), `--rss sampled`, read this way against every
0.1 s, paired runs: 0.890 (95% CI 0.826..0.965, 30 pairs) of the
workload's fork-to-exit time, its CPU time 0.930 (docs/benchmarks.md,
sixteenth session, with a prototype's two sets).
What it costs: the reads come in larger batches, and what is left at the
end (up to a second's records) is read after the last exit.

With the live view on, `interval` is LIVE_INTERVAL: the status line shows
what the rings held at the last read. Not used with -a: its rss sampler
reads only the processes whose rows came since its last read, so that a
busy machine's idle processes cost nothing.
"""
from __future__ import annotations

from typing import Iterable, Protocol

# A ring this full is read at the next look, whatever else.
FILL = 0.5
# With the live view: its redraws' period (tracer.live.REFRESH, 4 a second).
LIVE_INTERVAL = 0.25


class Ring(Protocol):
    size: int                     # data bytes

    def pending_bytes(self) -> int: ...


class DrainGate:
    """`due(woke, now)`: whether to read the rings now; `drained(now)`
    after each read."""

    def __init__(self, rings: Iterable[Ring], interval: float, now: float,
                 fill: float = FILL) -> None:
        self.rings = list(rings)
        self.interval = interval
        self.fill = fill
        self._last = now

    def due(self, woke: bool, now: float) -> bool:
        return (woke or now - self._last >= self.interval
                or any(r.pending_bytes() >= self.fill * r.size for r in self.rings))

    def drained(self, now: float) -> None:
        self._last = now
