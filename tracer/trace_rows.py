"""Ring records -> rows of the trace (Arrow record batches in the schema of
tracer/trace_schema.py): a builder for each record layout of tracer/layout.py
(faults, fault summary entries, syscall and process events, paths) and for
one reading of /proc/PID/maps, and `CommTable`, the thread names that fault
rows take (fault records carry none).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from tracer import layout
from tracer.trace_schema import (EMPTY_STRINGS, KIND_INDEX, KINDS, SCHEMA, arrow_array, null_array,
                                 string_array, zero_array)

_KIND_DICT = string_array(KINDS)

_C = layout.C
_SYSCALL_CODES = {_C["MT_EV_" + k.upper()]: k for k in layout.SYSCALL_KINDS}
# rss rows' causes beyond the syscalls: the counters of a process's new mm
# (fork, exec, vfork: flags MT_RSS_NEW_MM), a change made by another task
# or a value read from /proc at an interval (MT_RSS_SAMPLED: tracer.rss_sample)
_NEW_MM, _OTHER_TASK, _SAMPLED = 1 << 20, (1 << 20) + 1, (1 << 20) + 2
_CAUSE_CODES = {**_SYSCALL_CODES, _NEW_MM: "new_mm", _OTHER_TASK: "other_task",
                _SAMPLED: "sampled"}


def _kind_array(codes: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(arrow_array(codes.astype(np.int8, copy=False), pa.int8()),
                                          _KIND_DICT)


# Records per block when fields are copied out of ring records: a block's
# cache lines stay in L2 while each of its fields is copied. Field by field
# over a whole ring read (64k records of 56 bytes) reads them all again from
# L3 or memory for every field: 3-4 times slower.
_BLOCK = 8192
_RSS = ("rss_anon", "rss_file", "rss_shmem", "rss_swap")


def _fields(rec: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Fields of structured records as contiguous arrays (Arrow takes them by
    their buffers; numpy's tests and masks on them run at memory speed, not at
    the record stride), a block of records at a time. The resident counters
    become int32, their columns' type (int16 in ring records)."""
    out = {f: np.empty(len(rec), np.int32 if f in _RSS else rec.dtype[f]) for f in names}
    for i in range(0, len(rec), _BLOCK):
        block = rec[i:i + _BLOCK]
        for f, a in out.items():
            a[i:i + _BLOCK] = block[f]
    return out


def _strings(values: list[str | None]) -> pa.DictionaryArray:
    index: dict[str, int] = {}
    idx = np.zeros(len(values), np.int32)
    valid = np.ones(len(values), bool)
    for i, v in enumerate(values):
        if v is None:
            valid[i] = False
        else:
            idx[i] = index.setdefault(v, len(index))
    return pa.DictionaryArray.from_arrays(arrow_array(idx, pa.int32(), valid),
                                          string_array(list(index)), safe=False)


class CommTable:
    """Names of the traced threads, by tid, as the events report them.

    Faults do not carry a name (it would triple their size); they take their
    thread's latest name, a dictionary index per batch."""

    def __init__(self) -> None:
        self.by_tid: dict[int, str] = {}
        self._known: tuple[np.ndarray, list[str]] | None = None   # sorted tids, their names

    def update(self, tids: Iterable[int], comms: Iterable[str]) -> None:
        self.by_tid.update(zip(tids, comms))
        self._known = None

    def array(self, tids: np.ndarray) -> pa.DictionaryArray:
        """The names of `tids` as a dictionary array of the names used. A
        thread not named yet is a null index, never a null in the dictionary
        (pyarrow cannot unify dictionaries holding nulls). No sort: a batch
        has one thread or a few, looked up in the sorted table of names."""
        n = len(tids)
        # faults come in runs of one thread (a single-threaded process; a
        # thread's burst while the others wait): a lookup per run, not per
        # fault, unless the runs are short (threads faulting at once)
        starts = np.flatnonzero(tids[1:] != tids[:-1]) + 1
        if n and not len(starts):   # one thread
            name = self.by_tid.get(int(tids[0]))
            if name is None:
                return pa.DictionaryArray.from_arrays(null_array(n, pa.int32()), EMPTY_STRINGS,
                                                      safe=False)
            return pa.DictionaryArray.from_arrays(zero_array(n, pa.int32()), string_array([name]),
                                                  safe=False)
        if self._known is None or len(self._known[0]) != len(self.by_tid):
            order = sorted(self.by_tid)
            self._known = (np.array(order, np.int64), [self.by_tid[t] for t in order])
        known, names = self._known
        if not len(known):
            return pa.DictionaryArray.from_arrays(null_array(n, pa.int32()), EMPTY_STRINGS,
                                                  safe=False)
        runs = len(starts) < n // 16
        if runs:
            starts = np.concatenate(([0], starts))
            tids = tids[starts]
        pos = np.minimum(np.searchsorted(known, tids), len(known) - 1)
        hit = known[pos] == tids
        used = np.flatnonzero(np.bincount(pos[hit], minlength=len(known)))
        remap = np.zeros(len(known), np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        index = remap[pos]
        if runs:
            lengths = np.diff(starts, append=n)
            index, hit = np.repeat(index, lengths), (None if hit.all() else np.repeat(hit, lengths))
        indices = arrow_array(index, pa.int32(), hit)
        return pa.DictionaryArray.from_arrays(
            indices, string_array([names[i] for i in used]), safe=False)


def _batch(n: int, cols: dict[str, Any]) -> pa.RecordBatch:
    arrays = []
    for field in SCHEMA:
        v = cols.get(field.name)
        if v is None:
            arrays.append(null_array(n, field.type))
        elif isinstance(v, pa.Array):
            arrays.append(v)
        elif isinstance(v, np.ndarray) and v.dtype != np.bool_ and not v.any():
            arrays.append(zero_array(n, field.type))    # e.g. rss_swap of most faults
        elif isinstance(v, tuple):  # (values, valid mask)
            values, valid = v
            # none valid (alloc without --alloc, stack_id without --stacks):
            # shared nulls, as for an absent column, not a buffer of values
            # kept alive for nothing (8 bytes a fault row of the 63)
            if not valid.any():
                arrays.append(null_array(n, field.type))
            elif values.dtype != np.bool_ and valid.all() and not values.any():
                arrays.append(zero_array(n, field.type))      # e.g. alloc of most faults
            else:
                arrays.append(arrow_array(values, field.type, valid))
        else:
            arrays.append(arrow_array(v, field.type))
    return pa.record_batch(arrays, schema=SCHEMA)


def _fault_columns(f: dict[str, np.ndarray], comms: CommTable, residency: bool,
                   entry: np.ndarray) -> dict:
    """The columns a fault row has in both modes, from the fields (`_fields`)
    of ring records or of merged summary entries (the same names); without
    `residency` (--no-rss) the resident columns are null. `entry`: the
    fault's entry was seen (its error_code is known)."""
    n = len(f["ts"])
    return {
        "ts": f["ts"], "pid": _same(f["pid"].view(np.int32)), "tid": f["tid"].view(np.int32),
        "comm": comms.array(f["tid"]),
        "kind": _kind_array(np.full(n, KIND_INDEX["fault"], np.int8)),
        "addr": f["addr"],
        "major": (f["flags"] & _C["MT_FAULT_MAJOR"]) != 0,
        "error_code": (f["error_code"], entry),
        **{c: f[c] for c in _RSS if residency},      # absent: null
    }


_FAULT_FIELDS = ("ts", "pid", "tid", "addr", "flags", "error_code", "ip", "latency")


def fault_batch(rec: np.ndarray, comms: CommTable, residency: bool = True,
                alloc: bool = True) -> pa.RecordBatch:
    """Fault records (layout.FAULT) -> rows of kind `fault`, one each;
    `alloc` null unless kmem:mm_page_alloc was followed (--alloc)."""
    n = len(rec)
    f = _fields(rec, _FAULT_FIELDS + ("alloc", "stack_id") + (_RSS if residency else ()))
    entry = (f["flags"] & _C["MT_FAULT_NO_ENTRY"]) == 0
    return _batch(n, {
        **_fault_columns(f, comms, residency, entry),
        "ip": f["ip"],
        # a minor fault sent at its entry (no --fault-latency): no latency
        "latency": (f["latency"], (f["flags"] & _C["MT_FAULT_NO_END"]) == 0),
        "alloc": (f["alloc"], entry if residency and alloc else np.zeros(n, bool)),
        "stack_id": (f["stack_id"], f["stack_id"] >= 0),
        "count": _ones(n),
    })


def _read_only_ones(n: int) -> np.ndarray:
    a = np.ones(n, np.uint32)
    a.setflags(write=False)
    return a


_ONES = [_read_only_ones(1 << 16)]
_SAME: dict[int, np.ndarray] = {}      # pid -> a run of it, shared (read-only)


def _same(values: np.ndarray) -> np.ndarray:
    """`values` (int32), or a view of a shared run of its one value if it
    has one (the pid of a ring read of one process's faults: 4 of the 55
    bytes a fault row holds until its flush)."""
    n = len(values)
    if not n or values[0] != values[-1] or (values != values[0]).any():
        return values
    v = int(values[0])
    run = _SAME.get(v)
    if run is None or len(run) < n:
        if len(_SAME) >= 16:        # many processes: the latest ones kept (<= 4 MB)
            _SAME.clear()
        run = _SAME[v] = np.full(max(n, 1 << 16), v, np.int32)
        run.setflags(write=False)
    return run[:n]


def _ones(n: int) -> np.ndarray:
    """n ones (a fault row's count), a view of one shared array: Arrow
    takes it by its buffer, so the batches of a flush share it (4 of the 55
    bytes a fault row holds in memory until its flush)."""
    if len(_ONES[0]) < n:
        _ONES[0] = _read_only_ones(max(n, 2 * len(_ONES[0])))
    return _ONES[0][:n]


def summary_batch(rows: np.ndarray, comms: CommTable, residency: bool = True) -> pa.RecordBatch:
    """Merged fault_summary entries (tracer.fault_summary.ROW) -> `fault`
    rows that each stand for `count` faults (docs/format.md): `latency`
    (mean) only on major rows with a fault timed exactly, `ip` the first
    fault's (null on major rows), `alloc` null (not followed in this mode)."""
    f = _fields(rows, _FAULT_FIELDS + ("count", "last_ts", "pages") + (_RSS if residency else ()))
    timed_major = ((f["flags"] & _C["MT_FAULT_MAJOR"]) != 0) & (rows["untimed"] < rows["count"])
    return _batch(len(rows), {
        **_fault_columns(f, comms, residency, (f["flags"] & _C["MT_FAULT_NO_ENTRY"]) == 0),
        "ip": (f["ip"], f["ip"] != 0),
        "latency": (f["latency"], timed_major),
        "count": f["count"], "last_ts": f["last_ts"], "pages": f["pages"],
    })


def event_batch(rec: np.ndarray, comms: CommTable) -> pa.RecordBatch:
    """Syscall and process records (layout.EVENT) -> rows of their kinds."""
    n = len(rec)
    code = rec["kind"]
    kind = np.full(n, -1, np.int16)
    for c, name in layout.KIND_NAMES.items():
        if name in KIND_INDEX:
            kind[code == c] = KIND_INDEX[name]
    if (kind < 0).any():
        raise ValueError(f"unknown event kind {int(code[kind < 0][0])}")
    is_ = {k: code == _C["MT_EV_" + k.upper()] for k in
           ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
            "fork", "thread", "exit", "rss")}
    syscall = np.isin(code, list(_SYSCALL_CODES))
    args = rec["args"]
    sized = is_["mmap"] | is_["munmap"] | is_["mremap"] | is_["mprotect"] | is_["madvise"]
    prot_ok = is_["mmap"] | is_["mprotect"]
    flags = np.where(is_["mmap"] | is_["mremap"], args[:, 3],
                     np.where(is_["madvise"], args[:, 2], args[:, 0]))
    flags_ok = is_["mmap"] | is_["mremap"] | is_["madvise"] | is_["fork"] | is_["thread"]
    flags = np.where(is_["exit"], rec["flags"].astype(np.uint64), flags)
    flags_ok |= is_["exit"]
    rss = is_["rss"]
    baseline = (rec["flags"] & _C["MT_RSS_BASELINE"]) != 0
    # rss cause: the syscall in progress (by code), or how the value came
    cause_code = np.where(rss, args[:, 2], 0)
    cause_code = np.where(rss & ((rec["flags"] & _C["MT_RSS_NEW_MM"]) != 0), _NEW_MM, cause_code)
    cause_code = np.where(rss & ((rec["flags"] & _C["MT_RSS_OTHER_TASK"]) != 0), _OTHER_TASK,
                          cause_code)
    cause_code = np.where(rss & ((rec["flags"] & _C["MT_RSS_SAMPLED"]) != 0), _SAMPLED,
                          cause_code)
    cause = None
    if rss.any():   # a lookup per distinct code
        codes, inv = np.unique(cause_code, return_inverse=True)
        names = [_CAUSE_CODES.get(int(c)) for c in codes]
        cause = pa.DictionaryArray.from_arrays(
            arrow_array(inv.astype(np.int32), pa.int32(),
                        ~np.array([x is None for x in names])[inv]),
            string_array([x or "" for x in names]))
    return _batch(n, {
        "ts": rec["ts"], "pid": rec["pid"].view(np.int32), "tid": rec["tid"].view(np.int32),
        "comm": _comm_array(rec, comms), "kind": _kind_array(kind),
        "addr": (args[:, 0], syscall), "len": (args[:, 1], sized),
        "prot": (args[:, 2].astype(np.int32), prot_ok),
        "flags": (flags, flags_ok),
        "fd": (args[:, 4].astype(np.int64).astype(np.int32), is_["mmap"]),
        "off": (args[:, 5], is_["mmap"]),
        "new_len": (args[:, 2], is_["mremap"]), "new_addr": (args[:, 4], is_["mremap"]),
        "ret": (rec["ret"], syscall), "duration": (rec["duration"], syscall),
        "child": (rec["aux"], is_["fork"] | is_["thread"]),
        "member": (rec["aux"].astype(np.int8), rss),
        "rss_size": (args[:, 0].view(np.int64), rss),
        "rss_delta": (args[:, 1].view(np.int64), rss & ~baseline),
        "cause": cause,
        "stack_id": (rec["aux"], syscall & (rec["aux"] >= 0)),
    })


def _comm_array(rec: np.ndarray, comms: CommTable) -> pa.DictionaryArray:
    """The records' thread names, decoded once per distinct name (a batch
    holds tens of thousands of events and a handful of names)."""
    n = len(rec)
    tid = rec["tid"]
    comm = np.ascontiguousarray(rec["comm"]).view(np.uint64).reshape(n, 2)
    # grouped by thread: a sort of integers. Sorting the 16-byte names of
    # every event cost ~40 ms per 20k; grouping by runs of one thread and
    # name (below) 16 ms per 20k when three threads' events interleave
    # (tests/workloads/churn.c), against ~1.5 ms this way
    tids, first, of_tid = np.unique(tid, return_index=True, return_inverse=True)
    if (comm == comm[first][of_tid.ravel()]).all():   # one name per thread
        names, name_of = np.unique(rec["comm"][first], return_inverse=True)
        name_of = name_of.ravel()
        text = [c.decode("utf-8", "replace") for c in names]
        comms.update(tids.tolist(), [text[i] for i in name_of])
        return pa.DictionaryArray.from_arrays(
            arrow_array(name_of[of_tid.ravel()].astype(np.int32), pa.int32()),
            string_array(text))
    # a thread renamed within the batch (exec, prctl): by runs of one thread
    # and name, only each run's first looked at
    change = np.ones(n, bool)
    change[1:] = (tid[1:] != tid[:-1]) | (comm[1:] != comm[:-1]).any(axis=1)
    starts = np.flatnonzero(change)
    names, inv_runs = np.unique(rec["comm"][starts], return_inverse=True)
    text = [c.decode("utf-8", "replace") for c in names]
    pairs = np.unique(np.stack([tid[starts].astype(np.int64), inv_runs.astype(np.int64)]), axis=1)
    comms.update(pairs[0].tolist(), [text[i] for i in pairs[1]])
    inv = inv_runs[np.cumsum(change) - 1]
    return pa.DictionaryArray.from_arrays(arrow_array(inv.astype(np.int32), pa.int32()),
                                          string_array(text))


def exec_batch(rec: np.ndarray, comms: CommTable,
               paths: list[str] | None = None) -> pa.RecordBatch:
    """Path records (layout.EXEC) -> rows of kind `exec` or `open`; `paths`
    replaces the recorded file names (e.g. resolved ones)."""
    n = len(rec)
    comm = [c.decode("utf-8", "replace") for c in rec["comm"]]
    comms.update(rec["tid"].tolist(), comm)
    is_open = rec["kind"] == _C["MT_EV_OPEN"]
    moved = (rec["old_tid"] != rec["tid"]) & ~is_open
    kind = np.where(is_open, KIND_INDEX["open"], KIND_INDEX["exec"])
    return _batch(n, {
        "ts": rec["ts"], "pid": rec["pid"].view(np.int32), "tid": rec["tid"].view(np.int32),
        "comm": _strings(comm), "kind": _kind_array(kind),
        # paths are bytes: undecodable ones stay readable (and writable to Parquet)
        "path": _strings(paths if paths is not None else
                         [p.decode("utf-8", "backslashreplace") for p in rec["filename"]]),
        "child": (rec["old_tid"].view(np.int32), moved),
        "ret": (rec["ret"], is_open), "flags": (rec["flags"], is_open),
    })


def maps_batch(ts: int, pid: int, comm: str, cause: str, entries: list) -> pa.RecordBatch:
    """One reading of /proc/PID/maps (tracer._procfs.MapsEntry list) -> `map` rows."""
    from tracer import _procfs
    n = len(entries)
    return _batch(n, {
        "ts": np.full(n, ts, np.uint64), "pid": np.full(n, pid, np.int32),
        "tid": np.full(n, pid, np.int32), "comm": _strings([comm] * n),
        "kind": _kind_array(np.full(n, KIND_INDEX["map"])),
        "addr": np.array([e.start for e in entries], np.uint64),
        "len": np.array([e.end - e.start for e in entries], np.uint64),
        "prot": np.array([_procfs.prot_of(e.perms) for e in entries], np.int32),
        "flags": np.array([1 if _procfs.shared_of(e.perms) else 2 for e in entries], np.uint64),
        "off": np.array([e.offset for e in entries], np.uint64),
        "path": _strings([e.path for e in entries]),
        "inode": np.array([e.inode for e in entries], np.uint64),
        "cause": _strings([cause] * n),
    })


