"""Summary-mode fault rows (`count`, `last_ts`, `pages`: docs/format.md):
the same faults as one row each and aggregated (eventframes.summarise)
give the same frames, timelines, reports, budget figures, diff, sidecar
mappings and query totals; a row whose pages fall in two mappings is split.
No privileges, no BPF."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from eventframes import (PAGE, PRIVATE, Events, summarise,
                         without_new_columns)
from tracer import as_summary, budget, check, dataset, diff, metrics, plots, report, writer
from tracer.trace import Trace, load, schema

A, B = 100, 200
PROG, DATA, BSS = 0x400000, 0x600000, 0x602000       # .data (file) and .bss share a block
SMALL, BIG, FILE = 0x7f0000000000, 0x7f1000000000, 0x7f2000000000
SLOT = 1 << 26                                        # a summary time slot (ns)
MiB = 1 << 20
META = {"page_size": PAGE, "complete": True, "start_ts": 0, "lost": 0, "format_version": 1}


def _trace(ev: pd.DataFrame, path="mem") -> Trace:
    t = Trace(None, dict(META), path)
    t.__dict__["events"] = ev                            # the cached_property's slot
    return t


def workload() -> pd.DataFrame:
    """Faults of every shape, as a full trace (one row per fault): code
    fetches; writes into .data (a file mapping) and .bss (anonymous) of
    one 64 KiB block, one page twice; a small mapping with a fault past its
    end; 40 pages written in two time slots with a layout change between;
    6 reads of other blocks at another site; major file reads; a forked
    child's copy-on-write faults."""
    e = Events(pid=A)
    e.exec("/usr/bin/prog")
    e.snapshot([(PROG, PROG + 2 * PAGE, "r-xp", 0, "/usr/bin/prog"),
                (DATA, BSS, "rw-p", 0x2000, "/usr/bin/prog"),
                (BSS, BSS + 14 * PAGE, "rw-p", 0, ""),
                (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")])
    for member, size in ((1, 0), (0, 8 * PAGE), (3, 0)):   # resident baselines
        e.add("rss", member=member, rss_size=size, cause="new_mm")
    for i in range(2):
        e.fault(PROG + i * PAGE + 0x10, exec_=True, ip=PROG + 0x10, rss_file=1)
    # the straddling row: .data page 1 twice (addr's mapping), .bss pages 2, 3
    for a in (DATA + PAGE + 8, DATA + PAGE + 16, BSS + 8, BSS + PAGE + 8):
        e.fault(a, write=True, ip=0x401100, rss_anon=1)
    e.mmap(SMALL, 3 * PAGE)
    for i in range(4):                                   # page 3 is past the end
        e.fault(SMALL + i * PAGE, write=True, ip=0x401200, rss_anon=1 if i < 3 else 0)
    e.mmap(BIG, MiB)
    t0 = SLOT - 20 * 1_000_000                           # 20 pages before a slot's end...
    for i in range(40):                                  # ...and 20 after
        e.fault(BIG + i * PAGE, write=True, ip=0x401300, rss_anon=1, ts=t0 + i * 1_000_000)
        if i == 29:
            e.mprotect(SMALL, PAGE, 1)                   # a layout change mid-slot
    for i in range(6):                                   # more rows, fewer faults: read
        e.fault(BIG + (64 + 16 * i) * PAGE, ip=0x401500)  # from 6 blocks, another site
    e.add("open", path="/data/table", ret=3, flags=0)
    e.mmap(FILE, 8 * PAGE, prot=1, flags=PRIVATE, fd=3)
    for i in range(5):
        e.fault(FILE + i * PAGE + 4, major=True, ip=0x401400, rss_file=1)
    e.fork(B)
    for i in range(6):
        e.fault(BIG + i * PAGE, write=True, pid=B, ip=0x401300)   # copy-on-write
    e.add("rss", member=1, rss_delta=-3 * PAGE, cause="munmap")
    e.munmap(BIG, MiB)
    e.exit(pid=B)
    e.exit()
    return e.frame()


@pytest.fixture(scope="module")
def forms():
    full = workload()
    summ = summarise(full)
    return {"full": _trace(full), "summary": _trace(summ),
            "old": _trace(without_new_columns(full))}


def test_the_summary_form_has_fewer_rows_and_a_straddling_row(forms):
    f = forms["summary"].events
    rows = f[f["kind"] == "fault"]
    assert len(rows) < (forms["full"].events["kind"] == "fault").sum() / 3
    assert int(rows["count"].sum()) == (forms["full"].events["kind"] == "fault").sum()
    straddle = rows[rows["addr"] == DATA + PAGE + 8]
    assert straddle[["count", "pages"]].values.tolist() == [[4, 0b1110]]


def test_vmas_agree(forms):
    full, summ, old = (forms[k].vmas for k in ("full", "summary", "old"))
    pd.testing.assert_frame_equal(full, old)
    # resident pages are the row's sums, kept by the part at its address
    pd.testing.assert_frame_equal(full.drop(columns="rss_pages"),
                                  summ.drop(columns="rss_pages"))
    assert full["rss_pages"].sum() == summ["rss_pages"].sum()
    data = full[(full["start"] == DATA)].iloc[0]
    bss = full[(full["start"] == BSS)].iloc[0]
    assert (data["faults"], data["write"], data["pages_touched"]) == (2, 2, 1)
    assert (bss["faults"], bss["pages_touched"]) == (2, 2)


def test_the_straddling_row_is_split_per_mapping(forms):
    f = forms["summary"].faults
    parts = f[f["ts"] == f.loc[f["addr"] == DATA + PAGE + 8, "ts"].iloc[0]]
    assert parts.index.nunique() == 1 and len(parts) == 2
    assert parts["count"].tolist() == [2, 2]         # the repeat stays with addr's page
    assert parts["pages"].tolist() == [0b0010, 0b1100]
    assert parts["vma_kind"].astype(str).tolist() == ["file", "anon"]
    assert parts["addr"].tolist() == [DATA + PAGE + 8, BSS]
    assert parts["rss_anon"].isna().tolist() == [False, True]
    assert int(parts["rss_anon"].sum()) == 4
    # the page past a mapping's end: a part of its own, attributed to none
    small = f[(f["addr"] >= SMALL) & (f["addr"] < SMALL + 4 * PAGE)]
    assert small["count"].tolist() == [3, 1]
    assert small["reason"].astype(str).tolist()[1] == "no mapping at address"


def test_coverage_agrees(forms):
    cov = [forms[k].model.coverage for k in ("full", "summary")]
    assert (cov[0].faults, cov[0].attributed, cov[0].unattributed) == \
        (cov[1].faults, cov[1].attributed, cov[1].unattributed)
    assert cov[0].unattributed == {"no mapping at address": 1}


def test_timelines_agree_at_every_change_and_at_the_end(forms):
    full, summ = forms["full"], forms["summary"]
    ev = full.events
    changes = ev.loc[~ev["kind"].isin(["fault", "rss"]), "ts"].to_numpy(np.uint64)
    for pid in (A, B):
        a, b = full.timeline(pid), summ.timeline(pid)
        assert len(b) < len(a)
        pd.testing.assert_series_equal(a.iloc[-1], b.iloc[-1])
        at = np.intersect1d(a.index.to_numpy(np.uint64), changes)
        assert len(at) >= (5 if pid == A else 2)
        pd.testing.assert_frame_equal(a.loc[at], b.loc[at])
        pd.testing.assert_frame_equal(a, forms["old"].timeline(pid))
    assert full.timeline(A)["pages_touched"].iloc[-1] == 2 + 1 + 2 + 3 + 40 + 6 + 5


def test_report_budget_diff_and_sidecar_agree(forms, tmp_path):
    full, summ = forms["full"], forms["summary"]
    text = [report.render(t).split("\n\n") for t in (full, summ)]
    # all but the row count and the fault sites: a major summary row has no
    # ip (its end, where it becomes major, is not where it was counted)
    sites = [[k for k, x in enumerate(t) if "fault call sites" in x][0] for t in text]
    assert sites[0] == sites[1] == 4
    assert text[0][1:4] + text[0][5:] == text[1][1:4] + text[1][5:]
    lines = [set(t[4].splitlines()[1:]) for t in text]
    assert lines[0] - lines[1] == {f"  {5:>8,} {5:>6,}  prog+0x1400"} and lines[1] < lines[0]
    text = [t.splitlines() for t in text[1]]
    assert f"  {A:>7} prog            {61:>9,} {5:>6,} " in "\n".join(text[1])
    assert f"  {B:>7} prog            {6:>9,} {0:>6,} " in "\n".join(text[1])
    assert "faults attributed to a mapping: <Coverage 66/67 faults" in "\n".join(text[-1])
    pd.testing.assert_frame_equal(metrics.per_process(full), metrics.per_process(summ))
    pd.testing.assert_frame_equal(metrics.per_mapping(full), metrics.per_mapping(summ))
    p = tmp_path / "b.toml"
    p.write_text('[total]\nmax_minor_faults = 1\nmax_pages_touched = 1\n'
                 '[[process]]\ncomm = "*"\nmax_major_faults = 1\nmax_minor_faults = 1\n'
                 'max_file_write_faults = 1\n')
    b = budget.load(p)
    got = [[(o.who, o.limit.metric, o.measured, o.status, o.top) for o in check.evaluate(t, b)]
           for t in (full, summ)]
    site = [{(r["start"], r["fault_site"]) for o in g for r in o[4]} for g in got]
    for g in got:
        for o in g:
            for r in o[4]:
                del r["fault_site"]
    assert got[0] == got[1]
    assert ("total", "minor_faults", 62, "broken") == got[1][0][:4]
    # the site that faulted most in a mapping: by faults, not rows (the 1 MiB
    # mapping's 46 faults in 5 rows, not the 6 reads in 6); none for the
    # major faults of a summary
    assert site[0] - site[1] == {(FILE, "prog+0x1400")}
    assert site[1] - site[0] == {(FILE, "?")}
    assert (BIG, "prog+0x1300") in site[1]
    d = diff.compare(full, summ)
    assert (d["abs"] == 0).all() and len(d) > 20
    assert plots.busiest_pid(full) == plots.busiest_pid(summ) == A


def test_fault_rate_counts_every_fault(forms):
    """The plotted rates: full and summary rows give the same total, the
    summary's spread over each row's first to last fault."""
    lines = {}
    for k in ("full", "summary"):
        fig = plots.fault_rate_figure(forms[k], A, bins=50)
        ax = fig.axes[0]
        x = ax.lines[0].get_xdata()
        width = x[1] - x[0]
        lines[k] = {ln.get_gid(): np.asarray(ln.get_ydata()) * width for ln in ax.lines}
        plots.plt.close(fig)
    for gid in ("minor", "major", "read", "write", "exec"):
        assert lines["full"][gid].sum() == pytest.approx(lines["summary"][gid].sum())
    assert lines["full"]["minor"].sum() == pytest.approx(56)
    titles, points = [], []
    for k in ("full", "summary"):
        fig = plots.address_space_figure(forms[k], A)
        titles.append(fig.axes[0].get_title())
        (sc,) = [c for c in fig.axes[0].collections if c.get_gid() == "faults"]
        points.append(len(sc.get_offsets()))
        plots.plt.close(fig)
    assert titles[0] == titles[1] and "faults in black (61)" in titles[1]
    assert points == [61, 60]          # a point per page: .data's page took two faults


def test_spread_over_a_rows_span():
    edges = np.array([0.0, 10, 20, 30, 40])
    got = as_summary.spread(np.array([5.0, 10, 0]), np.array([np.nan, 30, 0]),
                            np.array([1, 4, 2]), edges)
    # the point rows at 5 and 0; 4 faults evenly over [10, 30]
    assert got.tolist() == [3.0, 2.0, 2.0, 0.0]


def test_split_puts_each_page_in_its_mapping():
    """Three mappings in one block; the remainder (faults beyond one per
    page) stays with the part at the row's address; the other parts come
    by address."""
    starts = np.array([0x18000, 0x14000, 0x10000], np.uint64)   # ids not in address order
    ends = np.array([0x20000, 0x18000, 0x14000], np.uint64)

    def locate(pid, addr, key):
        a = np.asarray(addr, np.int64)
        return np.where(a < 0x14000, 2, np.where(a < 0x18000, 1, 0))

    bits = np.array([(1 << 1) | (1 << 5) | (1 << 6) | (1 << 12), 0b1], np.int64)
    P = as_summary.split(np.array([1, 2]), np.array([7, 7]),
                         np.array([0x15008, 0x10000], np.uint64), np.array([1, 3]),
                         np.array([9, 1]), bits, starts, ends, locate)
    assert P.row.tolist() == [0, 0, 0, 1]
    assert P.vid.tolist() == [1, 2, 0, 2]
    assert P.count.tolist() == [9 - 2, 1, 1, 1]
    assert P.bits.tolist() == [(1 << 5) | (1 << 6), 1 << 1, 1 << 12, 1]
    assert P.addr.tolist() == [0x15008, 0x11000, 0x1c000, 0x10000]
    assert P.main.tolist() == [True, False, False, True]
    # a bitmap naming more pages than faults: the parts beyond get none
    for count, parts in ((2, [2, 0, 0]), (3, [2, 1, 0]), (4, [2, 1, 1]), (5, [3, 1, 1])):
        P = as_summary.split(np.array([1]), np.array([7]), np.array([0x15008], np.uint64),
                             np.array([1]), np.array([count]), bits[:1], starts, ends, locate)
        assert P.vid.tolist() == [1, 2, 0] and P.count.tolist() == parts, count


def test_a_summary_row_grows_the_stack_to_its_lowest_page():
    """Faults walking down below [stack] over two blocks: the model grows
    the stack as far as each row's lowest page, and every fault is the
    stack's."""
    STACK = 0x7ffffffe2000
    def frame():
        e = Events(pid=A)
        e.exec("/usr/bin/prog")
        e.snapshot([(PROG, PROG + PAGE, "r-xp", 0, "/usr/bin/prog"),
                    (STACK, 0x7ffffffff000, "rw-p", 0, "[stack]")])
        for i in range(1, 6):                           # pages 1, 0 of one block, 15-13 below
            e.fault(STACK - i * PAGE + 8, write=True, rss_anon=1)
        e.exit()
        return e.frame()
    full, summ = _trace(frame()), _trace(summarise(frame()))
    assert (summ.events["kind"] == "fault").sum() == 2      # two 64 KiB blocks
    for t in (full, summ):
        st = t.vmas[t.vmas["kind"] == "stack"]
        assert st["start"].min() == STACK - 5 * PAGE
        assert st["faults"].sum() == 5 and st["pages_touched"].sum() == 5
        assert t.model.coverage.attributed == 5
        assert t.timeline(A)["pages_touched"].iloc[-1] == 5


# ---- files: loading, the dataset sidecar, memtrace query ----

def _write(ev: pd.DataFrame, path, meta: dict, old: bool = False) -> None:
    """A Parquet trace of the frame as the writer lays it out (old: as one
    written before count/last_ts/pages, with int16 resident columns)."""
    sch = schema()
    table = pa.Table.from_pandas(ev.reset_index(drop=True)[sch.names],
                                 schema=pa.schema([pa.field(f.name, pa.string()) if
                                                   pa.types.is_dictionary(f.type) else f
                                                   for f in sch]), preserve_index=False)
    table = table.cast(sch)
    if old:
        table = table.drop_columns(["count", "last_ts", "pages"])
        for c in ("rss_anon", "rss_file", "rss_shmem", "rss_swap"):
            table = table.set_column(table.schema.get_field_index(c), c,
                                     table.column(c).cast(pa.int16()))
    pq.write_table(table.replace_schema_metadata({writer.META_KEY: json.dumps(meta)}), path)


def test_an_old_trace_file_loads_with_count_one(tmp_path):
    full = workload()
    _write(full, tmp_path / "old.parquet", META, old=True)
    _write(full, tmp_path / "new.parquet", META)
    old, new = load(tmp_path / "old.parquet"), load(tmp_path / "new.parquet")
    assert old.events["count"].isna().all() and str(old.events["rss_anon"].dtype) == "Int32"
    assert old.faults["count"].tolist() == [1] * len(old.faults)
    pd.testing.assert_frame_equal(old.vmas, new.vmas)
    cols = [c for c in new.events.columns if c not in ("count", "last_ts", "pages")]
    pd.testing.assert_frame_equal(old.events[cols], new.events[cols])
    # the same as CSV (strings for the dictionary columns, as the writer's)
    table = pq.read_table(tmp_path / "old.parquet")
    table = table.cast(pa.schema([pa.field(f.name, pa.string()) if
                                  pa.types.is_dictionary(f.type) else f for f in table.schema]))
    pacsv.write_csv(table.replace_schema_metadata(None), tmp_path / "old.csv")
    (tmp_path / "old.csv.meta.json").write_text(json.dumps(META))
    csv = load(tmp_path / "old.csv")
    assert csv.events["count"].isna().all() and str(csv.events["rss_anon"].dtype) == "Int32"
    pd.testing.assert_frame_equal(csv.vmas, new.vmas)
    pd.testing.assert_frame_equal(csv.timeline(A), new.timeline(A))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A dataset of three runs of the workload: full, summary, and full as
    written before the new columns."""
    root = tmp_path_factory.mktemp("fleet") / "ds"
    full = workload()
    for k, (ev, old) in enumerate(((full, False), (summarise(full), False), (full, True))):
        run = dataset.start_run(root, now=1735787045.0 + k, hostname="h", token=f"00000{k}")
        meta = {**META, "dataset": run.identity(), "processes": {str(A): "prog", str(B): "prog"},
                "fault_mode": "summary" if k == 1 else "events"}
        _write(ev, run.events, meta, old=old)
        run.commit(meta)
    return root


def test_the_sidecars_mappings_agree(fleet):
    ds = dataset.Dataset(fleet)
    # summary rows have a latency only when major: the sum of the minor
    # faults' latencies is not known
    maps = [json.dumps([{k: v for k, v in r.items() if k != "latency_ns"} for r in m["mappings"]],
                       sort_keys=True) for m in ds.sidecars]
    assert maps[0] == maps[1] == maps[2]
    rows = ds.sidecars[1]["mappings"]
    assert sum(r["faults"] for r in rows) == 67
    assert [r["latency_ns"] for r in rows if r["major"]] == [5 * 500]
    assert sum(r["latency_ns"] for r in ds.sidecars[0]["mappings"]) == 67 * 500


def test_query_totals_agree(fleet):
    pytest.importorskip("duckdb")
    from tracer import query
    con = query.connect(dataset.Dataset(fleet))
    totals = con.execute("SELECT faults, minor, major, syscalls, mmap_bytes FROM run_totals "
                         "ORDER BY run").fetchall()
    assert totals == [(67, 62, 5, 5, 3 * PAGE + MiB + 8 * PAGE)] * 3
    per_run = con.execute("SELECT sum(count), count(*) FROM faults GROUP BY run "
                          "ORDER BY run").fetchall()
    assert [r[0] for r in per_run] == [67, 67, 67]
    assert per_run[1][1] < per_run[0][1] == per_run[2][1] == 67
    procs = con.execute("SELECT run, pid, faults, major FROM processes ORDER BY run, pid"
                        ).fetchall()
    assert [p[1:] for p in procs] == [(A, 61, 5), (B, 6, 0)] * 3


def test_the_demos_step_line_counts_faults():
    from tracer import demo
    ev = workload()
    lines = [demo._step_line("step", t, t, None) for t in (ev, summarise(ev))]
    assert lines[0] == lines[1]
    assert "5 major 62 minor (13r 54w)" in lines[1]


def test_call_site_tables_count_every_user_mode_fault():
    """Summary rows have no stack; the call-site table's total still counts
    each of their faults."""
    from tracer import stacks
    for ev in (workload(), summarise(workload())):
        t = _trace(ev)
        t.meta.update(stacks={}, stack_sample=1)
        assert stacks.top_call_sites(t, "faults").attrs["total"] == 67
