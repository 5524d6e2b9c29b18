"""tracer.fault_summary.merge: BPF summary entries -> fault rows."""
from __future__ import annotations

import numpy as np

from tracer import layout
from tracer.fault_summary import ROW, merge


def _entries(n: int, cpus: int) -> tuple[np.ndarray, np.ndarray]:
    keys = np.zeros(n, layout.SUMMARY_KEY)
    values = np.zeros((n, cpus), layout.SUMMARY)
    return keys, values


def test_merge_sums_counts_and_keeps_the_first_fault():
    keys, v = _entries(2, 2)
    keys["pid"] = [10, 11]
    keys["error_code"] = [6, 4]
    keys["flags"] = [0, 1]
    # entry 0: 3 faults on CPU 0 from t=200, 2 on CPU 1 from t=100
    v[0, 0] = (3, 200, 290, 0x7000_1000, 0x400, 0, 3, 0, 0, 0, 0, 7, 0b0110, (0, 0, 0))
    v[0, 1] = (2, 100, 150, 0x7000_0000, 0x500, 0, 2, 0, 0, 0, 0, 8, 0b0001, (0, 0, 0))
    # entry 1: a major fault moved off CPU 0 (-1 there), counted on CPU 1
    v[1, 0] = (-1, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, (0, 0, 0))
    v[1, 1] = (2, 50, 60, 0x8000_0000, 0, 4000, 0, 2, 0, 0, 0, 9, 0b1, (0, 0, 0))
    rows = merge(keys, v)
    assert rows.dtype == ROW and len(rows) == 2
    first, second = rows[1], rows[0]          # time order: entry 1 starts at 50
    assert (first["count"], first["ts"], first["last_ts"]) == (5, 100, 290)
    assert (first["addr"], first["ip"], first["tid"]) == (0x7000_0000, 0x500, 8)
    assert first["pages"] == 0b0111 and first["rss_anon"] == 5 and first["pid"] == 10
    assert (second["count"], second["latency"], second["rss_anon"]) == (1, 4000, -1)
    assert second["flags"] == 1 and second["error_code"] == 4


def test_merge_drops_entries_that_count_nothing():
    keys, v = _entries(3, 1)
    v[:, 0]["count"] = [0, 1, -0]
    v[:, 0]["first_ts"] = [5, 6, 7]
    rows = merge(keys, v)
    assert len(rows) == 1 and rows[0]["ts"] == 6
    assert len(merge(*_entries(0, 4))) == 0
