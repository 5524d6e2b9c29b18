"""The final Parquet file, encoded while tracing (tracer.writer.Spill's
`stream`): the rows the spill receives are handed to a thread that cuts them
into row groups and encodes them as they come, so that at the end only the
last rows are left to encode, not the whole trace (0.25-0.45 s for 500k rows
on a 2-CPU machine: most of memtrace's teardown for a large trace).

The file is the one the conversion of the spill at the end writes, byte for
byte: the same batches in the same order (those the spill receives, as it
reads them back) regrouped at the same row counts (`regroup`), the same
writer options, and the metadata, known only at the end, set in the footer
as the writer would have set it from its schema (`_set_metadata`).

The encoder runs at the lowest CPU priority while tracing (nice 19: it takes
the CPU the traced programs leave idle) and at the normal one once the rows
have all come. It never holds the capture up: if it falls more than
MAX_BACKLOG rows behind, it stops taking rows and reads the rest back from
the spill at the end (as the conversion did).
"""
from __future__ import annotations

import base64
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from tracer.trace_schema import SCHEMA, null_array

# The final file: row groups of this many rows (the conversion holds one in
# memory), dictionary encoding for the low-cardinality columns only, delta
# encoding for the time and address columns. Not dictionary-encoded: the
# counters that hold one value on nearly every row (rss_*, alloc, count;
# stack_id, null without --stacks): the dictionary hashes every value (5-10%
# of the conversion's time), where zstd squeezes their plain runs about as
# small (0.03-0.07% more bytes on fault and syscall traces).
ROW_GROUP = 1 << 17
_PARQUET_DICT = ["pid", "tid", "comm", "kind", "prot", "flags", "fd", "ip", "major",
                 "error_code", "child", "path", "member", "cause", "pages"]
_PARQUET_ENCODING = {"ts": "DELTA_BINARY_PACKED", "addr": "DELTA_BINARY_PACKED"}
_PARQUET_STATS = ["ts", "pid", "tid", "kind"]    # for readers that skip row groups

# Rows handed to the encoder and not yet taken by it: beyond this it falls
# back to the spill (a bound on the memory the hand-over holds: 2 row groups)
MAX_BACKLOG = 2 * ROW_GROUP
_NICE_TRACING = 19


def open_writer(path: Path, schema: pa.Schema = SCHEMA) -> pq.ParquetWriter:
    return pq.ParquetWriter(str(path), schema, compression="zstd", use_dictionary=_PARQUET_DICT,
                            column_encoding=_PARQUET_ENCODING, write_statistics=_PARQUET_STATS)


def regroup(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """`batches` in tables of `rows` rows (a row group each: large ones
    compress better than one per flush), with the all-null columns dropped
    back to shared zeros as soon as each batch is read."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for b in batches:
        n = b.num_rows
        b = pa.record_batch([null_array(n, f.type) if c.null_count == n else c
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


def _set_metadata(w: pq.ParquetWriter, meta: dict[bytes, bytes]) -> None:
    """The footer's metadata as a writer opened with SCHEMA.with_metadata(meta)
    writes it: the Arrow schema (base64 of its IPC form, which readers take
    the schema's metadata from) first, then each key."""
    schema = SCHEMA.with_metadata(meta)
    w.add_key_value_metadata(
        {"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes()).decode()})
    w.add_key_value_metadata({k.decode(): v.decode() for k, v in meta.items()})


@dataclass
class _End:
    cut: int | None          # batches taken before the encoder fell behind


_ABORT = object()


class _Aborted(Exception):
    pass


class ParquetStream:
    """Row groups of `path` encoded by a thread from the batches `put` hands
    over (in the spill's order); `spill_batches(skip)` reads the spill back
    from its batch `skip` on, should the encoder fall behind."""

    def __init__(self, path: Path, spill_batches: Callable[[int], Iterable[pa.RecordBatch]],
                 release_memory: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self._spill_batches = spill_batches
        self._release = release_memory
        self._writer = open_writer(path)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._put_rows = 0          # written by the capture's thread only
        self._taken_rows = 0        # by the encoder only
        self._sent = 0              # batches handed over
        self._cut: int | None = None
        self._ended = False
        self._niced = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="memtrace-parquet", daemon=True)
        self._thread.start()

    def put(self, batches: list[pa.RecordBatch]) -> None:
        """Hands `batches` over (they are the spill's next ones), unless the
        encoder is too far behind or failed: then it reads them from the spill."""
        if self._cut is not None or self._ended:
            return
        rows = sum(b.num_rows for b in batches)
        if self._error is not None or self._put_rows - self._taken_rows + rows > MAX_BACKLOG:
            self._cut = self._sent
            return
        for b in batches:
            self._q.put(b)
        self._sent += len(batches)
        self._put_rows += rows

    def end(self) -> None:
        """No more rows: the encoder finishes at the normal priority (the
        traced programs are gone), in parallel with what the end does next."""
        if not self._ended:
            self._ended = True
            self._q.put(_End(self._cut))

    def close(self, meta: dict[bytes, bytes]) -> None:
        """Waits for the encoder, then writes the footer with `meta`;
        raises what the encoder met (OSError: e.g. the disk full)."""
        self._thread.join()
        if self._error is not None:
            self._writer.close()
            raise self._error
        _set_metadata(self._writer, meta)
        self._writer.close()

    def abort(self) -> None:
        """The run failed: the encoder stopped, the file removed."""
        if self._thread.is_alive():
            self._q.put(_ABORT)
            self._thread.join()
        try:
            self._writer.close()
        except Exception:   # whatever state it is in: the file goes
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _items(self) -> Iterator[pa.RecordBatch]:
        while True:
            x = self._q.get()
            if x is _ABORT:
                raise _Aborted
            if isinstance(x, _End):
                if self._niced:
                    _renice(0)
                if x.cut is not None:      # fell behind: the rest from the spill
                    yield from self._spill_batches(x.cut)
                return
            self._taken_rows += x.num_rows
            yield x

    def _run(self) -> None:
        # only where it can be set back at the end (CAP_SYS_NICE: root)
        self._niced = os.geteuid() == 0 and _renice(_NICE_TRACING)
        try:
            for i, table in enumerate(regroup(self._items(), ROW_GROUP)):
                self._writer.write_table(table, row_group_size=ROW_GROUP)
                del table
                if i % 8 == 7:      # not every group: fresh pages cost faults
                    self._release()
        except _Aborted:
            return
        except BaseException as e:   # raised by close()
            self._error = e


def spill_reader(path: Path) -> Callable[[int], Iterator[pa.RecordBatch]]:
    """The batches of the spill at `path` from batch `skip` on."""
    def read(skip: int) -> Iterator[pa.RecordBatch]:
        with pa.OSFile(str(path)) as src:
            for i, b in enumerate(ipc.open_stream(src)):
                if i >= skip:
                    yield b
    return read


def _renice(nice: int) -> bool:
    """The calling thread's nice value (Linux: per thread, by its id)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return True
    except OSError:     # not permitted: the priority it has
        return False
