"""Resident memory from the events (tracer.rss): t.rss, the timeline's
resident columns, and the check that every change adds up."""
import numpy as np
import pandas as pd
import pytest

import tracer
from tracer import address_space as asp
from tracer import layout, rss, trace_rows, writer
from tracer.trace import Trace

from eventframes import PAGE, Events

P, Q = 100, 200
A = 0x7f0000000000
FILE, ANON, SWAP, SHMEM = 0, 1, 2, 3
C = layout.C


def rss_row(e: Events, member: int, size: int, delta: int | None = None,
            cause: str | None = None, **kw) -> int:
    """An `rss` row: a first value (delta None: BASELINE) or a change."""
    return e.add("rss", member=member, rss_size=size, rss_delta=delta, cause=cause, **kw)


def fault(e: Events, addr: int, write: bool = True, **pages) -> int:
    """A fault row with the given resident changes (rss_anon=1, ...)."""
    cols = {"rss_" + k: pages.pop("rss_" + k, 0) for k in rss.KINDS}
    return e.add("fault", addr=addr, ip=0x401000, major=False, error_code=4 | (2 if write else 0),
                 latency=500, **cols, **pages)


def values(frame: pd.DataFrame, row: int) -> tuple:
    v = frame.loc[row, list(rss.KINDS)]
    return tuple(None if pd.isna(x) else int(x) for x in v)


def new_mm(e: Events, file: int, anon: int, swap: int = 0, shmem: int = 0, **kw) -> list[int]:
    """The four absolute values the capture sends when a process starts
    running on a new mm (exec's new image, a forked child)."""
    return [rss_row(e, m, v, cause="new_mm", **kw)
            for m, v in ((FILE, file), (ANON, anon), (SWAP, swap), (SHMEM, shmem))]


def started() -> Events:
    """pid P exec'd: its new image has 16 file and 5 anonymous pages."""
    e = Events(pid=P)
    new_mm(e, 16 * PAGE, 5 * PAGE)
    e.exec()
    return e


# ---- t.rss ----

def test_running_values_from_baselines_faults_and_rss_rows():
    e = started()
    r1 = e.fault(A, write=True, rss_anon=1)
    e.fault(A + PAGE)                                   # the zero page: no change, no row
    r2 = e.fault(A + 2 * PAGE, rss_file=3)
    e.mmap(A, 4 * PAGE)                                 # no residency change: no row
    r3 = rss_row(e, ANON, 2 * PAGE, -4 * PAGE, cause="munmap")
    r4 = rss_row(e, FILE, 10 * PAGE, -9 * PAGE)         # the kernel's (reclaim)
    f = rss.frame(e.frame())
    assert list(f.columns) == ["ts", "pid", "anon", "file", "shmem", "swap", "cause"]
    assert f.index.name == "event"
    assert values(f, r1) == (6 * PAGE, 16 * PAGE, 0, 0)
    assert values(f, r2) == (6 * PAGE, 19 * PAGE, 0, 0)
    assert values(f, r3) == (2 * PAGE, 19 * PAGE, 0, 0)
    assert values(f, r4) == (2 * PAGE, 10 * PAGE, 0, 0)
    assert list(f["cause"].astype(str)) == ["new_mm"] * 4 + ["exec", "fault", "fault",
                                                           "munmap", "kernel"]
    assert all(str(f[k].dtype) == "Int64" for k in rss.KINDS)
    assert f["ts"].is_monotonic_increasing


def test_unknown_until_a_first_value():
    """A process whose counters were not seen from their start (attached
    with -p): each is unknown until its first value; an exec row without
    the new image's values changes nothing."""
    e = Events(pid=P)
    x = e.exec()
    fa = e.fault(A, write=True, rss_anon=1)             # anon still unknown: no baseline
    b = rss_row(e, ANON, 7 * PAGE)
    s = fault(e, A + PAGE, rss_shmem=1)
    f = rss.frame(e.frame())
    assert values(f, x) == (None, None, None, None)
    assert values(f, fa) == (None, None, None, None)
    assert values(f, b) == (7 * PAGE, None, None, None)
    assert values(f, s) == (7 * PAGE, None, None, None)
    assert f.loc[b, "cause"] == "baseline"


def test_without_exec_shmem_and_swap_stay_unknown():
    e = Events(pid=P)
    rss_row(e, ANON, 3 * PAGE)
    fault(e, A, rss_shmem=1)
    f = rss.frame(e.frame())
    assert values(f, f.index[-1]) == (3 * PAGE, None, None, None)


def test_a_second_exec_starts_from_the_new_images_values():
    e = started()
    fault(e, A, rss_anon=1, rss_shmem=2)
    n = new_mm(e, 0, 2 * PAGE)                          # sent at or before the exec row
    x = e.exec()
    b = fault(e, A, rss_anon=1)
    f = rss.frame(e.frame())
    assert values(f, n[0]) == (6 * PAGE, 0, 2 * PAGE, 0)   # file first: the others follow
    assert values(f, x) == (2 * PAGE, 0, 0, 0)
    assert values(f, b) == (3 * PAGE, 0, 0, 0)


def test_exit_of_the_last_thread_gives_everything_back():
    e = started()
    t = e.exit(group=False, tid=P + 1)                  # a thread: nothing changes
    x = e.exit()
    f = rss.frame(e.frame())
    assert t not in f.index
    assert values(f, x) == (0, 0, 0, 0) and f.loc[x, "cause"] == "exit"


def test_processes_are_separate():
    e = started()
    e.fork(Q)
    rss_row(e, ANON, 40 * PAGE, pid=Q)                  # the child's first value
    c = e.fault(A, write=True, rss_anon=1, pid=Q)
    p = e.fault(A, write=True, rss_anon=1)
    f = rss.frame(e.frame())
    assert values(f, c)[0] == 41 * PAGE and f.loc[c, "pid"] == Q
    assert values(f, p)[0] == 6 * PAGE and f.loc[p, "pid"] == P


def test_page_size_and_swap():
    e = started()
    s = e.add("fault", addr=A, ip=0x401000, major=True, error_code=4, latency=9,
              rss_anon=1, rss_file=0, rss_shmem=0, rss_swap=-1)
    f = rss.frame(e.frame(), page_size=16384)
    assert values(f, s) == (5 * PAGE + 16384, 16 * PAGE, 0, -16384)


def test_ties_keep_table_order():
    e = started()
    t0 = e.t + 10
    a = e.fault(A, write=True, rss_anon=1, ts=t0)
    b = rss_row(e, ANON, 2 * PAGE, -4 * PAGE, cause="madvise", ts=t0)
    f = rss.frame(e.frame())
    assert list(f.index[-2:]) == [a, b]
    assert values(f, b)[0] == 2 * PAGE


def test_empty_and_no_residency():
    assert len(rss.frame(Events().frame().iloc[0:0])) == 0
    e = Events()
    e.mmap(A, PAGE)
    f = rss.frame(e.frame())
    assert len(f) == 0 and list(f.columns) == rss.COLUMNS


def test_at_and_peak():
    e = started()
    r1 = e.fault(A, write=True, rss_anon=10)
    rss_row(e, ANON, 1 * PAGE, -14 * PAGE, cause="munmap")
    f = rss.frame(e.frame())
    ts = int(f.loc[r1, "ts"])
    assert int(rss.at(f, P, ts)["anon"]) == 15 * PAGE
    assert rss.at(f, P, 0).isna().all()
    pk = rss.peak(f)
    assert int(pk.loc[P, "peak"]) == 15 * PAGE + 16 * PAGE and pk.loc[P, "exact"]
    assert pk.loc[P, "ts"] == ts


def test_peak_with_an_unknown_part():
    e = Events(pid=Q)                                   # a forked child: no exec
    rss_row(e, ANON, 10 * PAGE)
    rss_row(e, FILE, 4 * PAGE)
    e.add("rss", member=ANON, rss_size=2 * PAGE, rss_delta=-8 * PAGE, cause="munmap")
    f = rss.frame(e.frame())
    pk = rss.peak(f, Q)
    assert int(pk.loc[Q, "peak"]) == 14 * PAGE and not pk.loc[Q, "exact"]   # shmem unknown
    assert len(rss.peak(f, P)) == 0


# ---- the check: nothing unexplained ----

def test_check_adds_up():
    e = started()
    e.fault(A, write=True, rss_anon=1)
    e.fault(A + PAGE, write=True, rss_anon=1)
    rss_row(e, ANON, 3 * PAGE, -4 * PAGE, cause="munmap")      # 5 + 2 - 4 = 3
    e.fault(A, write=True, rss_anon=1)                          # after the last value
    c = rss.check(e.frame()).set_index("kind")
    a = c.loc["anon"]
    assert (a["baseline"], a["final"]) == (5 * PAGE, 3 * PAGE)
    assert (a["fault_deltas"], a["rss_deltas"], a["gap"]) == (2 * PAGE, -4 * PAGE, 0)
    assert a["mismatches"] == 0 and a["after_final"] == PAGE
    assert c.loc["file", "gap"] == 0 and c.loc["file", "final"] == 16 * PAGE


def test_check_finds_a_lost_change():
    """A change the trace lost (here: a fault's page not counted) shows as a
    gap at the next value the kernel reports."""
    e = started()
    e.fault(A, write=True, rss_anon=1)
    rss_row(e, ANON, 3 * PAGE, -4 * PAGE, cause="munmap")      # 5 + 1 - 4 = 2, kernel says 3
    c = rss.check(e.frame()).set_index("kind")
    assert c.loc["anon", "gap"] == PAGE and c.loc["anon", "mismatches"] == 1


def test_check_segments_by_baseline():
    e = started()
    e.fault(A, write=True, rss_anon=1)
    e.exec()
    rss_row(e, ANON, 9 * PAGE)
    rss_row(e, ANON, 8 * PAGE, -PAGE)
    c = rss.check(e.frame())
    anon = c[c["kind"] == "anon"]
    assert list(anon["baseline"]) == [5 * PAGE, 9 * PAGE]
    assert list(anon["gap"]) == [0, 0] and list(anon["final"]) == [5 * PAGE, 8 * PAGE]


# ---- the timeline ----

def attach(e: Events) -> None:
    e.snapshot([(0x400000, 0x401000, "r-xp", 0, "/usr/bin/prog"),
                (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")], cause="attach")


def test_timeline_gets_resident_columns_and_rows_of_their_own():
    e = Events(pid=P)
    attach(e)
    rss_row(e, FILE, 2 * PAGE)
    rss_row(e, ANON, 3 * PAGE)
    rss_row(e, SHMEM, 0)
    e.mmap(A, 4 * PAGE)
    f1 = e.fault(A, write=True, rss_anon=1)
    d = rss_row(e, ANON, PAGE, -3 * PAGE, cause="madvise")
    e.madvise(A, 4 * PAGE, 4)                            # MADV_DONTNEED returns
    e.exit()
    ev = e.frame()
    tl = rss.join_timeline(asp.build(ev).timeline(P), rss.frame(ev), P)
    assert list(tl.columns[-4:]) == ["rss_anon", "rss_file", "rss_shmem", "rss_total"]
    assert tl.index.is_monotonic_increasing and tl.index.name == "ts"
    row = tl.loc[ev.loc[f1, "ts"]]
    assert (row["rss_anon"], row["rss_total"]) == (4 * PAGE, 6 * PAGE)
    assert row["minor_faults"] == 1
    # the madvise's change has a row, with the virtual columns carried forward
    drow = tl.loc[ev.loc[d, "ts"]]
    assert drow["rss_anon"] == PAGE and drow["mapped"] == row["mapped"]
    assert drow["minor_faults"] == 1
    assert tl["mapped"].iloc[-1] == 0 and tl["rss_total"].iloc[-1] == 0
    assert np.isnan(tl["heap"].iloc[-1])
    assert str(tl["rss_anon"].dtype) == "Int64" and str(tl["mapped"].dtype) == "int64"


def test_timeline_unknown_resident_is_na():
    e = Events(pid=P)
    attach(e)
    rss_row(e, ANON, 3 * PAGE)
    e.mmap(A, PAGE)
    ev = e.frame()
    tl = rss.join_timeline(asp.build(ev).timeline(P), rss.frame(ev), P)
    assert pd.isna(tl["rss_file"].iloc[-1]) and pd.isna(tl["rss_total"].iloc[-1])
    assert tl["rss_anon"].iloc[-1] == 3 * PAGE
    assert pd.isna(tl["rss_anon"].iloc[0])              # the attach: before any value
    # a process with no resident rows at all
    tl2 = rss.join_timeline(asp.build(ev).timeline(P), rss.frame(ev.iloc[0:0]), P)
    assert tl2["rss_total"].isna().all() and len(tl2) == len(asp.build(ev).timeline(P))


# ---- through a Trace ----

def _trace(ev: pd.DataFrame) -> Trace:
    t = Trace(None, {"page_size": PAGE, "complete": True}, "mem")
    t.__dict__["events"] = ev                            # the cached_property's slot
    return t


def test_trace_rss_and_timeline():
    e = Events(pid=P)
    attach(e)
    rss_row(e, ANON, 3 * PAGE)
    e.mmap(A, PAGE)
    f = e.fault(A, write=True, rss_anon=1)
    t = _trace(e.frame())
    assert values(t.rss, f)[0] == 4 * PAGE
    tl = t.timeline(P)
    assert tl["rss_anon"].iloc[-1] == 4 * PAGE and "mapped" in tl


def test_rss_from_a_written_trace(tmp_path):
    """Through the writer: ring records -> Parquet -> t.rss."""
    f = np.zeros(2, layout.FAULT)
    f["ts"] = [20, 40]
    f["pid"] = f["tid"] = 7
    f["error_code"] = C["MT_PF_USER"] | C["MT_PF_WRITE"]
    f["rss_anon"] = [1, 2]
    e = np.zeros(3, layout.EVENT)
    e["ts"] = [10, 30, 50]
    e["pid"] = e["tid"] = 7
    e["comm"] = b"prog"
    e["kind"] = C["MT_EV_RSS"]
    e["aux"] = [ANON, ANON, ANON]
    e["flags"] = [C["MT_RSS_BASELINE"], 0, 0]
    e["args"][:, 0] = [8 * PAGE, 5 * PAGE, 4 * PAGE]           # sizes
    e["args"][:, 1] = [0, (-4 * PAGE) & (2**64 - 1), (-3 * PAGE) & (2**64 - 1)]
    e["args"][:, 2] = [0, C["MT_EV_MADVISE"], C["MT_EV_MUNMAP"]]
    out = tmp_path / "t.parquet"
    spill = writer.Spill(out)
    comms = trace_rows.CommTable()
    spill.write([trace_rows.event_batch(e, comms), trace_rows.fault_batch(f, comms)])
    spill.finish("parquet", {"format_version": C["MT_FORMAT_VERSION"], "complete": True,
                             "lost": 0, "page_size": PAGE})
    t = tracer.load(out)
    r = t.rss
    assert [int(v) for v in r["anon"]] == [8 * PAGE, 9 * PAGE, 5 * PAGE, 7 * PAGE, 4 * PAGE]
    assert list(r["cause"].astype(str)) == ["baseline", "fault", "madvise", "fault", "munmap"]
    c = rss.check(t.events)
    assert c["gap"].tolist() == [0] and c["mismatches"].tolist() == [0]


@pytest.mark.parametrize("n", [1, 50])
def test_many_processes_vectorised(n):
    e = Events()
    for p in range(1, n + 1):
        rss_row(e, ANON, p * PAGE, pid=p)
    for p in range(1, n + 1):
        e.fault(A, write=True, rss_anon=1, pid=p)
    f = rss.frame(e.frame())
    last = f.groupby("pid")["anon"].last()
    assert [int(last[p]) for p in range(1, n + 1)] == [(p + 1) * PAGE for p in range(1, n + 1)]


def test_a_change_sent_alone_before_its_unjoined_fault_is_the_faults():
    """A fault that began on one CPU and ended on another: the BPF side sends
    its change as an rss row with no cause, then the fault without its entry
    (error_code null). The change is the fault's; a change followed by
    anything else of the thread stays the kernel's."""
    e = started()
    r = rss_row(e, FILE, 32 * PAGE, 16 * PAGE)
    f = e.add("fault", addr=A, ip=0x401000, major=True, error_code=None, latency=0,
              rss_anon=0, rss_file=0, rss_shmem=0, rss_swap=0)
    other = rss_row(e, FILE, 31 * PAGE, -PAGE, tid=P + 1)      # another thread's
    e.mmap(A, PAGE, tid=P + 1)
    e.add("fault", addr=A, ip=0x401000, major=False, error_code=None, latency=0,
          rss_anon=0, rss_file=0, rss_shmem=0, rss_swap=0, tid=P + 1)
    fr = rss.frame(e.frame())
    assert fr.loc[r, "cause"] == "fault" and fr.loc[other, "cause"] == "kernel"
    assert f not in fr.index                                    # no change of its own
    assert values(fr, r)[1] == 32 * PAGE


def test_member_is_isin():
    rng = np.random.default_rng(7)
    for n, m in ((0, 5), (5, 0), (100, 40), (1000, 1000)):
        x = rng.integers(0, 60, n).astype(np.uint64)
        of = rng.integers(0, 60, m).astype(np.uint64)
        assert (rss._member(x, of) == np.isin(x, of)).all()
