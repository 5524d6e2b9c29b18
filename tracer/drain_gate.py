"""When the capture loop reads the rings and the summary map.

The records wait in the kernel's rings (memory already allocated and
mapped), and --faults=summary's entries in its map, until one of these,
whichever comes first:
- BPF wakes the loop: a process held at its exec, a fork (the rss sampler
  and the process table want the child), a process's end;
- a ring is half full (the summary's runs rings included; the loop looks
  every poll interval, 0.1 s);
- `interval` has passed since the last read (the flush interval, 1 s: a
  long run's trace reaches the disk as before);
- the run ends (the capture's last reads do not ask the gate).

Why: reading the rings while a program that keeps every CPU busy runs costs
that program more wall time than the reads' CPU time. `churn 100000`
(three actors on two CPUs), `--rss sampled`, read this way against every
0.1 s, paired runs: 0.890 (95% CI 0.826..0.965, 30 pairs) of the
workload's fork-to-exit time, its CPU time 0.930 (docs/benchmarks.md,
sixteenth session, with a prototype's two sets). A single-threaded
fault-heavy program under -a (`faults 256 8`), a copy whose whole loop
turned every 1 s instead of 0.1 s: 0.983 (0.976..0.991, 20 pairs); this
gate against the loop before, 0.990 (0.974..1.032, 20 pairs); summary
mode, its rings gated already, did not move with its map gated too: 1.003
(0.979..1.029) (docs/benchmarks.md, seventeenth session).
What it costs: the reads come in larger batches, and what is left at the
end (up to a second's records) is read after the last exit. The summary
map, drained at each read (so at least once a second, no longer every
0.1 s), holds up to a second's entries: most runs go to the runs ring, the
map takes only a run with a fault still open, a run of one fault whose key
it holds, and a run the ring cannot take (bpf/memtrace.bpf.c,
summary_flush); a full map sends the run to the ring, and what both
refuse is counted (summary_full), never dropped silently.

With the live view on, `interval` is LIVE_INTERVAL: the status line shows
what the rings held at the last read. With -a, the rss sampler reads, in
the turns between two reads, the processes whose rows came at the last
read, so that a busy machine's idle processes cost nothing.
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
