"""Peak mapped and resident bytes (tracer.peaks, tracer.peaks_mapped) from
hand-built event tables: each figure by hand, and against the pandas
references (tracer.rss.peak, the address-space model's timeline)."""
from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from tracer import address_space as asp
from tracer import check, layout, peaks, peaks_replay, rss, trace_rows, writer
from tracer.trace import Trace

from eventframes import ANON, FIXED, PAGE, PRIVATE, Events, DONTUNMAP, MAYMOVE

P, Q, K = 100, 200, 300
A = 0x7f0000000000
MEM_FILE, MEM_ANON, MEM_SHMEM = 0, 1, 3
MiB = 1 << 20


def table(e: Events) -> pa.Table:
    return pa.Table.from_pandas(e.frame(), preserve_index=False)


def of(e: Events, residency: bool = True) -> dict:
    return peaks.of_table(table(e), PAGE, residency)


def rss_row(e: Events, member: int, size: int, delta: int | None = None, **kw) -> int:
    return e.add("rss", member=member, rss_size=size, rss_delta=delta, **kw)


def new_mm(e: Events, file: int, anon: int, shmem: int = 0, **kw) -> None:
    for m, v in ((MEM_FILE, file), (MEM_ANON, anon), (2, 0), (MEM_SHMEM, shmem)):
        rss_row(e, m, v, cause="new_mm", **kw)


def ts_of(e: Events, row: int) -> int:
    return e.rows[row]["ts"]


# ---- resident ----

def test_resident_peak_is_the_largest_sum_of_the_three_counters():
    e = Events(pid=P)
    new_mm(e, 10 * PAGE, 4 * PAGE)
    e.exec()
    for i in range(6):
        e.fault(A + i * PAGE, write=True, rss_anon=1)             # anon 10 pages
    top = e.fault(A + 6 * PAGE, rss_file=1)                        # file 11: total 21
    rss_row(e, MEM_ANON, 2 * PAGE, -8 * PAGE, cause="munmap")      # 13
    e.fault(A, write=True, rss_anon=1)
    e.exit()
    p = of(e)["per_pid"][str(P)]
    assert (p["rss"], p["rss_ts"], p["rss_exact"]) == (21 * PAGE, ts_of(e, top), True)
    assert of(e)["total"]["rss"] == 21 * PAGE


def test_a_part_still_unknown_makes_a_lower_bound():
    """-p: a counter's first value comes with its first change."""
    e = Events(pid=P)
    rss_row(e, MEM_ANON, 30 * PAGE)                                # baseline of anon only
    e.fault(A, write=True, rss_anon=1)
    p = of(e)["per_pid"][str(P)]
    assert (p["rss"], p["rss_exact"]) == (31 * PAGE, False)
    rss_row(e, MEM_FILE, 5 * PAGE)
    rss_row(e, MEM_SHMEM, 0)
    p = of(e)["per_pid"][str(P)]
    assert (p["rss"], p["rss_exact"]) == (36 * PAGE, True)


def test_equal_totals_prefer_an_exact_row_then_the_first():
    e = Events(pid=P)
    rss_row(e, MEM_ANON, 8 * PAGE)                                 # 8, not exact
    rss_row(e, MEM_FILE, 0)
    first = rss_row(e, MEM_SHMEM, 0)                               # 8, exact
    e.fault(A, write=True, rss_anon=1)
    rss_row(e, MEM_ANON, 8 * PAGE, -PAGE, cause="madvise")         # 8 again
    p = of(e)["per_pid"][str(P)]
    assert (p["rss"], p["rss_ts"], p["rss_exact"]) == (9 * PAGE, ts_of(e, first) + 1000, True)


def test_the_tree_is_the_largest_sum_at_one_instant_not_the_sum_of_peaks():
    e = Events(pid=P)
    new_mm(e, 0, 10 * PAGE)
    new_mm(e, 0, 2 * PAGE, pid=Q)
    rss_row(e, MEM_ANON, 1 * PAGE, -9 * PAGE, cause="munmap")      # P: 10 -> 1
    for i in range(7):
        e.fault(A + i * PAGE, write=True, rss_anon=1, pid=Q)      # Q: 2 -> 9
    pk = of(e)
    assert pk["per_pid"][str(P)]["rss"] == 10 * PAGE and pk["per_pid"][str(Q)]["rss"] == 9 * PAGE
    assert pk["total"]["rss"] == 12 * PAGE                           # 10 + 2 at the start
    assert pk["total"]["rss_exact"]
    e.exit(pid=P)
    for i in range(4):
        e.fault(A + i * PAGE, write=True, rss_anon=1, pid=Q)      # Q: 13, P gone
    assert of(e)["total"]["rss"] == 13 * PAGE


def test_no_residency_says_nothing_resident():
    e = Events(pid=P)
    e.mmap(A, 4 * PAGE)
    e.fault(A, write=True)
    pk = of(e, residency=False)
    assert pk["per_pid"][str(P)]["rss"] is None and pk["total"]["rss"] is None
    assert pk["per_pid"][str(P)]["mapped"] == 4 * PAGE and pk["residency"] is False


# ---- mapped ----

def test_an_mmap_over_a_reservation_counts_once_and_a_hole_frees_nothing():
    e = Events(pid=P)
    e.mmap(A, 16 * PAGE)                                           # the loader's reservation
    e.mmap(A, 4 * PAGE, flags=PRIVATE | FIXED, addr=A, fd=3)       # a segment over it
    e.munmap(A + 8 * PAGE, 4 * PAGE)                               # 12 pages
    e.munmap(A + 8 * PAGE, 8 * PAGE)                               # half a hole: 8
    e.munmap(A + 64 * PAGE, 8 * PAGE)                              # nothing there
    e.mmap(A + 8 * PAGE, 2 * PAGE, flags=PRIVATE | ANON | FIXED, addr=A + 8 * PAGE)  # 10
    e.mmap(-22, 4 * PAGE)                                          # failed
    last = e.munmap(A, PAGE + 1)                                   # rounded up: 2 pages
    assert of(e)["per_pid"][str(P)]["mapped"] == 16 * PAGE
    tl = asp.build(e.frame()).timeline(P)
    assert tl["mapped"].tolist()[-1] == 8 * PAGE and last


def test_mremap_moves_grows_and_keeps_with_dontunmap():
    e = Events(pid=P)
    e.mmap(A, 4 * PAGE)
    e.mremap(A, 4 * PAGE, 6 * PAGE, ret=A)                          # grown in place: 6
    e.mremap(A, 6 * PAGE, 8 * PAGE, ret=A + 32 * PAGE)              # moved: 8
    e.mremap(A + 32 * PAGE, 8 * PAGE, 8 * PAGE, ret=A + 64 * PAGE,
             flags=MAYMOVE | DONTUNMAP)                             # the old stays: 16
    e.mremap(A + 64 * PAGE, 8 * PAGE, 2 * PAGE, ret=A + 64 * PAGE)  # shrunk: 10
    e.mremap(A, 8 * PAGE, 9 * PAGE, ret=-12)                        # failed
    assert of(e)["per_pid"][str(P)]["mapped"] == 16 * PAGE
    _same_as_model(e)


def test_the_heap_follows_brk_from_its_first_call():
    e = Events(pid=P)
    start = 0x555555560000
    e.brk(0, start)                                                # asks only
    e.brk(start + 10 * PAGE + 5, start + 10 * PAGE + 5)            # 11 pages (rounded up)
    e.brk(start + 3 * PAGE, start + 3 * PAGE)                      # 3
    e.brk(1 << 47, start + 3 * PAGE)                                # refused: the break stays
    assert of(e)["per_pid"][str(P)]["mapped"] == 11 * PAGE
    _same_as_model(e)


def test_a_forked_child_starts_with_its_parents_mappings_at_the_fork():
    e = Events(pid=P)
    start = 0x555555560000
    e.brk(0, start)
    e.brk(start + 4 * PAGE, start + 4 * PAGE)
    e.mmap(A, 8 * PAGE)
    e.fork(Q)
    e.mmap(A + 64 * PAGE, 100 * PAGE)                               # the parent's, after
    e.munmap(A + 64 * PAGE, 100 * PAGE)
    e.munmap(A, 2 * PAGE, pid=Q)                                   # 4 + 6 in the child
    e.brk(start + 6 * PAGE, start + 6 * PAGE, pid=Q)                # its heap goes on: 12
    e.fork(K, pid=Q)                                               # a grandchild: 12 too
    e.munmap(A + 2 * PAGE, 6 * PAGE, pid=K)
    pk = of(e)["per_pid"]
    assert pk[str(P)]["mapped"] == 112 * PAGE
    assert pk[str(Q)]["mapped"] == 12 * PAGE and pk[str(K)]["mapped"] == 12 * PAGE
    _same_as_model(e)


def test_an_exec_starts_from_its_layout_at_the_exec():
    e = Events(pid=P)
    e.mmap(A, 40 * PAGE)
    e.fork(Q)
    e.exec(pid=Q)
    x = len(e.rows) - 1
    e.snapshot([(0x400000, 0x402000, "r-xp", 0, "/bin/prog"),
                (0x7ffd0000, 0x7ffd4000, "rw-p", 0, "[stack]")], pid=Q)
    e.mmap(A, 3 * PAGE, pid=Q)
    pk = of(e)
    assert pk["per_pid"][str(Q)]["mapped"] == 40 * PAGE              # before its exec
    assert pk["total"]["mapped"] == 80 * PAGE                        # parent + child at the fork
    e.munmap(A, 40 * PAGE)
    e.exit(pid=P)
    e.mmap(A + 100 * PAGE, 64 * PAGE, pid=Q)                        # 6 + 3 + 64
    pk = of(e)
    assert pk["per_pid"][str(Q)]["mapped"] == 73 * PAGE
    assert pk["total"]["mapped"] == 80 * PAGE and x
    _same_as_model(e)


def test_the_tree_drops_a_process_at_its_exit():
    e = Events(pid=P)
    e.mmap(A, 10 * PAGE)
    e.fork(Q)
    e.exit(pid=P)                                                  # the parent goes: 10
    e.mmap(A + 10 * PAGE, 5 * PAGE, pid=Q)                          # 15
    pk = of(e)
    assert pk["total"]["mapped"] == 20 * PAGE                       # at the fork
    assert pk["per_pid"][str(Q)]["mapped"] == 15 * PAGE
    _same_as_model(e)


def _random_events(seed: int, n: int = 400) -> Events:
    """Processes P (then Q, forked from it, and R forked from Q) mapping,
    unmapping, remapping and moving their break at random, in 64 pages."""
    rng = np.random.default_rng(seed)
    e = Events(pid=P)
    start = 0x555555560000
    brk = {P: start}
    e.brk(0, start)
    alive = [P]
    for _ in range(n):
        pid = alive[rng.integers(len(alive))]
        lo = A + int(rng.integers(0, 64)) * PAGE
        npages = int(rng.integers(1, 12))
        op = rng.integers(0, 9)
        if op <= 2:
            e.mmap(lo, npages * PAGE, pid=pid, flags=PRIVATE | ANON | FIXED, addr=lo)
        elif op == 3:
            hint = A + (1000 + int(rng.integers(0, 10_000)) * 16) * PAGE
            e.mmap(hint, npages * PAGE, pid=pid)
        elif op <= 5:
            e.munmap(lo, npages * PAGE, pid=pid)
        elif op == 6:
            new = brk[pid] + int(rng.integers(-3, 6)) * PAGE
            brk[pid] = max(new, start)
            e.brk(brk[pid], brk[pid], pid=pid)
        elif op == 7 and len(alive) < 3:
            child = {1: Q, 2: 300}[len(alive)]
            e.fork(child, pid=pid)
            brk[child] = brk[pid]
            alive.append(child)
        else:
            e.mprotect(lo, npages * PAGE, 1, pid=pid)
    return e


def _same_as_model(e: Events) -> None:
    """Each process's peak and the tree's as the model (tracer.address_space)
    and the budget's sum of its timelines (tracer.check) have them."""
    ev = e.frame()
    m = asp.build(ev)
    pk = peaks.of_table(pa.Table.from_pandas(ev, preserve_index=False), PAGE)
    pids = sorted(set(ev["pid"].tolist()))
    for pid in pids:
        tl = m.timeline(pid)
        assert pk["per_pid"][str(pid)]["mapped"] == int(tl["mapped"].max()), pid
    t = Trace(None, {"page_size": PAGE, "complete": True}, "mem")
    t.__dict__["events"] = ev
    t.__dict__["model"] = m
    value, at = check._tree_figure(t, functools.lru_cache(None)(m.timeline), None, pids,
                                   "peak_mapped", None)
    assert (pk["total"]["mapped"], pk["total"]["mapped_ts"]) == (value, at)


@pytest.mark.parametrize("seed", range(6))
def test_mapped_peaks_are_the_models_on_random_histories(seed):
    _same_as_model(_random_events(seed))


@pytest.mark.parametrize("seed", range(3))
def test_windows_change_nothing(seed, monkeypatch):
    """The replay in windows of a few ops (each from the ranges the last one
    left) gives what one replay of everything gives."""
    e = _random_events(seed, 300)
    whole = of(e)
    for size in (1, 7, 64):
        monkeypatch.setattr(peaks_replay, "WINDOW", size)
        assert of(e) == whole, size


def test_out_of_order_rows_are_put_in_time_order():
    e = Events(pid=P)
    e.mmap(A, 10 * PAGE, ts=5000)
    e.munmap(A, 10 * PAGE, ts=6000)
    e.mmap(A, 3 * PAGE, ts=7000)
    rows = e.rows
    e.rows = [rows[2], rows[0], rows[1]]
    assert of(e)["per_pid"][str(P)]["mapped"] == 10 * PAGE


def test_an_empty_trace():
    pk = of(Events())
    assert pk["per_pid"] == {} and pk["total"]["mapped"] == 0 and pk["total"]["rss"] is None


# ---- the spill, without pandas ----

SPILL_SCRIPT = r"""
import sys, numpy as np
from pathlib import Path
from tracer import layout, peaks, trace_rows, writer
C = layout.C
f = np.zeros(3, layout.FAULT)
f["ts"] = [20, 40, 60]
f["pid"] = f["tid"] = 7
f["error_code"] = C["MT_PF_USER"] | C["MT_PF_WRITE"]
f["rss_anon"] = [1, 1, 1]
e = np.zeros(4, layout.EVENT)
e["ts"] = [10, 30, 50, 70]
e["pid"] = e["tid"] = 7
e["comm"] = b"prog"
e["kind"] = [C["MT_EV_RSS"], C["MT_EV_MMAP"], C["MT_EV_RSS"], C["MT_EV_MUNMAP"]]
e["aux"] = [1, -1, 1, -1]
e["flags"] = [C["MT_RSS_BASELINE"], 0, 0, 0]
e["args"][0, 0] = 8 * 4096
e["args"][1, :2] = [0, 3 << 20]
e["ret"][1] = 0x7f0000000000
e["args"][2, :3] = [5 * 4096, (-4 * 4096) & (2**64 - 1), C["MT_EV_MADVISE"]]
e["args"][3, :2] = [0x7f0000000000, 1 << 20]
spill = writer.Spill(Path(sys.argv[1]))
comms = trace_rows.CommTable()
spill.write([trace_rows.event_batch(e, comms), trace_rows.fault_batch(f, comms)])
pk = peaks.of_spill(spill.path, 4096)
print(pk["per_pid"]["7"]["rss"] // 4096, pk["per_pid"]["7"]["rss_exact"],
      pk["per_pid"]["7"]["mapped"] >> 20, "pandas" in sys.modules)
"""


def test_of_spill_reads_the_spill_as_written_and_imports_no_pandas(tmp_path):
    """The recorder reads its spill back (before the final file exists),
    with numpy and pyarrow alone: pandas costs 0.6 s to import."""
    r = subprocess.run([sys.executable, "-c", SPILL_SCRIPT, str(tmp_path / "t.parquet")],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    # anon 8 + 1 (fault) + 1 (fault) = 10, then -4 (madvise) + 1 = 7: peak 10,
    # file and shmem never seen (a lower bound); mapped 3 MiB before the munmap
    assert r.stdout.split() == ["10", "False", "3", "False"]
