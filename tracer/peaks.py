"""Peak mapped and peak resident bytes, per process and for the traced tree,
from a trace's rows with numpy alone: computed at the end of every run (the
summary, the metadata's `peaks`), where the recorder has no pandas (0.6 s to
import) and the address-space model (tracer.address_space) costs seconds on
a syscall-heavy run.

- resident: the largest anon + file + shmem of a process over time, the
  running values of t.rss (tracer.rss: the absolute values of `rss` rows,
  the changes of faults and `rss` rows, everything 0 at the exit of the last
  thread); `exact` False when a part was still unknown there (a lower bound:
  e.g. after -p, a counter that never changed).
- mapped: the largest mapped bytes of a process over time, from its memory
  syscalls and the layouts read at attach and exec (tracer.peaks_mapped).
- the tree: the largest sum over the traced processes at one instant (pages
  shared between processes count in each).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from tracer import peaks_mapped, trace_schema
from tracer.layout import C

COLUMNS = ("ts", "pid", "kind", "addr", "len", "new_len", "ret", "flags", "child", "path",
           "rss_anon", "rss_file", "rss_shmem", "member", "rss_size", "rss_delta")
RESIDENT = ("anon", "file", "shmem")
_MEMBER = {"file": 0, "anon": 1, "shmem": 3}        # kmem:rss_stat member
_K = trace_schema.KIND_INDEX


def of_spill(path: str | Path, page_size: int = 4096, residency: bool = True) -> dict:
    """The peaks of the spill (writer.Spill, an Arrow IPC stream): only
    COLUMNS are read; a stream cut short gives its whole batches."""
    fields = [trace_schema.SCHEMA.get_field_index(n) for n in COLUMNS]
    batches = []
    with pa.memory_map(str(path)) as src:
        try:
            reader = ipc.open_stream(src, options=ipc.IpcReadOptions(included_fields=fields))
            for b in reader:
                batches.append(b)
        except (pa.ArrowException, OSError):
            pass
    schema = pa.schema([f for f in trace_schema.SCHEMA if f.name in COLUMNS])   # in file order
    return of_table(pa.Table.from_batches(batches, schema), page_size, residency)


def of_table(table: pa.Table, page_size: int = 4096, residency: bool = True) -> dict:
    """{"per_pid": {pid: {mapped, mapped_ts, rss, rss_ts, rss_exact}},
    "total": the same for the tree, "residency"}: bytes and trace ts; rss
    None where nothing resident is known (--no-rss: everywhere)."""
    c = Rows(table)
    return assemble(peaks_mapped.peaks(c, page_size),
                    resident(c, page_size) if residency else None, residency)


def assemble(mapped_peaks: tuple, resident_peaks: tuple | None, residency: bool) -> dict:
    """of_table's dict from the mapped and the resident peaks."""
    per_pid: dict[int, dict] = {}
    mapped, tree_mapped = mapped_peaks
    for pid, (v, ts) in mapped.items():
        per_pid.setdefault(pid, _empty()).update(mapped=v, mapped_ts=ts)
    total = _empty()
    total.update(mapped=tree_mapped[0], mapped_ts=tree_mapped[1])
    if resident_peaks is not None:
        rss, tree_rss = resident_peaks
        for pid, (v, ts, exact) in rss.items():
            per_pid.setdefault(pid, _empty()).update(rss=v, rss_ts=ts, rss_exact=exact)
        if tree_rss is not None:
            total.update(rss=tree_rss[0], rss_ts=tree_rss[1], rss_exact=tree_rss[2])
    return {"per_pid": {str(p): per_pid[p] for p in sorted(per_pid)},
            "total": total, "residency": residency}


def _empty() -> dict:
    return {"mapped": 0, "mapped_ts": None, "rss": None, "rss_ts": None, "rss_exact": None}


class Rows:
    """The columns of a trace table as numpy, rows in time order. `raw`
    gives a column's values buffer: where the column is null, whatever the
    buffer holds (callers select the rows where it applies); read once,
    without pyarrow's to_numpy (which imports pandas)."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self._cache: dict[str, np.ndarray] = {}
        self._order = None
        ts = self.raw("ts")
        self.n = len(ts)
        self.reordered = self.n > 1 and bool((ts[1:] < ts[:-1]).any())   # put in time order
        if self.reordered:
            self._order = np.argsort(ts, kind="stable")
            self._cache.clear()

    def raw(self, name: str) -> np.ndarray:
        v = self._cache.get(name)
        if v is None:
            col = self._table.column(name)
            parts = [values(ch) for ch in col.chunks]
            v = np.concatenate(parts) if len(parts) != 1 else parts[0]
            if self._order is not None:
                v = v[self._order]
            self._cache[name] = v
        return v

    def valid(self, name: str) -> np.ndarray:
        parts = [_bits(ch) for ch in self._table.column(name).chunks]
        v = np.concatenate(parts) if parts else np.zeros(0, bool)
        return v if self._order is None else v[self._order]

    def codes(self, name: str, names: list[str]) -> np.ndarray:
        """A dictionary column as positions in `names` (-1: other, null)."""
        key = name + "\0" + "\0".join(names)
        v = self._cache.get(key)
        if v is None:
            parts = []
            for ch in self._table.column(name).chunks:
                lookup = np.array([names.index(s) if s in names else -1
                                   for s in ch.dictionary.to_pylist()] + [-1], np.int8)
                idx = values(ch.indices).astype(np.int64)
                parts.append(lookup[np.where(_bits(ch.indices), idx, len(lookup) - 1)])
            v = np.concatenate(parts) if parts else np.zeros(0, np.int8)
            if self._order is not None:
                v = v[self._order]
            self._cache[key] = v
        return v


def values(ch: pa.Array) -> np.ndarray:
    """A column chunk's values buffer as numpy (nulls: whatever it holds)."""
    typ = ch.type.index_type if pa.types.is_dictionary(ch.type) else ch.type
    dt = np.dtype(trace_schema.NUMPY_TYPES[typ])
    buf = ch.buffers()[1]
    if buf is None:
        return np.zeros(len(ch), dt)
    return np.frombuffer(buf, dt, count=len(ch), offset=ch.offset * dt.itemsize)


def _bits(ch: pa.Array) -> np.ndarray:
    buf = ch.buffers()[0]
    if buf is None:
        return np.full(len(ch), ch.null_count == 0)
    return trace_schema.bits(buf, ch.offset, len(ch))


def resident(c: Rows, page: int) -> tuple[dict, tuple | None]:
    """pid -> (peak, ts, exact) and the tree's (peak, ts, exact), or None
    where no row says anything resident."""
    r = Resident(page)
    r.step(*resident_rows(c))
    return r.result()


def resident_rows(c: Rows) -> tuple:
    """The rows that say something resident (Resident.step's arguments),
    runs of faults already cut (fault_runs) before the other columns are
    taken: on a fault-heavy trace nearly every row says something."""
    kind = c.codes("kind", trace_schema.KINDS)
    is_fault = kind == _K["fault"]
    raw = [c.raw("rss_" + k) for k in RESIDENT]
    changed = raw[0] != 0
    for v in raw[1:]:
        changed |= v != 0
    is_exit = (kind == _K["exit"]) & ((c.raw("flags") & np.uint64(C["MT_EXIT_GROUP_DEAD"])) != 0)
    rows = np.flatnonzero((is_fault & changed) | (kind == _K["rss"]) | is_exit)
    pid = c.raw("pid")[rows].astype(np.int64)
    fault = is_fault[rows]
    counts = [v[rows].astype(np.int64) for v in raw]
    keep, counts = _runs_cut(pid, fault, counts)
    if keep is not None:
        rows, pid, fault = rows[keep], pid[keep], fault[keep]
    rss = kind[rows] == _K["rss"]
    return (pid, c.raw("ts")[rows], fault, rss, is_exit[rows],
            np.where(rss, c.raw("member")[rows], -1), rss & ~c.valid("rss_delta")[rows],
            c.raw("rss_size")[rows].astype(np.int64), c.raw("rss_delta")[rows].astype(np.int64),
            *counts)


def fault_runs(p, ts, fault, rss, ext, member, absolute, size, delta, *counts) -> tuple:
    """Resident.step's rows with each run of faults (consecutive rows of
    one process, none lowering a counter) cut to its first row and, per
    counter, its last row that raises it; the changes of the rows dropped
    added into the next row kept (the rows after a run's last rise change
    nothing). The same figures, from a few rows per run instead of every
    fault (the step costs ~0.4 us a row: 4 s of CPU for 10M faults). Why:
    only rss and exit rows set a counter, so what is known is the same on
    every row of a run; the process's total (and the tree's, the other
    processes standing still) only rises in it, at the rows that raise a
    known counter: its largest value in the run is first reached at the
    last of them (none: at the run's first row), with the same exactness."""
    keep, counts = _runs_cut(p, fault, list(counts))
    if keep is None:
        return (p, ts, fault, rss, ext, member, absolute, size, delta, *counts)
    return (*(v[keep] for v in (p, ts, fault, rss, ext, member, absolute, size, delta)),
            *counts)


def _runs_cut(p, fault, counts: list) -> tuple:
    """fault_runs' rows kept (None: all) and their counts, merged."""
    if len(p) < 3:
        return None, counts
    rise = fault.copy()
    for c in counts:
        rise &= c >= 0
    same = rise[1:] & rise[:-1] & (p[1:] == p[:-1])     # a row goes on the run before it
    keep = np.r_[True, ~same]                           # a run's first row
    run = np.cumsum(keep)                               # its number
    for c in counts:
        up = np.flatnonzero(c > 0)
        if len(up):
            keep[up[np.r_[run[up][1:] != run[up][:-1], True]]] = True   # its last rise
    if keep.all():
        return None, counts
    rows = np.flatnonzero(keep)
    return rows, [np.diff(np.cumsum(c)[rows], prepend=0) for c in counts]


class Resident:
    """Resident peaks in steps, each of the rows after the last step's
    (resident_rows of them), from where each process's counters stood: the
    same figures as one step over all the rows (tracer.peaks_stream)."""

    def __init__(self, page: int) -> None:
        self.page = page
        self._known: dict[int, list[bool]] = {}     # pid -> each counter known
        self._value: dict[int, list[int]] = {}      # pid -> each counter's bytes
        self._best: dict[int, tuple[int, int, bool]] = {}
        self._tree = self._inexact = 0              # the sum now; processes inexact now
        self._top: tuple[int, int, bool] | None = None      # the tree's first largest
        self._top_exact: tuple[int, int, bool] | None = None    # its first exact one

    def step(self, p, ts, fault, rss, ext, member, absolute, size, delta, *counts) -> None:
        if not len(p):
            return
        p, ts, fault, rss, ext, member, absolute, size, delta, *counts = fault_runs(
            p, ts, fault, rss, ext, member, absolute, size, delta, *counts)
        # a process's counters as the last step left them: a row before the
        # step's, setting what was known (and changing nothing else)
        carried = [q for q in np.unique(p).tolist() if any(self._known.get(q, ()))]
        k0 = len(carried)
        p = np.r_[np.array(carried, np.int64), p]
        n = len(p)
        real = np.arange(n) >= k0
        o = np.argsort(p, kind="stable")       # per process, its rows in time order
        p_o = p[o]
        first = np.r_[True, p_o[1:] != p_o[:-1]]
        block = np.maximum.accumulate(np.where(first, np.arange(n), 0))  # its first row
        total = np.zeros(n, np.int64)
        known_all = np.ones(n, bool)
        known_any = np.zeros(n, bool)
        pad = np.zeros(k0, np.int64)
        knowns, values = [], []
        for i, k in enumerate(RESIDENT):
            m = member == _MEMBER[k]
            was = np.array([self._known[q][i] for q in carried], bool)
            is_reset = np.r_[was, (m & absolute) | ext][o]
            base = np.r_[[self._value[q][i] for q in carried], np.where(ext, 0, size)]
            change = np.r_[pad, np.where(fault, counts[i] * self.page,
                                         np.where(m & ~absolute, delta, 0))]
            cs = np.cumsum(np.where(is_reset, 0, change[o]))
            last = np.maximum.accumulate(np.where(is_reset, np.arange(n), -1))
            known = last >= block
            li = np.maximum(last, 0)
            value = base.astype(np.int64)[o][li] + cs - cs[li]
            total += np.where(known, value, 0)
            known_all &= known
            known_any |= known
            knowns.append(known)
            values.append(value)
        ts_o = np.r_[np.zeros(k0, ts.dtype), ts][o]
        cand = np.flatnonzero(known_any & real[o])
        if len(cand):
            # per pid the largest total; among equal ones an exact one, then the first
            pick = cand[np.lexsort((cand, ~known_all[cand], -total[cand], p_o[cand]))]
            heads = pick[np.r_[True, p_o[pick][1:] != p_o[pick][:-1]]]
            for i in heads.tolist():
                q, v, x = int(p_o[i]), int(total[i]), bool(known_all[i])
                old = self._best.get(q)
                if old is None or v > old[0] or (v == old[0] and x and not old[2]):
                    self._best[q] = (v, int(ts_o[i]), x)
        # the tree: a row changes the sum by its process's change of total
        inexact = (known_any & ~known_all).astype(np.int64)
        back = np.empty_like(o)
        back[o] = np.arange(n)                                       # time order again
        keep = back[k0:]                                             # the step's rows
        tree = self._tree + np.cumsum(
            (total - np.where(first, 0, np.r_[0, total[:-1]]))[keep])
        n_inexact = self._inexact + np.cumsum(
            (inexact - np.where(first, 0, np.r_[0, inexact[:-1]]))[keep])
        top = np.flatnonzero(tree == tree.max())       # the first, an exact one if any
        exact = top[n_inexact[top] == 0]
        v = int(tree[top[0]])
        if self._top is None or v > self._top[0]:
            self._top, self._top_exact = (v, int(ts[top[0]]), bool(n_inexact[top[0]] == 0)), None
        if v == self._top[0] and self._top_exact is None and len(exact):
            self._top_exact = (v, int(ts[exact[0]]), True)
        self._tree, self._inexact = int(tree[-1]), int(n_inexact[-1])
        ends = np.flatnonzero(np.r_[p_o[1:] != p_o[:-1], True])      # each process's last row
        for i in ends.tolist():
            q = int(p_o[i])
            self._known[q] = [bool(kn[i]) for kn in knowns]
            self._value[q] = [int(va[i]) for va in values]

    def result(self) -> tuple[dict, tuple | None]:
        return dict(self._best), self._top_exact or self._top
