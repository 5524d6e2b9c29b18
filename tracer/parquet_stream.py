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

The encoder is a tracer.spill_follower thread: at the lowest CPU priority
while tracing; the batches that would leave it more than MAX_BACKLOG rows
behind it reads back from the spill, when it gets to them.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.spill_follower import Follower
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

# Rows handed to a follower in memory and not yet taken by it: beyond this
# it reads the batches back from the spill (it costs ~0.03 us a row). One
# spill batch: a batch held for a follower that fell behind is memory the
# next flush cannot reuse (scripts/bench_consumer.py --stream, 10M rows:
# 2 row groups here peaked ~20 MB higher).
MAX_BACKLOG = 1 << 16


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


class ParquetStream:
    """Row groups of `path` encoded by a tracer.spill_follower thread from
    the spill's batches as they come."""

    def __init__(self, path: Path, spill: Path,
                 release_memory: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self._release = release_memory
        self._writer = open_writer(path)
        self.follower = Follower("memtrace-parquet", self._encode, spill, MAX_BACKLOG)

    def _encode(self, batches: Iterator[pa.RecordBatch]) -> None:
        for i, table in enumerate(regroup(batches, ROW_GROUP)):
            self._writer.write_table(table, row_group_size=ROW_GROUP)
            del table
            # memory handed back (the whole process's: malloc_trim) every 4
            # groups: scripts/bench_consumer.py --stream, 10M rows, peak RSS
            # 189-193 MB at 3.4 M rows/s; every 8: 191-198; every group:
            # 182, but 2.4 M/s (the freed pages faulted in again)
            if i % 4 == 3:
                self._release()

    def close(self, meta: dict[bytes, bytes]) -> None:
        """Waits for the encoder, then writes the footer with `meta`;
        raises what the encoder met (OSError: e.g. the disk full)."""
        try:
            self.follower.join()
        except BaseException:
            self._writer.close()
            raise
        _set_metadata(self._writer, meta)
        self._writer.close()

    def abort(self) -> None:
        """The run failed: the encoder stopped, the file removed."""
        self.follower.abort()
        try:
            self._writer.close()
        except Exception:   # whatever state it is in: the file goes
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass
