"""The live view: while memtrace traces, one status line on stderr, when
stderr is a terminal (not with -q), redrawn in place at most REFRESH times a
second from the capture loop:

    2.6s  162k events/s  faults 113k minor 0 major  mapped 16.6 MiB  lost 0

elapsed time since tracing started, events captured per second since the
last redraw, page faults captured (minor, major), bytes mapped (NetMapped),
events lost (the BPF counters). The figures are the capture's own running
counts (Result), plus vectorised sums over each batch of events as the
capture built it (NetMapped.update, made only when the view is on); a
redraw reads the BPF counters once. Measured (thread CPU time, churn
400000, 1.15M events): NetMapped.update 44-49 ms in all, about 3.5% of the
drains' CPU; 30-45 redraws 6-9 ms. The line is cleared before anything else
is printed (a message, the final summary).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterable, TextIO

import numpy as np
import pyarrow as pa

from tracer import trace_schema
from tracer.layout import C

REFRESH = 4.0            # redraws per second, at most
MAX_WIDTH = 80           # and never wider than the terminal
ERASE = "\x1b[K"         # erase to the end of the line (ECMA-48 EL)

_MMAP, _MUNMAP, _MREMAP, _BRK, _EXIT = range(1, 6)      # NetMapped._WHAT
_GROUP_DEAD = C["MT_EXIT_GROUP_DEAD"]


class NetMapped:
    """Bytes mapped by the traced processes alive, as their memory syscalls
    tell it: successful mmap lengths, minus munmap lengths, plus mremap's
    growth (new minus old length), plus the heap's growth (each brk's new
    break minus the break the process had before, from the brk calls seen;
    brk(0) only reads it). A process's share goes when it exits or execs (its
    address space goes with it); a forked child starts at 0 (what it
    inherits is counted in its parent). Mappings the kernel makes without a
    syscall (at exec) are not in it, and an mmap over a mapping (MAP_FIXED,
    as the loader maps a library's segments into the span it reserved)
    counts again: a quick figure, not the address-space model's. Traced
    python3 holding a 100 MiB mmap showed 109 MiB; its VmSize (113.7 MiB)
    less the exec-made mappings (7.2 MiB) is 106.5 MiB."""

    # what each kind of the trace is here (a lookup, not a compare per kind)
    _WHAT = np.zeros(len(trace_schema.KINDS), np.int8)
    _WHAT[[trace_schema.KIND_INDEX[k] for k in ("mmap", "munmap", "mremap", "brk", "exit")]] = \
        _MMAP, _MUNMAP, _MREMAP, _BRK, _EXIT
    _SIGN = np.array([0, 1, -1, -1, 0, 0], np.int64)   # of the (old) length, `len`

    def __init__(self) -> None:
        self.by_pid: dict[int, int] = {}
        self.brk: dict[int, int] = {}      # pid -> the last break seen

    @property
    def total(self) -> int:
        return sum(self.by_pid.values())

    def update(self, batch: pa.RecordBatch | None, execs: np.ndarray | None = None) -> None:
        """One batch of events (trace_rows.event_batch, rows in ring order), and
        the exec records (layout.EXEC) read with it: those processes start
        again from 0, with only their events after the exec. Reads the
        batch's columns where they are (contiguous, unlike the records)."""
        exec_ts: dict[int, int] = {}
        if execs is not None and len(execs):
            for pid, ts in zip(execs["pid"].tolist(), execs["ts"].tolist()):
                self.by_pid.pop(pid, None)
                self.brk.pop(pid, None)
                exec_ts[pid] = max(ts, exec_ts.get(pid, 0))
        if batch is None or not batch.num_rows:
            return
        what = self._WHAT[_values(batch, "kind")]
        rows = np.flatnonzero(what)
        if not len(rows):
            return
        what = what[rows]
        pid = _values(batch, "pid")[rows]
        ret = _values(batch, "ret")[rows]
        ok = ret >= 0
        # each row's change of the bytes mapped, but a brk's
        change = np.where(ok, self._SIGN[what] * _values(batch, "len")[rows].view(np.int64), 0)
        remap = rows[(what == _MREMAP) & ok]                  # plus the new length
        change[(what == _MREMAP) & ok] += _values(batch, "new_len")[remap].view(np.int64)
        asked = _values(batch, "addr")[rows].view(np.int64)  # brk's argument
        dead = (what == _EXIT) & ((_values(batch, "flags")[rows] & _GROUP_DEAD) != 0)
        ts = _values(batch, "ts")[rows] if exec_ts else None
        for p, g in _groups(pid):
            if p in exec_ts:
                g = g[ts[g] > exec_ts[p]]
            delta = int(change[g].sum())
            b = g[what[g] == _BRK]
            if len(b):
                delta += self._brk_growth(p, ret[b], asked[b])
            if delta:
                self.by_pid[p] = self.by_pid.get(p, 0) + delta
            if dead[g].any():
                self.by_pid.pop(p, None)
                self.brk.pop(p, None)

    def _brk_growth(self, pid: int, new: np.ndarray, asked: np.ndarray) -> int:
        """How much a process's brk calls (in order) moved its break."""
        prev = np.empty_like(new)
        prev[0] = self.brk.get(pid, new[0])
        prev[1:] = new[:-1]
        self.brk[pid] = int(new[-1])
        return int((new - prev)[asked != 0].sum())    # brk(0) only asks


def _values(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A column's values buffer as numpy, nulls included (whatever value
    they hide: callers select the rows where the column applies)."""
    col = batch.column(name)
    return trace_schema.numpy_view(col.indices if pa.types.is_dictionary(col.type) else col)


def _groups(pid: np.ndarray, few: int = 8):
    """(pid, positions in ring order) for each process in `pid`: a pass per
    process while they are few (the usual batch), else one sort."""
    rest = np.arange(len(pid))
    for _ in range(few):
        if not len(rest):
            return
        first = pid[rest[0]]
        mine = pid[rest] == first
        yield int(first), rest[mine]
        rest = rest[~mine]
    if len(rest):
        order = rest[np.argsort(pid[rest], kind="stable")]
        cuts = np.flatnonzero(np.diff(pid[order])) + 1
        for g in np.split(order, cuts):
            yield int(pid[g[0]]), g


class LiveView:
    """Called by the capture loop (capture.run's `live`) with the running
    Result and a function that reads the BPF counters; redraws the status
    line when one is due."""

    def __init__(self, stream: TextIO, lost_counters: Iterable[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.lost_counters = tuple(lost_counters)
        self.clock = clock
        self.dumb = os.environ.get("TERM") == "dumb"    # no escape sequences: pad
        self._due = 0.0
        self._last: tuple[float, int] | None = None     # (time, events) at the last redraw
        self._shown = False

    @classmethod
    def for_stream(cls, stream: TextIO, quiet: bool,
                   lost_counters: Iterable[str]) -> LiveView | None:
        """A view on `stream` if it is a terminal and not `quiet`, else None."""
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(stream, lost_counters) if tty and not quiet else None

    def __call__(self, res, counters: Callable[[], dict]) -> None:  # res: capture.Result
        now = self.clock()
        if now < self._due:
            return
        self._due = now + 1 / REFRESH
        events = sum(res.counts.values())
        elapsed = max(now - res.start_ts / 1e9, 0.0)
        since, before = self._last or (now - elapsed, 0)
        rate = (events - before) / (now - since) if now > since else 0.0
        self._last = (now, events)
        c = counters()
        minor = sum(v[0] for v in res.faults.values())
        major = sum(v[1] for v in res.faults.values())
        net = res.net_mapped.total if res.net_mapped is not None else 0
        lost = sum(c.get(k, 0) for k in self.lost_counters)
        line = status_line(elapsed, rate, minor, major, net, lost, self._width())
        self._write("\r" + (line.ljust(self._width()) if self.dumb else line + ERASE))
        self._shown = True

    def clear(self) -> None:
        """Erases the status line (before the summary, a message, an error)."""
        if self._shown:
            self._write("\r" + (" " * self._width() + "\r" if self.dumb else ERASE))
            self._shown = False

    def wrap(self, say: Callable[[str], None]) -> Callable[[str], None]:
        """`say`, clearing the status line first."""
        def said(text: str) -> None:
            self.clear()
            say(text)
        return said

    def _width(self) -> int:
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            cols = 0
        return min(cols or MAX_WIDTH, MAX_WIDTH) - 1   # the last column would wrap

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):   # the terminal went away: tracing goes on
            pass


def status_line(elapsed: float, rate: float, minor: int, major: int, net: int,
                lost: int, width: int = MAX_WIDTH - 1) -> str:
    fields = [elapsed_text(elapsed), f"{count(int(rate))} events/s",
              f"faults {count(minor)} minor {count(major)} major",
              f"mapped {size(net)}", f"{'LOST' if lost else 'lost'} {count(lost)}"]
    line = "  ".join(fields)
    if len(line) > width:
        line = " ".join(fields)
    return line[:width]


def elapsed_text(s: float) -> str:
    if s < 600:
        return f"{int(s * 10) / 10:.1f}s"
    m = int(s) // 60
    return f"{m}m{int(s) % 60:02d}s" if m < 600 else f"{m // 60}h{m % 60:02d}m"


def count(v: int) -> str:
    """v in at most 5 characters: 3 significant digits, cut (not rounded),
    so that a count that grows never shows a smaller figure."""
    if v < 1000:
        return str(v)
    for unit, scale in (("k", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12)):
        if v < 1000 * scale or unit == "T":
            return _three_digits(v, scale) + unit
    return str(v)


def size(v: int) -> str:
    """Bytes, signed, in binary units with 3 significant digits (cut)."""
    sign, v = ("-" if v < 0 else ""), abs(v)
    if v < 1024:
        return f"{sign}{v} B"
    for unit, scale in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40)):
        if v < 1024 * scale or unit == "TiB":
            return f"{sign}{_three_digits(v, scale)} {unit}"
    return f"{sign}{v} B"


def _three_digits(v: int, scale: int) -> str:
    if v < 10 * scale:
        hundredths = v * 100 // scale
        return f"{hundredths // 100}.{hundredths % 100:02d}"
    if v < 100 * scale:
        tenths = v * 10 // scale
        return f"{tenths // 10}.{tenths % 10}"
    return str(v // scale)
