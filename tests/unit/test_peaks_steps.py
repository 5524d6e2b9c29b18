"""The peaks computed while tracing (tracer.peaks_stream: the rows in steps
as the spill receives them) are the peaks of the whole trace at once
(peaks.of_table), wherever the batches are cut; a row that would change
what a step replayed sends the caller back to the spill (result None)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tracer import peaks, peaks_stream

from eventframes import ANON, FIXED, PAGE, PRIVATE, Events

P, Q = 100, 200
A = 0x7f0000000000
HEAP = 0x555555560000
MEM_FILE, MEM_ANON, MEM_SHMEM = 0, 1, 3


def _layout(e: Events, pid: int, rng, ts: int | None = None) -> None:
    n = int(rng.integers(1, 6))
    e.snapshot([(0x400000, 0x400000 + n * PAGE, "r-xp", 0, "/bin/prog"),
                (HEAP, HEAP + 2 * PAGE, "rw-p", 0, "[heap]"),
                (0x7ffd0000, 0x7ffd4000, "rw-p", 0, "[stack]")], pid=pid, ts=ts)


def _history(seed: int, n: int = 250, late: bool = False) -> Events:
    """Processes mapping, unmapping, remapping, moving their break, faulting
    pages in, their counters set and changed (rss rows), forking, exec'ing
    (the layout at once, or with `late` after other rows: --no-exec-stop,
    two execs before their two layouts) and exiting, at random."""
    rng = np.random.default_rng(seed)
    e = Events(pid=P)
    e.add("rss", member=MEM_ANON, rss_size=4 * PAGE)      # -p: one counter known
    alive, next_pid, owed = [P], 300, []
    for _ in range(n):
        pid = alive[rng.integers(len(alive))]
        lo = A + int(rng.integers(0, 64)) * PAGE
        npages = int(rng.integers(1, 12))
        op = int(rng.integers(0, 14))
        if op <= 2:
            e.mmap(lo, npages * PAGE, pid=pid, flags=PRIVATE | ANON | FIXED, addr=lo)
        elif op == 3:
            e.munmap(lo, npages * PAGE, pid=pid)
        elif op == 4:
            e.mremap(lo, npages * PAGE, (npages + 3) * PAGE, lo + 80 * PAGE, pid=pid)
        elif op == 5:
            top = HEAP + int(rng.integers(0, 8)) * PAGE
            e.brk(top, top, pid=pid)
        elif op <= 7:
            e.fault(lo, write=True, rss_anon=1, pid=pid)
        elif op == 8:
            e.add("rss", pid=pid, member=int(rng.choice([MEM_FILE, MEM_ANON, MEM_SHMEM])),
                  rss_size=int(rng.integers(0, 50)) * PAGE,
                  rss_delta=None if rng.integers(2) else int(rng.integers(-3, 4)) * PAGE)
        elif op == 9 and len(alive) < 4:
            e.fork(next_pid, pid=pid)
            alive.append(next_pid)
            next_pid += 1
        elif op == 10:
            e.exec(pid=pid)
            if late:
                owed.append(pid)
            else:
                _layout(e, pid, rng)
        elif op == 11 and owed and rng.integers(2):
            _layout(e, owed.pop(0), rng)         # a layout read late
        elif op == 12 and pid != P and pid not in owed:
            e.exit(pid=pid)
            alive.remove(pid)
        else:
            e.mprotect(lo, npages * PAGE, 1, pid=pid)
    for pid in owed:
        _layout(e, pid, rng)
    return e


def _table(e: Events) -> pa.Table:
    return pa.Table.from_pandas(e.frame(), preserve_index=False)


def _stepped(table: pa.Table, cuts, residency: bool = True) -> dict | None:
    s = peaks_stream.PeaksStream(PAGE, residency)
    bounds = [0, *sorted(cuts), table.num_rows]
    for a, b in zip(bounds[:-1], bounds[1:]):
        for batch in table.slice(a, b - a).to_batches():
            s.add(batch)
    assert not s.failed, s.failed
    return s.result()


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_steps_anywhere_give_the_whole_traces_peaks(seed, late, monkeypatch):
    monkeypatch.setattr(peaks_stream, "STEP_ROWS", 1)      # a step at every batch
    monkeypatch.setattr(peaks_stream, "CARRIED_PER_ROW", 0)
    table = _table(_history(seed, late=late))
    whole = peaks.of_table(table, PAGE)
    assert whole["per_pid"] and whole["total"]["rss"] is not None
    rng = np.random.default_rng(seed)
    for n in (1, 3, 20, table.num_rows - 1):
        cuts = rng.choice(np.arange(1, table.num_rows), n, replace=False)
        assert _stepped(table, cuts) == whole, n
    assert _stepped(table, [], residency=False) == peaks.of_table(table, PAGE, False)


def test_a_layout_after_its_exec_was_replayed_sends_back_to_the_spill(monkeypatch):
    """A second layout of the same exec (-a: a process that left and came
    back) holds from the exec on: replayed already, the steps cannot take it."""
    rng = np.random.default_rng(0)
    e = Events(pid=P)
    e.exec()
    _layout(e, P, rng)
    e.mmap(A, 8 * PAGE)
    e.mmap(A + 8 * PAGE, 8 * PAGE)
    _layout(e, P, rng)
    table = _table(e)
    assert _stepped(table, [3, 5]) == peaks.of_table(table, PAGE)      # one step: fine
    monkeypatch.setattr(peaks_stream, "STEP_ROWS", 1)
    monkeypatch.setattr(peaks_stream, "CARRIED_PER_ROW", 0)
    s = peaks_stream.PeaksStream(PAGE, True)
    for batch in table.to_batches(max_chunksize=1):
        s.add(batch)
    assert s.result() is None and s._mapped.invalid


def test_rows_out_of_time_order_send_back_to_the_spill():
    e = Events(pid=P)
    e.mmap(A, 8 * PAGE, ts=5000)
    e.mmap(A + 8 * PAGE, 8 * PAGE, ts=4000)
    s = peaks_stream.PeaksStream(PAGE, True)
    for batch in _table(e).to_batches(max_chunksize=1):
        s.add(batch)
    assert s.failed and s.result() is None
