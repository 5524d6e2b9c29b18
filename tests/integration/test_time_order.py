"""The trace's rows are in time order (docs/format.md), across flushes too:
faults and memory syscalls of two threads and a child, from two rings read
one after the other, flushed about once a second."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from memtrace_helpers import run_memtrace

live = pytest.mark.live


@live
def test_rows_in_time_order_across_flushes(workloads, tmp_path):
    # churn 200000: ~460k syscalls and faults from the main thread, a second
    # thread and a child at once; several seconds traced here, so several
    # flushes (before the watermark, 2 runs of 2 showed a row ~4 ms older
    # than the one before it)
    out = tmp_path / "order.parquet"
    run_memtrace(["--", workloads["churn"], "200000"], tmp_path, name=out.name)
    t = pq.read_table(out, columns=["ts", "pid", "tid", "kind"])   # file order
    ts = t.column("ts").to_numpy().astype(np.int64)
    kind = np.array(t.column("kind").to_pylist())
    is_fault = kind == "fault"
    # what makes the order hard: both rings interleaved, several threads
    switches = int(np.count_nonzero(is_fault[1:] != is_fault[:-1]))
    assert switches > 1000, switches
    syscalls = np.isin(kind, ["brk", "mmap", "munmap", "mremap", "mprotect", "madvise"])
    assert len(set(t.column("tid").to_numpy()[syscalls].tolist())) >= 3
    back = np.flatnonzero(np.diff(ts) < 0)
    assert not len(back), (f"{len(back)} rows older than the row before them; first at row "
                           f"{back[0] + 1}: {kind[back[0]]} ts {ts[back[0]]} then "
                           f"{kind[back[0] + 1]} ts {ts[back[0] + 1]}")
