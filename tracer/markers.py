"""Step markers: how a workload tells a trace where the steps of its story are.

A marker is `madvise(MARK_BASE + n * 4096, 0, MADV_NORMAL)`: with a zero
length madvise returns 0 before it looks at the address space
(mm/madvise.c: `if (!len) return 0` after the alignment check), so it changes
nothing but is a memory syscall every tracer sees, carrying the number n.
"""
from __future__ import annotations

import pandas as pd

MARK_BASE = 0x7E57000000
MARK_LIMIT = 1 << 24


def markers(events: pd.DataFrame) -> pd.DataFrame:
    """The marker rows of `events`: ts, pid, tid, step."""
    m = events[(events["kind"] == "madvise") & (events["len"] == 0)
               & (events["addr"] >= MARK_BASE) & (events["addr"] < MARK_BASE + MARK_LIMIT)]
    m = m[((m["addr"] - MARK_BASE) % 4096) == 0]
    out = m[["ts", "pid", "tid"]].copy()
    out["step"] = ((m["addr"] - MARK_BASE) // 4096).astype("int64")
    return out.reset_index(drop=True)


def is_marker(events: pd.DataFrame) -> pd.Series:
    """True for the rows that are markers (to leave them out of a story)."""
    return ((events["kind"] == "madvise") & (events["len"] == 0)
            & (events["addr"] >= MARK_BASE) & (events["addr"] < MARK_BASE + MARK_LIMIT)).fillna(False)
