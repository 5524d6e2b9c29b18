"""Resident memory sampled from /proc (`--rss sampled`, the default of
`--faults=summary` and of -a): each traced process's RssAnon, RssFile,
RssShmem and VmSwap read from /proc/PID/status at an interval, written as
`rss` rows like the BPF side's absolute values (flags MT_RSS_BASELINE |
MT_RSS_SAMPLED, cause `sampled`).

Why: kmem:rss_stat, which gives every change exactly (`--rss exact`), fires
inside every fault that adds a page, and the tracepoint costs a fault-heavy
program about 6-8% with an empty program on it (docs/benchmarks.md, fifth
session): more than the summary mode's whole budget (issue 4: 1.05x). Read
from user space, on another CPU, the counters add no hook to the traced
program (what reading them costs it did not show above this VM's noise:
docs/benchmarks.md, sixth session); what is lost is what the interval hides (a peak between two reads,
the fault that made a page resident), which the trace says: such peaks are
lower bounds (tracer.summary prints them with ">=").

A row goes out only for a counter that changed since the process's last
read (the first read: all four), so an idle process adds nothing. A read
costs 20-35 us on this VM (a round of 72-76 pids: 1.7-2.7 ms), so with many processes (-a) the ones that
showed no activity (no row: fault, syscall) since their last read are read
only every FULL_EVERY intervals: only reclaim or another task can have
changed their counters meanwhile.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

from tracer import _procfs
from tracer.errors import NoSuchProcess
from tracer.layout import EVENT, C
from tracer.trace_schema import numpy_view

FLAGS = C["MT_RSS_BASELINE"] | C["MT_RSS_SAMPLED"]
DEFAULT_INTERVAL = 0.1
FULL_EVERY = 10

Reader = Callable[[int], "_procfs.RssStatus | None"]


class Sampler:
    """Reads the processes it is given when `due`; `sample` returns the
    rows (layout.EVENT) of the counters that changed."""

    def __init__(self, interval: float = DEFAULT_INTERVAL,
                 read: Reader = _procfs.read_rss_status) -> None:
        self.interval = interval
        self._read = read
        self._last: dict[int, tuple[int, ...]] = {}   # pid -> its counters at the last read
        self._next = 0.0
        self._round = 0
        self._active: set[int] = set()   # pids with rows since the last read
        self._read_rows: list[np.ndarray] = []   # read, until `take`
        self.reads = 0
        # pid -> the first and the largest VmHWM read: the kernel's own
        # high-water mark of resident bytes, which sees the peaks the
        # interval hides (up to the process's last read)
        self._hwm_first: dict[int, int] = {}
        self._hwm: dict[int, int] = {}

    def hwm(self) -> dict[int, int]:
        """pid -> the largest VmHWM read, where it grew after the first
        read: then it was reached while traced. VmHWM counts from the
        start of the address space, so a value that never grew may be older
        than the trace (-p, or -a's processes running at start)."""
        return {p: v for p, v in self._hwm.items() if v > self._hwm_first[p]}

    def active(self, pids: Iterable[int]) -> None:
        """These processes did something (their rows came): read them next."""
        self._active.update(pids)

    def due(self, now: float) -> bool:
        return now >= self._next

    def read(self, pids: Iterable[int]) -> None:
        """`sample`, its rows kept until `take`: the capture takes them after
        its next drain of the rings (below)."""
        self._read_rows.append(self.sample(pids))

    def take(self, left: Iterable[int] = ()) -> np.ndarray:
        """The rows read since the last take, but those of a process that
        has left the trace (-a: `left`, known from the drain that came after
        the read): read after it left, a row would follow its exit row."""
        rows = np.concatenate(self._read_rows) if self._read_rows else rows_of([])
        self._read_rows.clear()
        left = list(left)
        if len(rows) and left:
            rows = rows[~np.isin(rows["pid"], left)]
        return rows

    def sample(self, pids: Iterable[int], now: float | None = None) -> np.ndarray:
        now = time.monotonic() if now is None else now
        self._next = now + self.interval
        full, self._round = self._round % FULL_EVERY == 0, self._round + 1
        pids = set(pids)
        todo = pids if full else {p for p in pids if p in self._active or p not in self._last}
        self._active.clear()
        rows: list[tuple[int, int, int, int, str]] = []   # ts, pid, member, bytes, comm
        seen = set()
        for pid in sorted(todo):
            # the time before the read: the values are of a later moment, so
            # the row cannot come after the process's exit row
            ts = time.monotonic_ns()
            try:
                status = self._read(pid)
            except NoSuchProcess:
                continue
            if status is None:   # a zombie, or a kernel thread: no mm
                continue
            self.reads += 1
            seen.add(pid)
            values = status.counters
            self._hwm_first.setdefault(pid, status.hwm)
            if status.hwm > self._hwm.get(pid, 0):
                self._hwm[pid] = status.hwm
            old = self._last.get(pid)
            for member, v in enumerate(values):
                if old is None or old[member] != v:
                    rows.append((ts, pid, member, v, status.name))
            self._last[pid] = values
        for pid in set(self._last) - (seen | (pids - todo)):   # gone: a new process may
            del self._last[pid]                                  # take its pid
        return rows_of(rows)


def pids_of(batches: list[pa.RecordBatch]) -> list[int]:
    """The pids of these rows (whose counters may have moved). By a view of
    the column's buffer: Array.to_numpy imports pandas (0.3 s, which a
    process held at its exec waited out)."""
    if not batches:
        return []
    return np.unique(np.concatenate([numpy_view(b.column("pid")) for b in batches])).tolist()


def rows_of(rows: list[tuple[int, int, int, int, str]]) -> np.ndarray:
    """(ts, pid, member, bytes, comm) as `rss` records of the event ring's
    layout. The comm (status's Name: the main thread's) is the row's thread
    name, as the BPF side's are, which the trace's name table follows."""
    out = np.zeros(len(rows), EVENT)
    if rows:
        a = np.array([r[:4] for r in rows], np.int64)
        out["comm"] = [r[4].encode("utf-8", "replace")[:15] for r in rows]
        out["ts"] = a[:, 0]
        out["pid"] = out["tid"] = a[:, 1]
        out["kind"] = C["MT_EV_RSS"]
        out["flags"] = FLAGS
        out["aux"] = a[:, 2]
        out["args"][:, 0] = a[:, 3]
    return out
