"""The end-of-run summary's peaks: peak mapped beside peak resident bytes per
process and for the tree, and the kernel's own figure beside ours."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tracer import capture, capture_counts, layout, summary, trace_rows, writer

C = layout.C
PAGE = 4096
MiB = 1 << 20


def row(mapped: int, rss: int | None, exact: bool | None = True) -> dict:
    return {"mapped": mapped, "mapped_ts": 1, "rss": rss, "rss_ts": 2 if rss is not None else None,
            "rss_exact": exact if rss is not None else None}


def pk(rows: dict, total: dict, residency: bool = True) -> dict:
    return {"per_pid": {str(p): v for p, v in rows.items()}, "total": total,
            "residency": residency}


def test_one_process_and_the_kernels_maxrss_beside_ours():
    p = pk({7: row(258 * MiB, 257 * MiB)}, row(258 * MiB, 257 * MiB))
    kernel = {"wait4": {"maxrss": 257 * MiB - 28 * PAGE, "memtrace_vmhwm": 200 * MiB}}
    lines = summary.peak_lines(p, {7: "faults"}, kernel)
    assert lines[0].split() == ["peak", "mapped", "resident", "(the", "largest", "over", "time)"]
    assert lines[1].split() == ["258.0", "MiB", "257.0", "MiB", "7", "faults"]
    assert len(lines) == 5                                     # no tree line for one process
    text = "\n".join(lines)
    assert "ru_maxrss 256.9 MiB (wait4): the high-water mark of one process" in text
    assert "approximate" in text and "ours (one process): 257.0 MiB, 7 faults" in text


def test_a_maxrss_not_above_memtraces_own_is_not_cmds():
    """The kernel counts the image CMD exec'd from (memtrace's memory) in
    CMD's maxrss: a figure not above memtrace's own VmHWM says nothing of CMD."""
    p = pk({7: row(2 * MiB, MiB + 400 * 1024)}, row(2 * MiB, MiB + 400 * 1024))
    kernel = {"wait4": {"maxrss": 250 * MiB, "memtrace_vmhwm": 251 * MiB}}
    text = "\n".join(summary.peak_lines(p, {7: "seed003"}, kernel))
    assert "ru_maxrss 250.0 MiB (wait4), at most memtrace's own 251.0 MiB\n" in text
    assert "CMD's\n            own peak is not told\n" in text
    assert "ours (one process): 1.4 MiB, 7 seed003" in text


def test_many_processes_the_largest_first_then_the_tree():
    rows = {100 + i: row((10 + i) * MiB, (i + 1) * MiB) for i in range(8)}
    rows[200] = row(3 * MiB, None)                             # no resident figure known
    rows[201] = row(4 * MiB, 2 * MiB, exact=False)             # a lower bound
    p = pk(rows, row(40 * MiB, 20 * MiB))
    names = {pid: f"p{pid}" for pid in rows}
    lines = summary.peak_lines(p, names, {"wait4": {}})
    assert [ln.split()[-1] for ln in lines[1:6]] == ["p107", "p106", "p105", "p104", "p103"]
    assert lines[6].strip() == "... 5 more processes (--json: all)"
    assert lines[7].split() == ["40.0", "MiB", "20.0", "MiB", "the", "tree:", "10", "processes",
                                "at", "once"]
    assert len(lines) == 8                                     # no maxrss: no kernel line
    small = summary.peak_lines(pk({200: rows[200], 201: rows[201]}, row(7 * MiB, 2 * MiB)),
                               names, {})
    assert small[1].split() == ["4.0", "MiB", ">=2.0", "MiB", "201", "p201"]
    assert small[2].split() == ["3.0", "MiB", "-", "200", "p200"]


def test_no_rss_says_residency_was_not_recorded():
    p = pk({7: row(5 * MiB, None), 8: row(6 * MiB, None)}, row(11 * MiB, None), residency=False)
    lines = summary.peak_lines(p, {7: "a", 8: "b"}, {"wait4": {"maxrss": MiB,
                                                              "memtrace_vmhwm": 0}})
    assert lines[1].split() == ["6.0", "MiB", "-", "8", "b"]
    assert lines[-1].strip() == "resident bytes not recorded (--no-rss)"
    assert not any("kernel" in ln for ln in lines)


def test_attached_processes_show_their_vmhwm_since_they_started():
    p = pk({7: row(5 * MiB, 3 * MiB, exact=False)}, row(5 * MiB, 3 * MiB, exact=False))
    kernel = {"per_pid": {"7": {"vmhwm": 9 * MiB, "vmpeak": 12 * MiB}}}
    lines = summary.peak_lines(p, {7: "attachme"}, kernel)
    assert lines[-1] == "  kernel    VmHWM 9.0 MiB of 7 attachme (since it started)"


def test_the_widest_figures_fit_80_columns():
    wide = 1023 * 1024 + 900                                   # "1023.9 KiB"
    rows = {4194304 + i: row(wide, wide, exact=False) for i in range(7)}
    p = pk(rows, row(wide, wide, exact=False))
    names = {pid: "a-long-name-15c" for pid in rows}
    for kernel in ({"wait4": {"maxrss": wide, "memtrace_vmhwm": wide}},
                   {"wait4": {"maxrss": wide, "memtrace_vmhwm": 1}},
                   {"per_pid": {str(p): {"vmhwm": wide} for p in rows}}):
        for ln in summary.peak_lines(p, names, kernel):
            assert len(ln) < 80, ln


def _spill_with_rows(path: Path) -> writer.Spill:
    """A spill holding one process's rows: an anon baseline of 8 pages, 3
    pages mapped, 2 faults each adding one, then the 3 pages unmapped."""
    e = np.zeros(3, layout.EVENT)
    e["ts"] = [10, 20, 50]
    e["pid"] = e["tid"] = 7
    e["comm"] = b"prog"
    e["kind"] = [C["MT_EV_RSS"], C["MT_EV_MMAP"], C["MT_EV_MUNMAP"]]
    e["aux"] = [1, -1, -1]
    e["flags"] = [C["MT_RSS_BASELINE"], 0, 0]
    e["args"][0, 0] = 8 * PAGE
    e["args"][1, 1] = 3 * PAGE
    e["ret"][1] = 0x7F0000000000
    e["args"][2, :2] = [0x7F0000000000, 3 * PAGE]
    f = np.zeros(2, layout.FAULT)
    f["ts"] = [30, 40]
    f["pid"] = f["tid"] = 7
    f["error_code"] = C["MT_PF_USER"] | C["MT_PF_WRITE"]
    f["rss_anon"] = 1
    spill = writer.Spill(path)
    comms = trace_rows.CommTable()
    spill.write([trace_rows.event_batch(e, comms), trace_rows.fault_batch(f, comms)])
    return spill


def test_metadata_json_and_text_take_the_peaks_from_the_spill(tmp_path):
    out = tmp_path / "t.parquet"
    res = capture.Result(start_ts=0, end_ts=10**9, counts={"fault": 2, "mmap": 1, "munmap": 1},
                         faults={7: [2, 0]}, processes={7: "prog"}, rows=5,
                         kernel_total={"minflt": 2, "majflt": 0, "source": "wait4",
                                       "maxrss": 40 * 1024, "memtrace_vmhwm": 30 * 1024})
    res.spill = _spill_with_rows(out)
    opts = capture.Options(command=["prog"], pids=[], follow=True, duration=None,
                           output=out, fmt="parquet")
    meta = summary.metadata(res, opts, ["--", "prog"])
    p = meta["peaks"]["per_pid"]["7"]
    # 8 + 2 pages resident: exact is False (file and shmem never seen)
    assert (p["rss"], p["rss_exact"], p["rss_ts"]) == (10 * PAGE, False, 40)
    assert (p["mapped"], p["mapped_ts"]) == (3 * PAGE, 20)
    d = json.loads(json.dumps(summary.as_dict(res, meta, out, 100)))
    assert d["peaks"] == json.loads(json.dumps(meta["peaks"]))
    text = summary.render(res, meta, out, 100)
    assert "  peak           mapped      resident  (the largest over time)\n" \
        "               12.0 KiB    >=40.0 KiB  7 prog\n" in text
    assert "ru_maxrss 40.0 KiB (wait4): the high-water mark of one process" in text
    size = res.spill.finish("parquet", meta)                   # the spill is still whole
    assert size > 0


def test_metadata_without_a_spill_has_no_peaks(tmp_path):
    res = capture.Result(processes={7: "prog"})
    opts = capture.Options(command=["prog"], pids=[], follow=True, duration=None,
                           output=tmp_path / "t.parquet", fmt="parquet")
    meta = summary.metadata(res, opts, ["--", "prog"])
    assert meta["peaks"] is None
    assert "peak" not in summary.render(res, meta, tmp_path / "t.parquet", 0)


def test_a_childs_exec_name_outlives_its_fork_read_after_it():
    """capture_drain.drain reads the exec ring before the event ring: a child that forked
    and exec'd between two drains keeps its exec's name, not its parent's."""
    res = capture.Result(processes={10: "sh", 11: "faults"})   # 11's exec: read first
    ev = np.zeros(2, layout.EVENT)
    ev["kind"] = C["MT_EV_FORK"]
    ev["pid"] = ev["tid"] = 10
    ev["aux"] = [11, 12]
    ev["comm"] = b"sh"
    ev["ret"] = -1
    live: set[int] = set()
    capture_counts.account_events(ev, res, live)
    assert res.processes == {10: "sh", 11: "faults", 12: "sh"} and live == {11, 12}
