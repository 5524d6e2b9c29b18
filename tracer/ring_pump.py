"""A thread that keeps the fault and event rings from filling while the
capture loop is busy.

The loop reads the rings and then builds rows from what it read and writes
them to the spill: on a program that makes memory syscalls as fast as it
can, that work comes in steps of a few tenths of a second each (a drain of
824k rows took 0.58 s, and a flush's drain and spill write kept the rings
unread for 865 ms, on a 2-CPU VM with `churn 400000` keeping both CPUs
busy), and one CPU's event ring (16 MiB: 150k records) fills in about
0.65 s there: BPF dropped 10k to 217k events in 6 of 11 runs
(docs/benchmarks.md, twentieth session).
This thread only copies: every `interval` it moves the records of each
ring at least `fill` full into memory (RingReader.stash), where the loop's
next read takes them first (RingReader.read: the stash, then the ring).
The thread holds the GIL only for its looks and copies, at most every
`interval`. A ring's stash stops growing at `cap` times the ring's size:
past that, BPF's drops are counted as before (the `lost` counters).
"""
from __future__ import annotations

import threading
from typing import Sequence

from tracer.ringbuf import RingReader

INTERVAL = 0.05
FILL = 0.25
CAP = 8            # a ring's stash, at most, in sizes of the ring


class RingPump:
    def __init__(self, readers: Sequence[RingReader], interval: float = INTERVAL,
                 fill: float = FILL, cap: int = CAP) -> None:
        self.readers = list(readers)
        self.interval = interval
        self.fill = fill
        self.cap = cap
        self.stashed = 0          # records copied out by this thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memtrace-ring-pump",
                                        daemon=True)

    def start(self) -> "RingPump":
        if self.readers:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def turn(self) -> int:
        """One look at every ring: the records stashed."""
        n = 0
        for r in self.readers:
            if r.ring_bytes() >= self.fill * r.size:
                n += r.stash(self.cap * r.size)
        self.stashed += n
        return n

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.turn()
