"""The end-of-run summary's peaks (tracer.peaks) against the kernel's own
figures: the workload peakrss reads its VmRSS and VmHWM at its peak and
after it gave the memory back; wait4's ru_maxrss comes with the summary."""
from __future__ import annotations

import json
import os
import re

import pytest

from memtrace_helpers import exec_pid, marker_ts, run_memtrace
from tracer import summary

pytestmark = pytest.mark.live

KiB, MiB, PAGE = 1024, 1 << 20, 4096


def _out(path) -> dict[str, int]:
    """peakrss's OUT: PEAK rss, hwm and END rss, hwm, in bytes."""
    text = path.read_text()
    m = re.fullmatch(r"PEAK rss=(\d+) hwm=(\d+)\nEND rss=(\d+) hwm=(\d+)\n", text)
    assert m, text
    return dict(zip(("peak_rss", "peak_hwm", "end_rss", "end_hwm"),
                    (int(v) * KiB for v in m.groups())))


def _slack() -> int:
    """How far the kernel's high-water mark may be from the exact RSS:
    mm->hiwater_rss is set from get_mm_rss(), the shared count of each of
    the three per-CPU counters (file, anon, shmem) without what each CPU
    holds back, less than percpu_counter_batch (max(32, 2 * CPUs)) pages."""
    n = os.cpu_count() or 1
    return 3 * (max(32, 2 * n) - 1) * n * PAGE


def _run(workloads, tmp_path, mib: int, *extra: str):
    out, js = tmp_path / "peak.txt", tmp_path / "summary.json"
    proc, t = run_memtrace([*extra, "--json", str(js), "--", workloads["peakrss"], str(out),
                            str(mib)], tmp_path, quiet=False)
    return proc, t, json.loads(js.read_text()), _out(out)


def test_peak_rss_is_the_vmrss_the_process_read_at_its_peak(workloads, tmp_path):
    proc, t, doc, k = _run(workloads, tmp_path, 64)
    assert t.meta.get("lost") == 0
    pid = exec_pid(t.events, "peakrss")
    p = doc["peaks"]["per_pid"][str(pid)]
    # exact: the kernel's counters, every change, against its own exact sum
    assert (p["rss"], p["rss_exact"]) == (k["peak_rss"], True), (p, k)
    assert k["peak_hwm"] == k["peak_rss"]          # at the peak the mark is the RSS itself
    assert p["rss_ts"] < marker_ts(t.events, pid, 1)
    assert doc["peaks"] == t.meta["peaks"]         # the trace's metadata holds the same
    # one process: the tree's figures are its own
    assert (doc["peaks"]["total"]["rss"], doc["peaks"]["total"]["mapped"]) == \
        (p["rss"], p["mapped"])
    # mapped: the 64 MiB and the program, as the address-space model has it
    tl = t.timeline(pid)
    assert p["mapped"] == int(tl["mapped"].max()) and p["mapped"] > 64 * MiB
    # after the munmap the kernel's mark is its own approximation of that peak
    assert k["end_rss"] < k["peak_rss"] - 60 * MiB
    assert abs(k["end_hwm"] - k["peak_rss"]) <= _slack(), (k, _slack())
    # the summary: the figures, and wait4's beside ours
    ours = f"ours (one process): {summary._bytes(p['rss'])}, {pid} peakrss"
    assert ours in proc.stderr, proc.stderr
    assert re.search(rf"^ +{re.escape(summary._bytes(p['mapped']))} +"
                     rf"{re.escape(summary._bytes(p['rss']))}  {pid} peakrss$",
                     proc.stderr, re.M), proc.stderr
    w = doc["kernel"]["wait4"]
    if w["maxrss"] > w["memtrace_vmhwm"]:
        assert w["maxrss"] == k["end_hwm"] and "high-water mark of one process" in proc.stderr
    else:   # memtrace's own memory at CMD's exec is larger than 64 MiB
        assert "own peak is not told" in proc.stderr, proc.stderr


def test_ru_maxrss_is_the_kernels_mark_once_above_memtraces_own(workloads, tmp_path):
    """ru_maxrss counts the image CMD exec'd from (memtrace's memory): a
    workload larger than memtrace's own peak shows the kernel's mark of the
    workload, the VmHWM it read after giving its memory back."""
    _, _, small, _ = _run(workloads, tmp_path, 4)
    own = small["kernel"]["wait4"]["memtrace_vmhwm"]
    mib = own * 5 // 4 // MiB + 64
    proc, t, doc, k = _run(workloads, tmp_path, mib)
    pid = exec_pid(t.events, "peakrss")
    p = doc["peaks"]["per_pid"][str(pid)]
    w = doc["kernel"]["wait4"]
    assert w["maxrss"] > w["memtrace_vmhwm"], (w, mib)
    assert (p["rss"], p["rss_exact"]) == (k["peak_rss"], True)
    assert w["maxrss"] == k["end_hwm"]             # the kernel's figure, twice
    assert abs(w["maxrss"] - p["rss"]) <= _slack(), (w, p, _slack())
    assert f"ru_maxrss {summary._bytes(w['maxrss'])} (wait4): the high-water mark" in proc.stderr


def test_without_rss_the_summary_says_residency_was_not_recorded(workloads, tmp_path):
    proc, t, doc, k = _run(workloads, tmp_path, 8, "--no-rss")
    pid = exec_pid(t.events, "peakrss")
    p = doc["peaks"]["per_pid"][str(pid)]
    assert p["rss"] is None and doc["peaks"]["residency"] is False
    assert p["mapped"] == int(t.timeline(pid)["mapped"].max()) and p["mapped"] > 8 * MiB
    assert "resident bytes not recorded (--no-rss)" in proc.stderr
    assert "ru_maxrss" not in proc.stderr
