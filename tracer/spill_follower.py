"""A thread that follows the spill (tracer.writer.Spill): it takes the
batches the spill receives as they are written, in the same order, and
does its work on them (the Parquet file: tracer.parquet_stream; the peaks:
tracer.peaks_stream) while tracing, so that little of it is left when the
traced programs have exited.

It runs at the lowest CPU priority while tracing (nice 19: it takes the CPU
the traced programs leave idle) and at the normal one once every row has
come (`end`). It never holds the capture up: more than `max_backlog` rows
behind, it stops taking batches and reads the rest back from the spill at
the end, from where it stopped.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc

_NICE_TRACING = 19


@dataclass
class _End:
    cut: int | None          # batches taken before the follower fell behind


_ABORT = object()


class Aborted(Exception):
    """Raised in the follower's work by `abort`: it stops there."""


class Follower:
    """`work(batches)` in a thread, over the batches handed over by `put`
    (the spill's, in its order); `spill_batches(skip)` reads the spill back
    from its batch `skip` on, should the thread fall behind."""

    def __init__(self, name: str, work: Callable[[Iterator[pa.RecordBatch]], None],
                 spill_batches: Callable[[int], Iterable[pa.RecordBatch]],
                 max_backlog: int) -> None:
        self._work = work
        self._spill_batches = spill_batches
        self._max_backlog = max_backlog
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._put_rows = 0          # written by the capture's thread only
        self._taken_rows = 0        # by the follower only
        self._sent = 0              # batches handed over
        self.cut: int | None = None     # batches handed over before it fell behind
        self._ended = False
        self._niced = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, batches: list[pa.RecordBatch]) -> None:
        """Hands `batches` over (the spill's next ones), unless the thread is
        too far behind or failed: then it reads them from the spill."""
        if self.cut is not None or self._ended:
            return
        rows = sum(b.num_rows for b in batches)
        if self.error is not None or self._put_rows - self._taken_rows + rows > self._max_backlog:
            self.cut = self._sent
            return
        for b in batches:
            self._q.put(b)
        self._sent += len(batches)
        self._put_rows += rows

    def end(self) -> None:
        """No more rows (the spill is closed): the thread finishes its work
        at the normal priority, in parallel with what the end does next."""
        if not self._ended:
            self._ended = True
            self._q.put(_End(self.cut))

    def join(self) -> None:
        """Waits for the work to be done; raises what it met."""
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self._thread.is_alive():
            self._q.put(_ABORT)
            self._thread.join()

    def _items(self) -> Iterator[pa.RecordBatch]:
        while True:
            x = self._q.get()
            if x is _ABORT:
                raise Aborted
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
            self._work(self._items())
        except Aborted:
            return
        except BaseException as e:   # raised by join()
            self.error = e


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
