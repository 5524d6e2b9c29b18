"""The budget check (tracer.check) on hand-built traces: figures per
process and for the tree, breaches with the mappings responsible, call
sites with and without stacks, and the pytest plugin's from-exec cut."""
import pandas as pd

from eventframes import PAGE, Events
from tracer import budget as bg
from tracer import check, metrics
from tracer.trace import Trace

A, B = 100, 200
BIG, SMALL = 0x7f0000000000, 0x7f1000000000
MiB = 1 << 20
BASE = 2 * PAGE + 33 * PAGE          # the binary and the stack of each process


def _image(e: Events, pid: int, path: str) -> None:
    e.exec(path, pid=pid, comm=path.rsplit("/", 1)[-1])
    e.snapshot([(0x400000, 0x402000, "r-xp", 0, path),
                (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")], pid=pid)


def _trace(ev: pd.DataFrame) -> Trace:
    t = Trace(None, {"page_size": PAGE, "complete": True, "start_ts": 0, "lost": 0}, "mem")
    t.__dict__["events"] = ev                            # the cached_property's slot
    return t


def two_processes() -> tuple[Trace, dict]:
    """prog (A) maps 8 MiB, touches 10 pages; worker (B) maps 4 MiB while
    prog's 8 MiB are mapped, touches 3 pages and unmaps; then prog maps
    1 MiB more. prog's peak (9 MiB) comes after worker's (4 MiB): the
    tree's peak (12 MiB) is not the sum of the two."""
    e = Events()
    _image(e, A, "/usr/bin/prog")
    _image(e, B, "/opt/bin/worker")
    rows = {"big": e.mmap(BIG, 8 * MiB, pid=A, comm="prog")}
    for i in range(10):
        e.fault(BIG + i * PAGE, write=True, pid=A, comm="prog", rss_anon=1)
    rows["small"] = e.mmap(SMALL, 4 * MiB, pid=B, comm="worker")
    for i in range(3):
        e.fault(SMALL + i * PAGE, write=True, pid=B, comm="worker", rss_anon=1)
    e.munmap(SMALL, 4 * MiB, pid=B, comm="worker")
    rows["more"] = e.mmap(BIG + 8 * MiB, MiB, pid=A, comm="prog")
    e.brk(0, 0x500000, pid=A, comm="prog")
    e.exit(pid=B, comm="worker")
    e.exit(pid=A, comm="prog")
    return _trace(e.frame()), rows


def _budget(text: str, tmp_path) -> bg.Budget:
    p = tmp_path / "b.toml"
    p.write_text(text)
    return bg.load(p)


def _by(outcomes, who, limit):
    (o,) = [o for o in outcomes if o.who == who and o.limit.name == limit]
    return o


def test_figures_are_those_of_tracer_metrics(tmp_path):
    t, _ = two_processes()
    b = _budget("""
        [[process]]
        comm = "*"
        max_mapped = 0
        max_bytes_mapped = 0
        max_minor_faults = 0
        max_pages_touched = 0
        max_mmap_calls = 0
        max_munmap_calls = 0
        max_brk_calls = 0
        max_major_faults = 0
        """, tmp_path)
    out = check.evaluate(t, b)
    pp = metrics.per_process(t)
    assert {o.process for o in out} == {"prog#0", "worker#0"}
    for o in out:
        assert o.measured == pp.loc[o.process, o.limit.metric], (o.process, o.limit.name)
    # and those figures are the story's
    assert _by(out, "prog#0", "max_mapped").measured == BASE + 9 * MiB
    assert _by(out, "worker#0", "max_mapped").measured == BASE + 4 * MiB
    assert _by(out, "prog#0", "max_bytes_mapped").measured == 9 * MiB
    assert _by(out, "prog#0", "max_minor_faults").measured == 10
    assert _by(out, "worker#0", "max_pages_touched").measured == 3
    assert _by(out, "prog#0", "max_mmap_calls").measured == 2
    assert _by(out, "worker#0", "max_munmap_calls").measured == 1
    assert _by(out, "prog#0", "max_brk_calls").measured == 1
    assert _by(out, "prog#0", "max_major_faults").status == "ok"        # 0 <= 0
    assert _by(out, "prog#0", "max_minor_faults").status == "broken"    # 10 > 0


def test_tree_peak_is_at_one_instant_and_counts_add_up(tmp_path):
    t, _ = two_processes()
    b = _budget('[total]\nmax_mapped = "12M"\nmax_minor_faults = 13\nmax_mmap_calls = 2\n',
                tmp_path)
    out = check.evaluate(t, b)
    peak = _by(out, "total", "max_mapped")
    assert peak.measured == 2 * BASE + 12 * MiB        # not 2 * BASE + 13 MiB
    assert peak.status == "broken" and peak.pids == [A, B]
    assert _by(out, "total", "max_minor_faults").measured == 13
    assert _by(out, "total", "max_minor_faults").status == "ok"
    calls = _by(out, "total", "max_mmap_calls")
    assert (calls.measured, calls.status) == (3, "broken")
    assert check.broken(out) == [peak, calls]
    # the mappings alive at the tree's peak, largest first, from both processes
    top = [(r["pid"], r["kind"], r["start"], r["size"]) for r in peak.top]
    assert top[:2] == [(A, "anon", BIG, 8 * MiB), (B, "anon", SMALL, 4 * MiB)]
    assert peak.top[0]["faults"] == 10 and peak.top[1]["faults"] == 3
    # without stacks, mapping calls have no call sites
    assert calls.top == [] and calls.sites == check.NO_STACKS


def test_the_mapping_responsible_and_its_fault_site(tmp_path):
    t, _ = two_processes()
    b = _budget('[[process]]\nexe = "prog"\nmax_mapped = "8M"\nmax_minor_faults = 5\n'
                'max_heap = 0\n', tmp_path)
    out = check.evaluate(t, b)
    mapped = _by(out, "prog#0", "max_mapped")
    assert mapped.status == "broken" and mapped.measured == BASE + 9 * MiB
    first = mapped.top[0]
    assert (first["kind"], first["start"], first["size"]) == ("anon", BIG, 8 * MiB)
    assert first["created_by"] == "mmap" and first["mapped_at"] is None
    # /usr/bin/prog is not on this machine: the site is module + offset
    assert first["fault_site"] == "prog+0x1000"
    assert [r["size"] for r in mapped.top[:2]] == [8 * MiB, MiB]
    minor = _by(out, "prog#0", "max_minor_faults")
    assert minor.top[0]["figure"] == 10 and minor.top[0]["start"] == BIG
    heap = _by(out, "prog#0", "max_heap")
    assert heap.status == "ok"


def test_selectors(tmp_path):
    t, _ = two_processes()
    b = _budget("""
        [[process]]
        exe = "/opt/*"
        max_mmap_calls = 5
        [[process]]
        comm = "work*"
        exe = "prog"
        max_mmap_calls = 5
        [[process]]
        exe = "/usr/bin/prog"
        max_mmap_calls = 5
        """, tmp_path)
    out = check.evaluate(t, b)
    assert [(o.who, o.status) for o in out] == [
        ("worker#0", "ok"), ("comm='work*' exe='prog'", "skipped"), ("prog#0", "ok")]
    assert out[1].reason == "no traced process matches comm='work*' exe='prog'"


def test_excluded_processes_are_in_no_figure(tmp_path):
    t, _ = two_processes()
    b = _budget('[total]\nmax_mapped = "1G"\nmax_minor_faults = 100\n', tmp_path)
    out = check.evaluate(t, b, exclude=frozenset({A}))
    assert _by(out, "total", "max_mapped").measured == BASE + 4 * MiB
    assert _by(out, "total", "max_minor_faults").measured == 3


def test_call_sites_come_from_recorded_stacks(tmp_path, monkeypatch):
    """site_mapped and the call-site lists need stacks: without them the
    limit is skipped, saying so; with tracer.symbols.mmap_sites (what a
    trace with stacks provides) they are checked and the report names the
    site that mapped each mapping."""
    from tracer import budget_report, symbols
    t, rows = two_processes()
    b = _budget('[total]\nmax_site_mapped = "6M"\nmax_mmap_calls = 2\nmax_mapped = "1M"\n',
                tmp_path)
    out = check.evaluate(t, b)
    site = _by(out, "total", "max_site_mapped")
    assert site.status == "skipped" and site.reason.startswith(check.NO_STACKS)
    text = budget_report.render(out, b, t)
    assert "call sites: no stacks recorded" in text and "mapped at: no stacks recorded" in text

    names = {rows["big"]: "load_all+0x10", rows["more"]: "load_all+0x10",
             rows["small"]: "work+0x4"}
    monkeypatch.setattr(symbols, "mmap_sites",
                        lambda tr: pd.Series(names, dtype=object), raising=False)
    out = check.evaluate(t, b)
    site = _by(out, "total", "max_site_mapped")
    assert (site.status, site.measured) == ("broken", 9 * MiB)
    assert site.top == [{"site": "load_all+0x10", "figure": 9 * MiB},
                        {"site": "work+0x4", "figure": 4 * MiB}]
    calls = _by(out, "total", "max_mmap_calls")
    assert calls.top == [{"site": "load_all+0x10", "figure": 2}, {"site": "work+0x4", "figure": 1}]
    mapped = _by(out, "total", "max_mapped")
    assert mapped.top[0]["mapped_at"] == "load_all+0x10" and mapped.sites == ""
    text = budget_report.render(out, b, t)
    assert "no stacks recorded" not in text and "mapped at load_all+0x10" in text


def test_from_exec_drops_the_pre_exec_copy():
    """The pytest plugin's cut: a child forked by pytest counts from its
    exec; pytest's own events stay (left out by `exclude`)."""
    from tracer.pytest_plugin import from_exec
    e = Events(pid=A)
    e.snapshot([(0x400000, 0x402000, "r-xp", 0, "/usr/bin/python3"),
                (0x7f5000000000, 0x7f5000000000 + 64 * MiB, "rw-p", 0, "")], cause="attach")
    e.fork(B, comm="python3")
    e.fault(0x7f5000000000, write=True, pid=B, comm="python3")     # the copy, before exec
    _image(e, B, "/usr/bin/prog")
    e.mmap(BIG, MiB, pid=B, comm="prog")
    e.exit(pid=B, comm="prog")
    ev = e.frame()
    comm = ev["comm"].astype(str)
    ev["comm"] = comm.where(ev["pid"] != A, "python3").astype("category")   # pytest's name
    t = _trace(ev)
    full = metrics.per_process(t)
    assert full.loc["prog#0", "peak_mapped"] >= 64 * MiB      # pytest's copy counted
    cut = from_exec(t)
    kinds = cut.events["kind"].astype(str)
    assert "fork" not in set(kinds) and (cut.events["pid"] == A).any()
    per = metrics.per_process(cut)
    assert per.loc["prog#0", "peak_mapped"] == BASE + MiB
    assert per.loc["prog#0", "minor_faults"] == 0
    b = bg.from_keywords({"max_mapped": "2M"})
    (o,) = check.evaluate(cut, b, exclude=frozenset({A}))
    assert (o.measured, o.status) == (BASE + MiB, "ok")


def test_file_write_faults_and_resident_peak(tmp_path):
    """Writes into a private file mapping (relocations, say) are counted
    apart from the anonymous ones, and the responsible mapping is the file."""
    from tracer import budget_report
    from eventframes import PRIVATE, RW
    e = Events(pid=A)
    _image(e, A, "/usr/bin/prog")
    e.add("open", pid=A, path="/data/table.bin", ret=3, flags=2)
    e.mmap(SMALL, 4 * PAGE, prot=RW, flags=PRIVATE, fd=3, off=0)
    e.mmap(BIG, 8 * PAGE)
    for i in range(3):
        e.fault(SMALL + i * PAGE, write=True, rss_anon=1)
    e.fault(BIG, write=True, rss_anon=1)
    e.add("rss", member=1, rss_size=40 * PAGE)            # anon baseline
    e.add("rss", member=0, rss_size=10 * PAGE)            # file baseline
    e.add("rss", member=3, rss_size=0)                    # shmem: all three parts known
    t = _trace(e.frame())
    b = _budget('[[process]]\ncomm = "prog"\nmax_file_write_faults = 2\nmax_rss = 0\n',
                tmp_path)
    out = check.evaluate(t, b)
    fw = _by(out, "prog#0", "max_file_write_faults")
    assert (fw.measured, fw.status) == (3, "broken")
    assert [(r["kind"], r["path"], r["figure"]) for r in fw.top] == [
        ("file", "/data/table.bin", 3)]
    rss = _by(out, "prog#0", "max_rss")
    assert rss.status == "broken"
    assert rss.measured == metrics.per_process(t).loc["prog#0", "peak_rss"] == 50 * PAGE
    text = budget_report.render(out, b, t)
    assert "file rw- table.bin" in text and "writes" in text and "resident" in text


def test_a_buffer_mapped_again_is_one_row(tmp_path):
    """Mapped, touched and unmapped three times at one address: one row of
    the report, x3, its faults summed, rather than three alike rows."""
    from tracer import budget_report
    e = Events(pid=A)
    _image(e, A, "/usr/bin/prog")
    for _ in range(3):
        e.mmap(BIG, MiB)
        for i in range(4):
            e.fault(BIG + i * PAGE, write=True)
        e.munmap(BIG, MiB)
    e.mmap(SMALL, MiB)
    e.fault(SMALL, write=True)
    t = _trace(e.frame())
    b = bg.from_keywords({"max_minor_faults": 5, "max_bytes_mapped": "1M"})
    faults, mapped = check.evaluate(t, b)
    assert [(r["start"], r["count"], r["figure"]) for r in faults.top] == [
        (BIG, 3, 12), (SMALL, 1, 1)]
    assert [(r["start"], r["count"], r["size"], r["figure"]) for r in mapped.top] == [
        (BIG, 3, MiB, 3 * MiB), (SMALL, 1, MiB, MiB)]
    text = budget_report.render([faults], b, t)
    assert f"anon {BIG:#x} x3" in text and f"anon {SMALL:#x} " in text


def test_forked_copies_are_counted_per_process():
    """A fork copies the parent's mappings (one lineage in both): a process's
    row counts its own faults only; the tree's row is both copies, x2."""
    e = Events(pid=A)
    _image(e, A, "/usr/bin/prog")
    e.mmap(BIG, 4 * MiB)
    e.fault(BIG, write=True)
    e.fork(B)
    e.fault(BIG + PAGE, write=True, pid=B)
    e.fault(BIG + 2 * PAGE, write=True, pid=B)
    e.exit(pid=B)
    e.exit()
    t = _trace(e.frame())
    assert t.vmas.groupby("lineage")["pid"].nunique().max() == 2     # the premise
    child = bg.Budget("b", [bg.Scope("process", [bg.Limit("max_minor_faults", 0)],
                                     comm="prog")])
    by_pid = {o.pids[0]: o for o in check.evaluate(t, child)}
    big = [r for r in by_pid[B].top if r["start"] == BIG]
    assert [(r["figure"], r["count"], r["pids"]) for r in big] == [(2, 1, [B])]
    big = [r for r in by_pid[A].top if r["start"] == BIG]
    assert [(r["figure"], r["count"], r["pids"]) for r in big] == [(1, 1, [A])]
    (tree,) = check.evaluate(t, bg.from_keywords({"max_minor_faults": 0}))
    big = [r for r in tree.top if r["start"] == BIG]
    assert [(r["figure"], r["count"], r["pids"]) for r in big] == [(3, 2, [A, B])]
