"""`--faults=summary` (issue 4): the capture acceptance tests' checks on
rows that each stand for `count` faults, against the kernel's own counts.

In this mode BPF counts each fault at its entry (exceptions:page_fault_user
/kernel) in a hash keyed by process, 64 KiB block, access, major, time slot
and layout generation; the end of a minor fault is not followed, a major
fault is moved to a major row at its end. What the counts must satisfy is
the same as in test_capture.py: kernel minflt == captured minor +
pre_exec_fault + GUP faults (no perf event, no tracer sees them).

A row never spans a memory syscall of a traced process (the layout
generation changes), so splitting rows at a marker (an madvise) is exact.
"""
from __future__ import annotations

import numpy as np
import pytest

from memtrace_helpers import (
    EXTRA_MAJOR_MAX, MARK_RUSAGE, between, counter, exec_pid, kernel_counts, map_line, marker_ts, of_kind,
    pre_exec_faults, run_memtrace, rusage_line, unseen_faults,
)

pytestmark = pytest.mark.live

PAGE = 4096
GUP_MAX = 4
AFTER_RUSAGE_MAX = 12


def _faults(ev, pid: int, major: bool | None = None):
    f = ev[(ev["kind"] == "fault") & (ev["pid"] == pid)]
    if major is not None:
        f = f[f["major"].astype(bool) == major]
    return f


def _n(f) -> int:
    return int(f["count"].astype("int64").sum())


def _pages(f) -> set[int]:
    """Page addresses the rows' bitmaps name."""
    out: set[int] = set()
    for addr, bits in zip(f["addr"].astype("uint64").tolist(), f["pages"].astype(int).tolist()):
        block = addr & ~0xFFFF
        out.update(block + i * PAGE for i in range(16) if bits >> i & 1)
    return out


def _clean(meta: dict) -> None:
    assert meta.get("fault_mode") == "summary", meta.get("fault_mode")
    assert meta.get("lost") == 0, meta.get("counters")
    assert not counter(meta, "summary_full"), meta.get("counters")
    assert not counter(meta, "summary_late_major"), meta.get("counters")


def test_summary_counts_every_fault_of_every_page(workloads, tmp_path):
    mib, rounds = 64, 3
    proc, t = run_memtrace(["--faults=summary", "--rss", "exact", "--", workloads["faults"],
                            mib, rounds], tmp_path)
    ev, meta = t.events, t.meta
    _clean(meta)
    pid = exec_pid(ev, "faults")
    minor = _faults(ev, pid, major=False)
    # a major: never one of the rounds' pages (below), one the kernel
    # counted (test_capture.py's test_faults_match_kernel_counts)
    major = _faults(ev, pid, major=True)
    assert (minor["count"].astype(int) >= 1).all() and minor["last_ts"].notna().all()
    assert (minor["last_ts"].astype("uint64") >= minor["ts"].astype("uint64")).all()
    # rows aggregate: far fewer rows than faults
    assert len(minor) * 4 < _n(minor), (len(minor), _n(minor))
    # a first touch is runs of several faults, none left open: through the
    # summary_runs ring, not the hash (bpf/memtrace.bpf.c summary_flush)
    assert counter(meta, "summary_ring") * 2 > len(minor), (len(minor), meta["counters"])

    per_round = mib * 256
    maps = of_kind(ev, "mmap")
    maps = maps[(maps["pid"] == pid) & (maps["len"] == mib << 20)]
    unmaps = of_kind(ev, "munmap")
    unmaps = unmaps[(unmaps["pid"] == pid) & (unmaps["len"] == mib << 20)]
    assert len(maps) == rounds and len(unmaps) == rounds
    for r, (m, u) in enumerate(zip(maps.itertuples(), unmaps.itertuples())):
        start = int(m.ret)
        f = minor[(minor["ts"] > m.ts) & (minor["ts"] < u.ts)]
        a = f["addr"].astype("uint64")
        f = f[(a >= start) & (a < start + (mib << 20))]
        assert _n(f) == per_round, f"round {r}: {_n(f)} faults counted, {per_round} pages"
        assert _pages(f) == {start + i * PAGE for i in range(per_round)}, f"round {r}"
        am = major["addr"].astype("uint64")
        assert not ((am >= start) & (am < start + (mib << 20))).any(), f"round {r}: a major"
        ec = f["error_code"].astype(int)
        assert ((ec & 6) == 6).all(), f"round {r}: not all user write faults"
        assert int(f["rss_anon"].astype("int64").sum()) == per_round, f"round {r}: rss_anon"

    # the kernel's majors not captured are pre-exec or GUP faults
    # (unseen_faults), so its minor and major counts are held together
    ru = rusage_line(proc.stderr)
    pre = counter(meta, "pre_exec_fault")
    t_ru = marker_ts(ev, pid, MARK_RUSAGE)
    before = _n(minor[minor["ts"] < t_ru]) + _n(major[major["ts"] < t_ru])
    after = _n(minor) + _n(major) - before
    gup = ru.minflt + ru.majflt - pre - before
    assert 0 <= gup <= GUP_MAX, (ru, pre, before)
    assert after <= AFTER_RUSAGE_MAX, after
    k = kernel_counts(meta, pid)
    assert int(k["minflt"]) + int(k["majflt"]) - ru.minflt - ru.majflt == after
    unseen_major, unseen = unseen_faults(meta, int(k["minflt"]), int(k["majflt"]), _n(minor),
                                         _n(major))
    assert unseen == gup
    assert 0 <= unseen_major <= gup, (k, meta["counters"])   # uncaptured majors: GUP ones
    # the run's own count of what BPF counted equals the rows' sum
    assert counter(meta, "summary_faults") == _n(ev[ev["kind"] == "fault"])


def test_summary_major_faults(workloads, tmp_path, disk_tmp):
    data = disk_tmp / "filemajor.dat"
    mib = 32
    proc, t = run_memtrace(["--faults=summary", "--", workloads["filemajor"], data, mib],
                           tmp_path)
    assert "CACHED" not in proc.stderr, proc.stderr
    ev, meta = t.events, t.meta
    _clean(meta)
    pid = exec_pid(ev, "filemajor")
    addr, length = map_line(proc.stderr)
    pages = length // PAGE
    ru = rusage_line(proc.stderr)
    # the kernel may count a major fault or two beyond the file's pages
    extra = ru.majflt - pages
    assert 0 <= extra <= EXTRA_MAJOR_MAX, (ru, pages)
    major = _faults(ev, pid, major=True)
    a = major["addr"].astype("uint64")
    inside = major[(a >= addr) & (a < addr + length)]
    assert _n(inside) == pages and _n(major) - pages <= extra
    assert _pages(inside) == {addr + i * PAGE for i in range(pages)}
    # every one timed: each passed filemap_fault (summary_untimed 0)
    assert inside["latency"].notna().all() and (inside["latency"].astype(int) > 0).all()
    assert not counter(meta, "summary_untimed"), meta.get("counters")
    window = _faults(between(ev, pid, 1, 2), pid, major=True)
    wa = window["addr"].astype("uint64")
    assert _n(window[(wa >= addr) & (wa < addr + length)]) == pages
    k = kernel_counts(meta, pid)
    assert 0 <= int(k["majflt"]) - _n(major) <= extra, (k, _n(major))
    minor = _n(_faults(ev, pid, major=False))
    unseen = int(k["minflt"]) - pre_exec_faults(meta) - minor
    assert 0 <= unseen <= GUP_MAX, (k, minor)


def _assert_tree_counted_as_wait4(ev, meta):
    """The tree's faults (returned) against wait4's counts for it: what is
    not seen is GUP faults only, of at most two processes."""
    f = ev[ev["kind"] == "fault"]
    total = meta["kernel"]["wait4"]
    unseen_major, unseen = unseen_faults(meta, int(total["minflt"]), int(total["majflt"]),
                                         _n(f[~f["major"].astype(bool)]),
                                         _n(f[f["major"].astype(bool)]))
    assert unseen_major >= 0 and 0 <= unseen <= 2 * GUP_MAX, (total, meta["kernel"])
    return f


def test_summary_follows_forked_children(workloads, tmp_path):
    """A process tree: the counted faults of CMD and its child against
    wait4's counts for them both (the child is reaped by CMD, so its own
    /proc/PID/stat is gone before memtrace could read it), and CMD's
    against its own counters."""
    proc, t = run_memtrace(["--faults=summary", "--", workloads["cowfork"]], tmp_path)
    ev, meta = t.events, t.meta
    _clean(meta)
    pids = sorted(set(ev.loc[ev["kind"] == "fault", "pid"].astype(int)))
    assert len(pids) == 2, pids
    child = int(of_kind(ev, "fork")["child"].iloc[0])
    assert child in pids
    # the child's 8 copy-on-write faults: present|write|user, one row or more
    start, length = map_line(proc.stderr)
    cow = _faults(between(ev, child, 3, 4), child)
    a = cow["addr"].astype("uint64")
    cow = cow[(a >= start) & (a < start + length)]
    assert _n(cow) == 8 and (cow["error_code"].astype(int) == 7).all(), cow
    f = _assert_tree_counted_as_wait4(ev, meta)
    parent = exec_pid(ev, "cowfork")
    k = kernel_counts(meta, parent)
    assert k is not None
    got = _n(_faults(ev, parent, major=False))
    assert 0 <= int(k["minflt"]) - pre_exec_faults(meta) - got <= GUP_MAX, (k, got)


def _capture_faults(workloads, tmp_path):
    """`faults 16 2` captured in summary mode in this process (so that a
    test can stand in for capture.SummaryReader)."""
    from tracer import capture
    opts = capture.Options(command=[workloads["faults"], "16", "2"], pids=[], follow=True,
                           duration=None, output=tmp_path / "x.parquet", fmt="parquet",
                           fault_mode="summary")
    res = capture.run(opts, lambda s: None)
    res.spill.close()
    return res


def _assert_counted_as_the_kernel(res, reader) -> None:
    """The faults the reader drained: the BPF counter's, the process's, and
    the kernel's less the faults before exec and the GUP ones."""
    c = res.counters
    assert c["summary_faults"] == reader.faults, (c, reader.faults)
    (pid, (minor, major)), = res.faults.items()
    assert minor + major == reader.faults
    k = res.kernel_total
    # a captured major is one the kernel counted (the program may take
    # one: test_capture.py's test_faults_match_kernel_counts)
    unseen_major, unseen = unseen_faults({"counters": c}, int(k["minflt"]), int(k["majflt"]),
                                         minor, major)
    assert 0 <= unseen_major and 0 <= unseen <= GUP_MAX, (k, c, minor, major)


def test_summary_runs_left_on_the_cpus_are_read_at_the_end(workloads, tmp_path, monkeypatch):
    """BPF counts a CPU's consecutive faults of one key in a per-CPU run
    (summary_acc) and flushes the run (to the hash or the summary_runs
    ring) when a fault of another key comes on that CPU or the CPU switches
    tasks; at the end memtrace reads
    the runs still on the CPUs. Here BPF is told from the start not to flush
    at a switch (MT_CFG_SUMMARY_HOLD, which memtrace sets only for its last
    read), so the workload's last run is still on its CPU when the workload
    has exited: only the final read brings it in. The counts still equal
    the BPF counter and the kernel's."""
    from tracer import capture, fault_summary, preflight
    preflight.check_all(lambda s: None)
    readers: list = []
    found: list[int] = []

    class HeldFromStart(fault_summary.SummaryReader):
        def __init__(self, table, runs=None, hold=None, sleeping=None, ring=None) -> None:
            super().__init__(table, runs, hold, sleeping, ring)
            hold()
            readers.append(self)

        def pending(self):
            runs = super().pending()
            found.append(int(runs["v"]["count"].sum()))
            return runs

    monkeypatch.setattr(capture, "SummaryReader", HeldFromStart)
    res = _capture_faults(workloads, tmp_path)
    assert len(readers) == 1 and found, found
    assert found[-1] > 0, f"no fault left in a run at the end: {found}"
    c = res.counters
    assert not c["summary_full"] and not c["summary_late_major"], c
    _assert_counted_as_the_kernel(res, readers[0])


def test_summary_runs_the_full_map_cannot_take_come_through_the_ring(workloads, tmp_path,
                                                                     monkeypatch):
    """A load whose every fault is a new key (each memory syscall is a new
    layout generation: tests/workloads/churn.c) can fill the summary map
    faster than it is drained: BPF then sends the run to the summary_runs
    ring, a row of its own. Here the map is filled before the workload
    starts (entries of a slot no drain reaches, counting nothing), so every
    run that would go to the map (one flushed at a task switch while its
    fault is open) takes that way, beside the runs the ring takes anyway
    (several faults, none open; one fault of a key the map lacks): the
    faults counted still equal the kernel's, and none is lost."""
    from tracer import capture, fault_summary, layout, preflight
    preflight.check_all(lambda s: None)
    readers: list = []

    class FullFromStart(fault_summary.SummaryReader):
        def __init__(self, table, runs=None, hold=None, sleeping=None, ring=None) -> None:
            super().__init__(table, runs, hold, sleeping, ring)
            keys = np.zeros(table.d.max_entries, layout.SUMMARY_KEY)
            keys["slot"] = 0xFFFFFFFF
            keys["block"] = np.arange(len(keys))
            value = bytes(layout.SUMMARY.itemsize)
            for k in keys:
                table.update(k.tobytes(), value)
            readers.append(self)

    monkeypatch.setattr(capture, "SummaryReader", FullFromStart)
    res = _capture_faults(workloads, tmp_path)
    assert len(readers) == 1
    c = res.counters
    assert c["summary_ring"] > 0 and not c["summary_full"], c
    _assert_counted_as_the_kernel(res, readers[0])


def test_summary_counts_every_fault_of_a_syscall_heavy_load(workloads, tmp_path):
    """malloc churn (three actors, ~230k memory syscalls): nearly every
    fault is a key of its own, and its run of one fault goes through the
    summary_runs ring; the faults counted equal the kernel's for the tree,
    and the run loses nothing."""
    proc, t = run_memtrace(["--faults=summary", "--", workloads["churn"], "30000"], tmp_path)
    ev, meta = t.events, t.meta
    _clean(meta)
    f = _assert_tree_counted_as_wait4(ev, meta)
    assert meta["counters"]["summary_faults"] == _n(f), meta["counters"]
    assert counter(meta, "summary_ring") > _n(f) // 2, meta["counters"]
