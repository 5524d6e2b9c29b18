"""A thread that follows the spill (tracer.writer.Spill): it takes the
batches the spill receives as they are written, in the same order, and
does its work on them (the Parquet file: tracer.parquet_stream; the peaks:
tracer.peaks_stream) while tracing, so that little of it is left when the
traced programs have exited.

It runs at the lowest CPU priority while tracing (nice 19: it takes the CPU
the traced programs leave idle) and at the normal one once every row has
come (`end`). It never holds the capture up, nor more than `max_backlog`
rows of batches in memory: a batch that would pass that is handed over as
where it lies in the spill instead (`_Spilled`), which the thread reads
back when it gets there, while tracing. Reading back is what keeps it
busy when it falls behind (before, it read everything from the point it
fell behind at the end: the whole Parquet encoding of a fast trace was
left to the end). A follower can give way to another (`after`): the
peaks thread waits while the Parquet encoder is behind.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc

from tracer.trace_schema import SCHEMA, null_array

_NICE_TRACING = 19
# A follower given way to (`after`) more than this many batches behind holds
# the other up while tracing: the two do not share the CPU the traced
# programs leave, nor the GIL with the capture's thread. The peaks thread
# gives way to the Parquet encoder, the larger work (3.6 s of CPU for 10M
# fault rows against ~1.5 s): scripts/bench_consumer.py --stream, 10M
# events, 1.7-1.9 M events/s when both ran at once, 3.2-3.4 with the peaks
# at the end (the capture's thread slowed by the GIL: its batches 0.7-1.0 s
# against 0.4 s). At the end both run at once, on the two CPUs.
AFTER_BEHIND = 2
_AFTER_POLL = 0.02
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"        # the IPC stream's end marker
_DICT_FIELDS = [i for i, f in enumerate(SCHEMA) if pa.types.is_dictionary(f.type)]


@dataclass
class _Spilled:
    """A batch left in the spill: its bytes there (IPC messages: the
    dictionaries that changed with it, then the batch), its rows, the
    columns with values and its dictionaries (those in force at it)."""
    lo: int
    hi: int
    rows: int
    fields: list[int]
    dictionaries: dict[int, pa.Array]


_END = object()
_ABORT = object()


class Aborted(Exception):
    """Raised in the follower's work by `abort`: it stops there."""


class Follower:
    """`work(batches)` in a thread, over the batches handed over by `put`
    (the spill's, in its order); those not kept in memory are read back
    from the spill at `spill`, only `columns` of them (None: all)."""

    def __init__(self, name: str, work: Callable[[Iterator[pa.RecordBatch]], None],
                 spill: Path, max_backlog: int, columns: tuple[str, ...] | None = None,
                 after: Follower | None = None) -> None:
        """after: a follower this one gives way to while tracing: it waits
        while that one is more than AFTER_BEHIND batches behind."""
        self._work = work
        self._after = after
        self._sent = 0              # batches handed over, by the capture's thread
        self._done = 0              # batches taken, by the follower
        self._spill = spill
        self._max_backlog = max_backlog
        self._wanted = None if columns is None else {SCHEMA.get_field_index(c) for c in columns}
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._put_rows = 0          # written by the capture's thread only
        self._taken_rows = 0        # by the follower only
        self.spilled = 0            # batches handed over as read back from the spill
        self._ended = self._aborted = False
        self._niced = False
        self._fd: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, batches: list[pa.RecordBatch], spans: list[tuple[int, int]]) -> None:
        """Hands `batches` over (the spill's next ones; `spans`: where each
        lies in it), in memory while the thread is at most `max_backlog`
        rows behind, else as their place in the spill."""
        if self._ended or self.error is not None:
            return
        self._sent += len(batches)
        for b, (lo, hi) in zip(batches, spans):
            n = b.num_rows
            if self._put_rows - self._taken_rows + n <= self._max_backlog:
                self._q.put(b)
                self._put_rows += n
                continue
            fields = [i for i, c in enumerate(b.columns) if c.null_count < n
                      and (self._wanted is None or i in self._wanted)]
            self._q.put(_Spilled(lo, hi, n, fields,
                                 {i: b.column(i).dictionary for i in _DICT_FIELDS}))
            self.spilled += 1

    def end(self) -> None:
        """No more rows (the spill is closed): the thread finishes its work
        at the normal priority, in parallel with what the end does next."""
        if not self._ended:
            self._ended = True
            self._q.put(_END)

    def join(self) -> None:
        """Waits for the work to be done; raises what it met."""
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self._aborted = True
        if self._thread.is_alive():
            self._q.put(_ABORT)
            self._thread.join()

    def behind(self) -> int:
        """Batches handed over and not taken yet."""
        return self._sent - self._done

    def _gives_way(self) -> bool:
        a = self._after
        return (a is not None and not self._ended and not self._aborted and a.error is None
                and a.behind() > AFTER_BEHIND)

    def _items(self) -> Iterator[pa.RecordBatch]:
        while True:
            while self._gives_way():
                time.sleep(_AFTER_POLL)
            x = self._q.get()
            if x is _ABORT:
                raise Aborted
            if x is _END:
                if self._niced:
                    _renice(0)
                return
            self._done += 1
            if isinstance(x, _Spilled):
                yield self._read_back(x)
                continue
            self._taken_rows += x.num_rows
            yield x

    def _read_back(self, s: _Spilled) -> pa.RecordBatch:
        """The batch at s, from the spill: its bytes behind a stream head of
        the schema and the dictionaries in force at it (a batch of no rows:
        the messages before it may not hold them), only the columns with
        values decoded; the others as shared nulls, as the spill had them."""
        if self._fd is None:
            self._fd = os.open(self._spill, os.O_RDONLY)
        head = b"" if s.lo == 0 else _head(s.dictionaries)   # at 0: the schema's with it
        size = s.hi - s.lo
        raw = bytearray(len(head) + size + len(_EOS))        # one copy of the bytes, not three
        raw[:len(head)] = head
        if os.preadv(self._fd, [memoryview(raw)[len(head):len(head) + size]], s.lo) != size:
            raise OSError(f"{self._spill}: cut short")
        raw[len(head) + size:] = _EOS
        reader = ipc.open_stream(pa.py_buffer(raw),
                                 options=ipc.IpcReadOptions(included_fields=s.fields,
                                                            use_threads=False))
        got = list(reader)[-1]
        cols = dict(zip(s.fields, got.columns))
        return pa.record_batch([cols[i] if i in cols else null_array(s.rows, f.type)
                                for i, f in enumerate(SCHEMA)], schema=SCHEMA)

    def _run(self) -> None:
        # only where it can be set back at the end (CAP_SYS_NICE: root)
        self._niced = os.geteuid() == 0 and _renice(_NICE_TRACING)
        try:
            self._work(self._items())
        except Aborted:
            return
        except BaseException as e:   # raised by join()
            self.error = e
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _head(dictionaries: dict[int, pa.Array]) -> bytes:
    """An IPC stream's schema and dictionaries, then a batch of no rows."""
    cols = [pa.DictionaryArray.from_arrays(null_array(0, f.type.index_type), dictionaries[i],
                                           safe=False) if i in dictionaries else null_array(0, f.type)
            for i, f in enumerate(SCHEMA)]
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, SCHEMA) as w:
        w.write_batch(pa.record_batch(cols, schema=SCHEMA))
    return sink.getvalue().to_pybytes()[:-len(_EOS)]


def _renice(nice: int) -> bool:
    """The calling thread's nice value (Linux: per thread, by its id)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return True
    except OSError:     # not permitted: the priority it has
        return False
