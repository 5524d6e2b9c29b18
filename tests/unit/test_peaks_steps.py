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


def _resident_rows(seed: int, n: int = 3000, run: int | None = None,
                   faults: float | None = None) -> tuple:
    """Resident.step's arguments at random: runs of faults of 1-3
    processes (counters raised, at times lowered or unchanged), counters set
    (absolute rss rows) or changed (rss rows with a delta), equal totals,
    exits."""
    rng = np.random.default_rng(seed)
    run = run or int(rng.choice([3, 10, 40]))
    pids = np.array([P, Q, 300])[np.repeat(rng.integers(0, 3, n // run + 1), run)[:n]]
    u = rng.random(n)
    f = faults or rng.choice([0.8, 0.97])
    fault, rss, ext = u < f, (u >= f) & (u < 0.997), u >= 0.997
    counts = [np.where(fault, rng.choice([0, 1, 1, 2, -1], n, p=[.3, .4, .2, .08, .02]), 0)
              for _ in range(3)]
    member = np.where(rss, rng.choice([MEM_FILE, MEM_ANON, MEM_SHMEM], n), -1)
    absolute = rss & (rng.random(n) < 0.3)
    size = rng.integers(0, 40, n) * PAGE
    delta = rng.integers(-3, 4, n) * PAGE
    ts = 1000 + np.cumsum(rng.integers(0, 3, n))          # ties too
    return (pids.astype(np.int64), ts.astype(np.uint64), fault, rss, ext, member, absolute,
            size.astype(np.int64), delta.astype(np.int64), *(c.astype(np.int64) for c in counts))


@pytest.mark.parametrize("seed", range(12))
def test_fault_runs_cut_change_no_resident_figure(seed, monkeypatch):
    """peaks.fault_runs (runs of faults cut to a few rows) against every
    row replayed, in one step and in steps cut at random: a long history,
    and short ones (where the largest total is often inside a run, or
    equal to an earlier one)."""
    rng = np.random.default_rng(seed)
    histories = [_resident_rows(seed, run=40, faults=0.97)] + [_resident_rows(1000 * seed + i, int(rng.integers(5, 60)))
                                          for i in range(150)]
    assert len(peaks.fault_runs(*histories[0])[0]) < len(histories[0][0]) / 2

    def run(rows, cuts) -> tuple:
        r = peaks.Resident(PAGE)
        for a, b in zip(cuts[:-1], cuts[1:]):
            r.step(*(v[a:b] for v in rows))
        return r.result()

    cuts = []
    for rows in histories:
        n = len(rows[0])
        inner = rng.choice(np.arange(1, n), min(5, n - 1), replace=False).tolist()
        cuts.append(([0, n], [0, *sorted(inner), n]))
    got = [run(rows, c) for rows, cc in zip(histories, cuts) for c in cc]
    monkeypatch.setattr(peaks, "fault_runs", lambda *v: v)
    assert got == [run(rows, c) for rows, cc in zip(histories, cuts) for c in cc]
    assert got[0][0] and got[0][1] is not None
