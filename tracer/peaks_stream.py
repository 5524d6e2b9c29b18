"""The peaks of a trace (tracer.peaks: the summary's and the metadata's
`peaks`) computed while it is written: the rows the spill receives, in its
order, replayed in steps as they come (by a tracer.spill_follower thread,
at its low priority, beside the Parquet encoder's), so that at the end only
the rows since the last step are left, instead of the whole spill read back
and replayed (0.2-0.35 s for 500k rows on a 2-CPU machine).

The figures are those of peaks.of_spill: a step takes only rows no later
row can change (peaks_mapped.frontier); should one come anyway, or rows
not come in time order, `result()` is None and the caller reads the spill
back (peaks.of_spill).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from tracer import peaks, peaks_mapped

STEP_ROWS = 1 << 15      # mapped rows (syscalls, layouts, ...) replayed at once, at least
MAX_WAITING = 1 << 19    # beyond this, a step even where a layout may still come
CARRIED_PER_ROW = 1      # rows waiting per range a step carries, at least


class PeaksStream:
    """`add` each batch of the spill in order, then `result()` once."""

    def __init__(self, page: int, residency: bool) -> None:
        self.page = page
        self.residency = residency
        self.failed: str | None = None
        self._mapped = peaks_mapped.Mapped(page)
        self._resident = peaks.Resident(page) if residency else None
        self._waiting: list[tuple] = []        # mapped rows not replayed yet
        self._waiting_rows = 0
        self._last_ts = 0

    def add(self, batch: pa.RecordBatch) -> None:
        """The mapped and the resident steps of one batch, from one reading
        of its columns (a thread of its own: tracer.writer)."""
        c = self._rows(batch)
        if c is not None:
            self._guard(lambda: self._add_mapped(c))
            if self._resident is not None:
                self._guard(lambda: self._resident.step(*peaks.resident_rows(c)))

    def _add_mapped(self, c: peaks.Rows) -> None:
        rows = peaks_mapped.mapped_rows(c)
        if len(rows[0]):
            self._waiting.append(rows)
            self._waiting_rows += len(rows[0])
        # a step replays the ranges every address space has mapped (-a: a
        # few hundred thousand): not before as many rows wait, which keeps
        # that under the rows' own cost
        if self._waiting_rows >= max(STEP_ROWS, CARRIED_PER_ROW * self._mapped.carried()):
            self._step(final=False)

    def _rows(self, batch: pa.RecordBatch) -> peaks.Rows | None:
        """The batch's columns, if it comes in time order after the last."""
        if self.failed or not batch.num_rows:
            return None
        c = peaks.Rows(pa.Table.from_batches([batch]).select(list(peaks.COLUMNS)))
        ts = c.raw("ts")
        if ts[0] < self._last_ts or c.reordered:
            self.failed = "rows out of time order"
            return None
        self._last_ts = int(ts[-1])
        return c

    def _guard(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as e:      # a bug here must not cost the trace: of_spill instead
            self.failed = f"{type(e).__name__}: {e}"

    def _step(self, final: bool) -> None:
        cols = [np.concatenate(parts) for parts in zip(*self._waiting)]
        n = len(cols[0])
        kind, pid, _, flags, ts = cols[:5]
        upto = n if final or n >= MAX_WAITING else peaks_mapped.frontier(kind, pid, flags, ts)
        if not upto:
            self._waiting = [tuple(cols)]
            return
        self._mapped.step(*(v[:upto] for v in cols))
        self._waiting = [tuple(v[upto:] for v in cols)] if upto < n else []
        self._waiting_rows = n - upto

    def result(self) -> dict | None:
        """The peaks (peaks.of_table's dict), None if they cannot be had here."""
        try:
            if self._waiting and not self.failed:
                self._step(final=True)
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
        if self.failed or self._mapped.invalid:
            return None
        return peaks.assemble(self._mapped.result(),
                              self._resident.result() if self._resident else None,
                              self.residency)
