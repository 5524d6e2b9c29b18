"""Trace files: the event table's schema, batch builders from ring records,
the streaming spill, and the final Parquet or CSV (format: docs/format.md).

While tracing, each batch goes to `PATH.partial`, an Arrow IPC stream: an
append is a memcpy, and a stream cut short by a crash still reads up to its
last whole batch. `finish()` converts it batch by batch (bounded memory) to
Parquet or CSV with the metadata, then removes the spill.
"""
from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from tracer import layout
from tracer.errors import OutputError

# numpy -> Arrow by buffers: pa.array() (and Array.to_numpy()) make pyarrow
# import pandas, 0.3 s and 46 MB the recorder does not otherwise need.
_NP = {pa.uint64(): np.uint64, pa.int64(): np.int64, pa.uint32(): np.uint32,
       pa.int32(): np.int32, pa.uint16(): np.uint16, pa.int16(): np.int16,
       pa.uint8(): np.uint8, pa.int8(): np.int8}


def _array(values: Any, typ: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """A numpy array (and validity mask) as an Arrow array of `typ`, zero-copy
    when contiguous; anything else, or another dtype, through pa.array."""
    if isinstance(values, np.ndarray) and typ in _NP and values.dtype != _NP[typ] \
            and values.dtype.kind in "iu":       # e.g. int16 ring fields, int32 columns
        values = values.astype(_NP[typ])
    if not isinstance(values, np.ndarray) or (typ != pa.bool_() and values.dtype != _NP.get(typ)):
        return pa.array(values, typ, mask=None if valid is None or valid.all() else ~valid)
    n = len(values)
    if typ == pa.bool_():
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values))
    if valid is None or valid.all():
        return pa.Array.from_buffers(typ, n, [None, data], null_count=0)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(typ, n, [bitmap, data], null_count=n - int(np.count_nonzero(valid)))


def _str_array(values: list[str]) -> pa.Array:
    """Strings (no nulls) as an Arrow string array."""
    try:
        enc = [v.encode() for v in values]
    except UnicodeEncodeError:
        return pa.array(values, pa.string())      # its error, as before
    offsets = np.zeros(len(enc) + 1, np.int32)
    np.cumsum([len(b) for b in enc], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(enc),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(enc))])


def _numpy(col: pa.Array) -> np.ndarray:
    """A fixed-width column without nulls as a numpy view."""
    dt = np.dtype(_NP[col.type])
    return np.frombuffer(col.buffers()[1], dt, count=len(col), offset=col.offset * dt.itemsize)


KINDS = ["brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "fault",
         "fork", "thread", "exec", "exit", "rename", "rss", "map", "open"]
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
_KIND_DICT = _str_array(KINDS)
_STR_DICT = pa.dictionary(pa.int32(), pa.string())

SCHEMA = pa.schema([
    ("ts", pa.uint64()), ("pid", pa.int32()), ("tid", pa.int32()),
    ("comm", _STR_DICT), ("kind", pa.dictionary(pa.int8(), pa.string())),
    ("addr", pa.uint64()), ("len", pa.uint64()), ("prot", pa.int32()),
    ("flags", pa.uint64()), ("fd", pa.int32()), ("off", pa.uint64()),
    ("new_len", pa.uint64()), ("new_addr", pa.uint64()),
    ("ret", pa.int64()), ("duration", pa.uint64()),
    ("ip", pa.uint64()), ("major", pa.bool_()), ("error_code", pa.uint16()),
    ("latency", pa.uint32()),
    ("rss_anon", pa.int32()), ("rss_file", pa.int32()),
    ("rss_shmem", pa.int32()), ("rss_swap", pa.int32()),
    ("child", pa.int32()), ("path", _STR_DICT),
    ("member", pa.int8()), ("rss_size", pa.int64()), ("rss_delta", pa.int64()),
    ("cause", _STR_DICT), ("inode", pa.uint64()),
    ("alloc", pa.uint32()), ("stack_id", pa.int32()),
    ("count", pa.uint32()), ("last_ts", pa.uint64()), ("pages", pa.uint16()),
])
META_KEY = b"memtrace"
PARTIAL_SUFFIX = ".partial"

_C = layout.C
_SYSCALL_CODES = {_C["MT_EV_" + k.upper()]: k for k in layout.SYSCALL_KINDS}
# rss rows' causes beyond the syscalls: the counters of a process's new mm
# (fork, exec, vfork: flags MT_RSS_NEW_MM), a change made by another task
_NEW_MM, _OTHER_TASK = 1 << 20, (1 << 20) + 1
_CAUSE_CODES = {**_SYSCALL_CODES, _NEW_MM: "new_mm", _OTHER_TASK: "other_task"}


# The final file: row groups of this many rows (the conversion holds one in
# memory), dictionary encoding for the low-cardinality columns only, delta
# encoding for the time and address columns.
ROW_GROUP = 1 << 17
SPILL_BATCH = 1 << 16        # rows per IPC batch of the spill (bounds reading it back)
_PARQUET_DICT = ["pid", "tid", "comm", "kind", "prot", "flags", "fd", "ip", "major",
                 "error_code", "rss_anon", "rss_file", "rss_shmem", "rss_swap",
                 "child", "path", "member", "cause", "alloc", "stack_id", "count", "pages"]
_PARQUET_ENCODING = {"ts": "DELTA_BINARY_PACKED", "addr": "DELTA_BINARY_PACKED"}
_PARQUET_STATS = ["ts", "pid", "tid", "kind"]    # for readers that skip row groups

_zero = [pa.py_buffer(bytes(1 << 16))]
_EMPTY_STR = _str_array([])


def _zeros(n: int, typ: pa.DataType) -> pa.Array:
    """An array of n zeros (false, for bool) that allocates nothing."""
    _grow(n * max(typ.bit_width // 8, 1) + 8)
    return pa.Array.from_buffers(typ, n, [None, _zero[0]], null_count=0)


def _grow(need: int) -> None:
    if _zero[0].size < need:
        _zero[0] = pa.py_buffer(bytes(max(need, 2 * _zero[0].size)))


def _nulls(n: int, typ: pa.DataType) -> pa.Array:
    """An all-null array that allocates nothing: every one shares a buffer
    of zeros (validity and values alike)."""
    if pa.types.is_dictionary(typ):
        return pa.DictionaryArray.from_arrays(_nulls(n, typ.index_type), _EMPTY_STR, safe=False)
    _grow(n * max(typ.bit_width // 8, 1) + 8)
    z = _zero[0]
    return pa.Array.from_buffers(typ, n, [z, z], null_count=n)


def _kind_array(codes: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(_array(codes.astype(np.int8), pa.int8()), _KIND_DICT)


def _strings(values: list[str | None]) -> pa.DictionaryArray:
    index: dict[str, int] = {}
    idx = np.zeros(len(values), np.int32)
    valid = np.ones(len(values), bool)
    for i, v in enumerate(values):
        if v is None:
            valid[i] = False
        else:
            idx[i] = index.setdefault(v, len(index))
    return pa.DictionaryArray.from_arrays(_array(idx, pa.int32(), valid), _str_array(list(index)),
                                          safe=False)


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
        if n and tids[0] == tids[-1] and not (tids != tids[0]).any():   # one thread
            name = self.by_tid.get(int(tids[0]))
            if name is None:
                return pa.DictionaryArray.from_arrays(_nulls(n, pa.int32()), _EMPTY_STR, safe=False)
            return pa.DictionaryArray.from_arrays(_zeros(n, pa.int32()), _str_array([name]),
                                                  safe=False)
        if self._known is None or len(self._known[0]) != len(self.by_tid):
            order = sorted(self.by_tid)
            self._known = (np.array(order, np.int64), [self.by_tid[t] for t in order])
        known, names = self._known
        if not len(known):
            return pa.DictionaryArray.from_arrays(_nulls(n, pa.int32()), _EMPTY_STR, safe=False)
        pos = np.minimum(np.searchsorted(known, tids), len(known) - 1)
        hit = known[pos] == tids
        used = np.flatnonzero(np.bincount(pos[hit], minlength=len(known)))
        remap = np.zeros(len(known), np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        indices = _array(remap[pos], pa.int32(), hit)
        return pa.DictionaryArray.from_arrays(
            indices, _str_array([names[i] for i in used]), safe=False)


def _batch(n: int, cols: dict[str, Any]) -> pa.RecordBatch:
    arrays = []
    for field in SCHEMA:
        v = cols.get(field.name)
        if v is None:
            arrays.append(_nulls(n, field.type))
        elif isinstance(v, pa.Array):
            arrays.append(v)
        elif isinstance(v, np.ndarray) and v.dtype != np.bool_ and not v.any():
            arrays.append(_zeros(n, field.type))    # e.g. rss_swap of most faults
        elif isinstance(v, tuple):  # (values, valid mask)
            values, valid = v
            arrays.append(_array(values, field.type, valid))
        else:
            arrays.append(_array(v, field.type))
    return pa.record_batch(arrays, schema=SCHEMA)


def fault_batch(rec: np.ndarray, comms: CommTable, residency: bool = True) -> pa.RecordBatch:
    """Fault records (layout.FAULT) -> rows of kind `fault`; without
    `residency` (--no-rss) the resident columns are null."""
    n = len(rec)
    flags = rec["flags"]
    entry = (flags & _C["MT_FAULT_NO_ENTRY"]) == 0
    res = entry if residency else np.zeros(n, bool)
    rss_cols = {c: rec[c] for c in ("rss_anon", "rss_file", "rss_shmem", "rss_swap")
                if residency}                # absent: null
    return _batch(n, {
        "ts": rec["ts"], "pid": rec["pid"].view(np.int32), "tid": rec["tid"].view(np.int32),
        "comm": comms.array(rec["tid"]),
        "kind": _kind_array(np.full(n, KIND_INDEX["fault"])),
        "addr": rec["addr"], "ip": rec["ip"],
        "major": (flags & _C["MT_FAULT_MAJOR"]) != 0,
        "error_code": (rec["error_code"], entry),
        "latency": rec["latency"],
        **rss_cols,
        "alloc": (rec["alloc"], res),
        "stack_id": (rec["stack_id"], rec["stack_id"] >= 0),
        "count": np.ones(n, np.uint32),
    })


def summary_batch(rows: np.ndarray, comms: CommTable, residency: bool = True) -> pa.RecordBatch:
    """Merged fault_summary entries (tracer.fault_summary.ROW) -> `fault`
    rows that each stand for `count` faults (docs/format.md): `latency`
    (mean) only on major rows, `ip` the first fault's (null on major rows),
    `alloc` null (not followed in this mode)."""
    n = len(rows)
    flags = rows["flags"]
    entry = (flags & _C["MT_FAULT_NO_ENTRY"]) == 0
    rss_cols = {c: rows[c] for c in ("rss_anon", "rss_file", "rss_shmem", "rss_swap")
                if residency}
    return _batch(n, {
        "ts": rows["ts"], "pid": rows["pid"].view(np.int32), "tid": rows["tid"].view(np.int32),
        "comm": comms.array(rows["tid"]),
        "kind": _kind_array(np.full(n, KIND_INDEX["fault"])),
        "addr": rows["addr"], "ip": (rows["ip"], rows["ip"] != 0),
        "major": (flags & _C["MT_FAULT_MAJOR"]) != 0,
        "error_code": (rows["error_code"], entry),
        **rss_cols,
        "latency": (rows["latency"], (flags & _C["MT_FAULT_MAJOR"]) != 0),
        "count": rows["count"], "last_ts": rows["last_ts"], "pages": rows["pages"],
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
    cause = None
    if rss.any():   # a lookup per distinct code
        codes, inv = np.unique(cause_code, return_inverse=True)
        names = [_CAUSE_CODES.get(int(c)) for c in codes]
        cause = pa.DictionaryArray.from_arrays(
            _array(inv.astype(np.int32), pa.int32(), ~np.array([x is None for x in names])[inv]),
            _str_array([x or "" for x in names]))
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
    names, inv = np.unique(rec["comm"], return_inverse=True)
    text = [c.decode("utf-8", "replace") for c in names]
    pairs = np.unique(np.stack([rec["tid"].astype(np.int64), inv.astype(np.int64)]), axis=1)
    comms.update(pairs[0].tolist(), [text[i] for i in pairs[1]])
    return pa.DictionaryArray.from_arrays(_array(inv.astype(np.int32), pa.int32()),
                                          _str_array(text))


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



class Spill:
    """The streaming spill file: one IPC stream of record batches."""

    def __init__(self, final: Path) -> None:
        _use_system_allocator()
        self.final = final
        self.path = final.with_name(final.name + PARTIAL_SUFFIX)
        try:
            self._sink = pa.OSFile(str(self.path), "wb")
            # lz4: the columns that do not apply to a row kind are all zeros,
            # which it squeezes at memory speed
            self._writer = ipc.new_stream(self._sink, SCHEMA,
                                          options=ipc.IpcWriteOptions(compression="lz4", use_threads=False))
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.rows = 0
        self._held: list[pa.RecordBatch] = []    # rows not older than the last `before`

    def write(self, batches: list[pa.RecordBatch], before: int | None = None) -> None:
        """Appends `batches` in time order (a merge of the rings' batches,
        which are each nearly in order), in IPC batches of SPILL_BATCH rows.
        With `before` (a ts), only the rows older than it are written; the
        others are held back and written, merged with the next call's, by a
        later write: a record of one ring read later can be older than the
        newest row of another ring read now, but never older than the
        rings' watermark (RingReader.drained_to). Only the columns holding
        values are reordered: an all-null column stays a shared run of zeros."""
        batches = [b for b in self._held + batches if b.num_rows]
        self._held = []
        if not batches:
            return
        batches.sort(key=lambda b: b.column(0)[0].as_py())   # stable: by first ts
        ts = [_numpy(b.column(0)) for b in batches]
        if _in_order(ts):                        # in order already: no copy
            table = pa.Table.from_batches(batches, SCHEMA)
            ts = np.concatenate(ts) if before is not None else ts
        else:
            ts = np.concatenate(ts)
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
            table = _take(pa.Table.from_batches(batches, SCHEMA).unify_dictionaries(),
                          _array(order, pa.int64()))
        if before is not None:
            cut = int(np.searchsorted(ts, np.uint64(before), "left"))
            if cut < table.num_rows:   # copied: a slice would keep the whole flush alive
                rest = table.slice(cut).unify_dictionaries()
                self._held = _take(rest, _array(np.arange(rest.num_rows), pa.int64())).to_batches()
                table = table.slice(0, cut)
        try:
            for b in table.to_batches(max_chunksize=SPILL_BATCH):
                self._writer.write_batch(b)
            self._sink.flush()
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.rows += table.num_rows
        del table, batches
        _release_memory()

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def finish(self, fmt: str, meta: dict) -> int:
        """Writes the final file in `fmt` ('parquet' or 'csv'); returns its size."""
        import pyarrow.csv as pacsv      # only at the end: 40 ms of start-up otherwise
        import pyarrow.parquet as pq
        if self._held:           # the capture ended without a last write
            self.write([])
        self.close()
        _release_memory()
        tmp = self.final.with_name(self.final.name + ".tmp")
        meta_path = Path(str(self.final) + ".meta.json") if fmt == "csv" else None
        blob = json.dumps(meta, default=_json_default)
        try:
            with pa.OSFile(str(self.path)) as src:
                reader = ipc.open_stream(src)
                if fmt == "parquet":
                    schema = SCHEMA.with_metadata({META_KEY: blob.encode()})
                    with pq.ParquetWriter(str(tmp), schema, compression="zstd",
                                          use_dictionary=_PARQUET_DICT,
                                          column_encoding=_PARQUET_ENCODING,
                                          write_statistics=_PARQUET_STATS) as w:
                        # reading the spill (a thread) overlaps encoding Parquet
                        for i, table in enumerate(_ahead(_regroup(reader, ROW_GROUP))):
                            w.write_table(table.replace_schema_metadata(schema.metadata),
                                          row_group_size=ROW_GROUP)
                            del table
                            if i % 8 == 7:      # not every group: fresh pages cost faults
                                _release_memory()
                else:
                    with pacsv.CSVWriter(str(tmp), _plain(SCHEMA)) as w:
                        for table in _ahead(_regroup(reader, SPILL_BATCH)):
                            w.write_table(table.cast(_plain(SCHEMA)))
                    meta_path.write_text(blob + "\n")
            os.replace(tmp, self.final)
        except BaseException as e:
            # e.g. the disk full: leave no half-written file; the spill stays
            # (tracer.load reads it as cut short)
            for p in (tmp, meta_path):
                _unlink(p)
            if isinstance(e, OSError):
                raise OutputError(f"cannot write {self.final}: {e.strerror or e}") from None
            raise
        try:
            os.unlink(self.path)
        except OSError as e:
            raise OutputError(f"cannot remove {self.path}: {e.strerror or e}") from None
        return self.final.stat().st_size


def _unlink(path: Path | None) -> None:
    try:
        if path is not None:
            path.unlink()
    except OSError:    # not there, or cannot: nothing more to do
        pass


def _regroup(reader: ipc.RecordBatchStreamReader, rows: int) -> Iterable[pa.Table]:
    """The spill's batches in tables of `rows` rows (a row group each: large
    ones compress better than one per flush), with the all-null columns
    dropped back to shared zeros as soon as each batch is read."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for b in reader:
        n = b.num_rows
        b = pa.record_batch([_nulls(n, f.type) if c.null_count == n else c
                             for f, c in zip(SCHEMA, b.columns)], schema=SCHEMA)
        while n:
            take = min(n, rows - count)
            part = b.slice(b.num_rows - n, take) if take < b.num_rows else b
            pending.append(part)
            count += take
            n -= take
            if count >= rows:
                yield pa.Table.from_batches(pending, SCHEMA).unify_dictionaries()
                pending, count = [], 0
    if pending or not count:
        yield pa.Table.from_batches(pending, SCHEMA).unify_dictionaries()


def _take(table: pa.Table, rows: pa.Array) -> pa.Table:
    """`rows` of `table`; an all-null column stays a shared run of zeros."""
    n = len(rows)
    return pa.table([_nulls(n, f.type) if col.null_count == col.length() else
                     col.combine_chunks().take(rows) for f, col in zip(SCHEMA, table.columns)],
                    schema=SCHEMA)


def _in_order(ts: list[np.ndarray]) -> bool:
    for i, t in enumerate(ts):
        if (t[1:] < t[:-1]).any() or (i and len(ts[i - 1]) and t[0] < ts[i - 1][-1]):
            return False
    return True


try:
    _malloc_trim = __import__("ctypes").CDLL(None).malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


def _use_system_allocator() -> None:
    """Arrow's own allocator (mimalloc) keeps the memory of freed batches in
    its segments, where numpy's (malloc's) allocations cannot reuse it:
    10 million events through the consumer peaked 20-40 MB higher with it
    (scripts/bench_consumer.py). One allocator for both, unless
    ARROW_DEFAULT_MEMORY_POOL says otherwise."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.system_memory_pool())
    except (pa.ArrowException, AttributeError):
        pass


def _release_memory() -> None:
    """Hands the memory of a flush back to the system (Arrow's allocator and
    malloc both keep freed memory): the resident size between flushes stays
    what the process uses, not its high-water mark."""
    pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _ahead(items: Iterable, depth: int = 1) -> Iterable:
    """`items`, produced by a thread up to `depth` ahead of the consumer
    (Arrow releases the GIL while it reads and while it writes)."""
    q: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def put(item: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put((x, None)):
                    return
        except BaseException as e:  # handed to the consumer
            put((done, e))
            return
        put((done, None))

    t = threading.Thread(target=produce, name="memtrace-spill-reader", daemon=True)
    t.start()
    try:
        while True:
            x, err = q.get()
            if x is done:
                if err is not None:
                    raise err
                return
            yield x
    finally:
        stop.set()
        t.join()


def _plain(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type)
                      for f in schema])


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
