"""Trace files: the streaming spill, and the final Parquet or CSV (format:
docs/format.md) of the rows tracer/trace_rows.py builds.

While tracing, each batch goes to `PATH.partial`, an Arrow IPC stream: an
append is a memcpy, and a stream cut short by a crash still reads up to its
last whole batch. `finish()` converts it batch by batch (bounded memory) to
Parquet or CSV with the metadata, then removes the spill; or, with
`stream=True` (a Parquet PATH), the Parquet file is encoded from the same
batches while tracing (tracer.parquet_stream) and `finish()` only waits for
its last rows and writes its footer.
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

from tracer import parquet_stream
from tracer.errors import OutputError
from tracer.parquet_stream import ROW_GROUP
from tracer.parquet_stream import regroup as _regroup
from tracer.peaks import COLUMNS as PEAKS_COLUMNS
from tracer.peaks_stream import PeaksStream
from tracer.spill_follower import Follower
from tracer.trace_schema import (NUMPY_TYPES, SCHEMA, arrow_array, bits, null_array,
                                 numpy_view, plain_schema)

META_KEY = b"memtrace"
PARTIAL_SUFFIX = ".partial"
SPILL_BATCH = 1 << 16        # rows per IPC batch of the spill (bounds reading it back)


class Spill:
    """The streaming spill file: one IPC stream of record batches."""

    def __init__(self, final: Path, stream: bool = False,
                 peaks: PeaksStream | None = None) -> None:
        """stream: the final file is Parquet, encoded while tracing; peaks:
        computed from the rows as they come too (a thread of its own)."""
        _use_system_allocator()
        self.final = final
        self.path = final.with_name(final.name + PARTIAL_SUFFIX)
        self._tmp = final.with_name(final.name + ".tmp")
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
        self._closed = self._ended = False
        self._stream: parquet_stream.ParquetStream | None = None
        self._peaks = peaks if stream else None
        self._followers: list[Follower] = []      # the threads given each batch written
        if stream:
            try:
                self._stream = parquet_stream.ParquetStream(self._tmp, self.path, _release_memory)
            except OSError as e:
                self.close()
                raise OutputError(f"cannot write {self._tmp}: {e.strerror or e}") from None
            self._followers.append(self._stream.follower)
        self._peaks_followers: list[Follower] = []
        if self._peaks is not None:
            # one thread for the mapped and the resident peaks, beside the
            # Parquet encoder's: two CPUs. A thread each held ~8 MB more at
            # the peak of scripts/bench_consumer.py --stream (each decodes
            # what it reads back, in an allocator arena of its own), and the
            # resident part is no longer the larger (peaks.fault_runs)
            add = self._peaks.add
            self._peaks_followers.append(Follower(
                "memtrace-peaks", lambda bs: [add(b) for b in bs],
                self.path, parquet_stream.MAX_BACKLOG, PEAKS_COLUMNS,
                after=self._stream.follower if self._stream is not None else None))
            self._followers.extend(self._peaks_followers)

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
        ts = [numpy_view(b.column(0)) for b in batches]
        if _in_order(ts):                        # in order already: no copy
            table = pa.Table.from_batches(batches, SCHEMA)
            ts = np.concatenate(ts) if before is not None else ts
        else:
            ts = np.concatenate(ts)
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
            table = _take(pa.Table.from_batches(batches, SCHEMA).unify_dictionaries(), order)
        if before is not None:
            cut = int(np.searchsorted(ts, np.uint64(before), "left"))
            if cut < table.num_rows:   # copied: a slice would keep the whole flush alive
                rest = table.slice(cut).unify_dictionaries()
                self._held = _take(rest, np.arange(rest.num_rows)).to_batches()
                table = table.slice(0, cut)
        out = table.to_batches(max_chunksize=SPILL_BATCH)
        spans = []                  # where each batch lies in the spill
        try:
            for b in out:
                lo = self._sink.tell()
                self._writer.write_batch(b)
                spans.append((lo, self._sink.tell()))
            self._sink.flush()
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None
        for f in self._followers:     # the same batches, in the same order
            f.put(out, spans)
        self.rows += table.num_rows
        del out, table, batches
        _release_memory()

    def end(self) -> None:
        """No more rows (the capture's last write done): the spill's stream
        closed; the followers (Parquet, peaks) finish their last rows
        meanwhile, at the normal priority."""
        if self._held:           # the capture ended without a last write
            self.write([])
        self.close()
        self._ended = True
        for f in self._followers:
            f.end()

    def peaks(self) -> dict | None:
        """The peaks computed as the rows came (tracer.peaks_stream), once
        every row is written (`end`); None without them (then
        peaks.of_spill reads the spill)."""
        if self._peaks is None or not self._ended:
            return None
        try:
            for f in self._peaks_followers:
                f.join()
        except Exception:     # of_spill then
            return None
        return self._peaks.result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()
            self._sink.close()

    def abandon(self) -> None:
        """The run failed after tracing started: the Parquet being encoded
        removed; the spill stays as it is (tracer.load reads it, cut short)."""
        if self._stream is not None:
            self._stream.abort()
            self._stream = None
        for f in self._peaks_followers:
            f.abort()

    def finish(self, fmt: str, meta: dict) -> int:
        """Writes the final file in `fmt` ('parquet' or 'csv'); returns its size."""
        self.end()
        _release_memory()
        meta_path = Path(str(self.final) + ".meta.json") if fmt == "csv" else None
        blob = json.dumps(meta, default=_json_default)
        stream, self._stream = self._stream, None
        try:
            if stream is not None and fmt == "parquet":
                stream.close({META_KEY: blob.encode()})    # encoded while tracing
            else:
                if stream is not None:
                    stream.abort()
                self._convert(fmt, blob, meta_path)
            os.replace(self._tmp, self.final)
        except BaseException as e:
            # e.g. the disk full: leave no half-written file; the spill stays
            # (tracer.load reads it as cut short)
            for p in (self._tmp, meta_path):
                _unlink(p)
            if isinstance(e, OSError):
                raise OutputError(f"cannot write {self.final}: {e.strerror or e}") from None
            raise
        try:
            os.unlink(self.path)
        except OSError as e:
            raise OutputError(f"cannot remove {self.path}: {e.strerror or e}") from None
        return self.final.stat().st_size

    def _convert(self, fmt: str, blob: str, meta_path: Path | None) -> None:
        """The spill converted to the final file at `self._tmp`."""
        import pyarrow.csv as pacsv      # only at the end: 40 ms of start-up otherwise
        with pa.OSFile(str(self.path)) as src:
            reader = ipc.open_stream(src)
            if fmt == "parquet":
                schema = SCHEMA.with_metadata({META_KEY: blob.encode()})
                with parquet_stream.open_writer(self._tmp, schema) as w:
                    # reading the spill (a thread) overlaps encoding Parquet
                    for i, table in enumerate(_ahead(_regroup(reader, ROW_GROUP))):
                        w.write_table(table.replace_schema_metadata(schema.metadata),
                                      row_group_size=ROW_GROUP)
                        del table
                        if i % 8 == 7:      # not every group: fresh pages cost faults
                            _release_memory()
            else:
                assert meta_path is not None
                with pacsv.CSVWriter(str(self._tmp), plain_schema(SCHEMA)) as w:
                    for table in _ahead(_regroup(reader, SPILL_BATCH)):
                        w.write_table(table.cast(plain_schema(SCHEMA)))
                meta_path.write_text(blob + "\n")


def _unlink(path: Path | None) -> None:
    try:
        if path is not None:
            path.unlink()
    except OSError:    # not there, or cannot: nothing more to do
        pass


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """`rows` of `table`, by numpy (Arrow's take imports pyarrow.compute:
    30-50 ms, at the end of a small trace); an all-null column stays a
    shared run of zeros, a dictionary column keeps its dictionary."""
    n = len(rows)
    return pa.table([null_array(n, f.type) if col.null_count == col.length() else
                     _take_array(col.combine_chunks(), rows)
                     for f, col in zip(SCHEMA, table.columns)], schema=SCHEMA)


def _take_array(a: pa.Array, rows: np.ndarray) -> pa.Array:
    if pa.types.is_dictionary(a.type):
        return pa.DictionaryArray.from_arrays(_take_array(a.indices, rows), a.dictionary,
                                              safe=False)
    validity, data = a.buffers()[:2]
    valid = _bits(validity, a.offset, len(a))[rows] if a.null_count else None
    if a.type == pa.bool_():
        values = _bits(data, a.offset, len(a))[rows]
    else:
        dt = np.dtype(NUMPY_TYPES[a.type])
        values = (np.frombuffer(data, dt, count=len(a), offset=a.offset * dt.itemsize)
                  if data is not None else np.zeros(len(a), dt))[rows]
    return arrow_array(values, a.type, valid)


def _bits(buf: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    if buf is None:
        return np.zeros(n, bool)
    return bits(buf, offset, n)


def _in_order(ts: list[np.ndarray]) -> bool:
    for i, t in enumerate(ts):
        if (t[1:] < t[:-1]).any() or (i and len(ts[i - 1]) and t[0] < ts[i - 1][-1]):
            return False
    return True


try:
    _libc = __import__("ctypes").CDLL(None)
    _malloc_trim, _mallopt = _libc.malloc_trim, _libc.mallopt
except (OSError, AttributeError):
    _malloc_trim = _mallopt = None
_M_ARENA_MAX = -8        # glibc's mallopt parameter


def _use_system_allocator() -> None:
    """Arrow's own allocator (mimalloc) keeps the memory of freed batches in
    its segments, where numpy's (malloc's) allocations cannot reuse it:
    10 million events through the consumer peaked 20-40 MB higher with it
    (scripts/bench_consumer.py). One allocator for both, unless
    ARROW_DEFAULT_MEMORY_POOL says otherwise.

    And one malloc arena for the threads started from here on (the spill's
    followers), unless MALLOC_ARENA_MAX says otherwise: an arena each keeps
    each thread's freed memory apart, where the others cannot reuse it
    (scripts/bench_consumer.py --stream, 10M events: peak RSS 194-198 MB,
    186-190 with one arena; the threads allocate large blocks, seldom)."""
    if _mallopt is not None and not os.environ.get("MALLOC_ARENA_MAX"):
        _mallopt(_M_ARENA_MAX, 1)
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


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
