"""Resident memory, exactly (issue 10): which faults made a page resident,
and t.rss from the kernel's own counters (kmem:rss_stat), checked against
/proc/self/status read by the workloads themselves at their markers."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from memtrace_helpers import (
    between, exec_pid, faults_of, ints, kinds, map_line, marker_ts, markers, of_kind,
    run_memtrace,
)
from tracer import rss

pytestmark = pytest.mark.live

PAGE = 4096
KiB = 1024
KERNEL_SPACE = 0xFFFF800000000000


def _describe(rows) -> str:
    cols = [c for c in ("ts", "pid", "tid", "kind", "addr", "ip", "error_code", "alloc", "rss_anon",
                        "rss_file", "rss_shmem", "member", "rss_size", "rss_delta", "cause")
            if c in rows]
    return rows[cols].to_string()


def _at(t, pid: int, ts: int) -> dict:
    v = rss.at(t.rss, pid, ts)
    return {k: (None if pd.isna(v[k]) else int(v[k])) for k in rss.KINDS}


def _steps(path) -> dict[int, dict[str, int]]:
    """rssstatus's OUT file: step -> {anon, file, shmem, swap} in bytes."""
    text = path.read_text()
    found = re.findall(r"^STEP (\d+) anon=(\d+) file=(\d+) shmem=(\d+) swap=(\d+)$", text, re.M)
    assert found, f"no STEP lines in {path}:\n{text}"
    return {int(n): {"anon": int(a) * KiB, "file": int(f) * KiB, "shmem": int(s) * KiB,
                     "swap": int(w) * KiB} for n, a, f, s, w in found}


def _no_gap(t) -> pd.DataFrame:
    c = rss.check(t.events)
    bad = c[(c["gap"] != 0) | (c["mismatches"] != 0)]
    assert len(bad) == 0, "resident changes that do not add up:\n" + c.to_string()
    return c


# ---- acceptance 1: seed003 ----

def test_seed003_reads_make_nothing_resident_writes_one_page_each(workloads, tmp_path):
    proc, t = run_memtrace(["--alloc", "--", workloads["seed003"]], tmp_path)
    ev = t.events
    assert t.meta.get("lost") == 0
    pid = exec_pid(ev, "seed003")
    addr, length = map_line(proc.stderr)

    reads = faults_of(between(ev, pid, 2, 3))
    writes = faults_of(between(ev, pid, 3, 4))
    assert len(reads) == 4 and len(writes) == 4, _describe(reads) + "\n" + _describe(writes)
    for col in ("rss_anon", "rss_file", "rss_shmem", "rss_swap"):
        assert ints(reads[col]) == [0] * 4, _describe(reads)
    assert ints(writes["rss_anon"]) == [1] * 4, _describe(writes)
    # the reads map the shared zero page: nothing allocated; each write one new page
    assert ints(reads["alloc"]) == [0] * 4 and ints(writes["alloc"]) == [1] * 4, \
        _describe(reads) + "\n" + _describe(writes)
    for col in ("rss_file", "rss_shmem", "rss_swap"):
        assert ints(writes[col]) == [0] * 4, _describe(writes)

    # t.rss: anon unchanged across the reads, +16 KiB across the writes
    m = {n: marker_ts(ev, pid, n) for n in (2, 3, 4)}
    a = {n: _at(t, pid, ts) for n, ts in m.items()}
    assert a[2]["anon"] is not None, "anon RSS unknown at marker 2"
    assert a[3] == a[2], (a[2], a[3])
    assert a[4]["anon"] - a[3]["anon"] == 16 * KiB and a[4]["file"] == a[3]["file"]
    # t.rss has one row per write, none for the reads
    r = t.rss[(t.rss["pid"] == pid) & (t.rss["ts"] > m[2]) & (t.rss["ts"] < m[4])]
    assert list(r.index) == list(writes.index)
    assert list(r["cause"].astype(str)) == ["fault"] * 4
    # the timeline has the same figures beside the virtual ones
    tl = t.timeline(pid)
    assert int(tl.loc[:m[4], "rss_anon"].iloc[-1]) == a[4]["anon"]
    assert int(tl.loc[:m[4], "mapped"].iloc[-1]) - int(tl.loc[:m[2], "mapped"].iloc[-1]) == 0
    _no_gap(t)


# ---- acceptance 2: /proc/self/status, exactly ----

def test_rss_equals_proc_status_at_every_step(workloads, tmp_path, disk_tmp):
    out = tmp_path / "status.txt"
    data = disk_tmp / "rssstatus.data"
    proc, t = run_memtrace(["--", workloads["rssstatus"], str(out), str(data)], tmp_path)
    ev = t.events
    assert t.meta.get("lost") == 0
    pid = exec_pid(ev, "rssstatus")
    kernel = _steps(out)
    assert sorted(kernel) == list(range(6))
    for n, want in kernel.items():
        for mark in (n, 100 + n):        # status is read between these two markers
            got = _at(t, pid, marker_ts(ev, pid, mark))
            assert got == want, f"step {n} (marker {mark}): t.rss {got} != /proc/self/status {want}"
        inside = t.rss[(t.rss["pid"] == pid) & (t.rss["ts"] > marker_ts(ev, pid, n))
                       & (t.rss["ts"] < marker_ts(ev, pid, 100 + n))]
        assert len(inside) == 0, "a resident change while reading status:\n" + inside.to_string()

    # the kernel's own steps (code faulted in on the way adds file pages)
    d = {n: {k: kernel[n][k] - kernel[n - 1][k] for k in rss.KINDS} for n in range(1, 6)}
    assert d[1]["anon"] >= 64 * PAGE and d[1]["shmem"] == 0
    assert d[2]["file"] >= 64 * PAGE and (d[2]["anon"], d[2]["shmem"]) == (0, 0)
    assert (d[3]["anon"], d[3]["shmem"]) == (0, 32 * PAGE)
    for n in (4, 5):
        assert (d[n]["anon"], d[n]["shmem"]) == (-32 * PAGE, -16 * PAGE), d[n]
    assert all(d[n]["swap"] == 0 for n in d)
    # the file was read from disk (its page cache dropped): major faults, and
    # its 64 pages were made resident by faults (a fault that moved CPU while
    # it waited for the disk has its change in an rss row just before it)
    step2 = between(ev, pid, 101, 2)
    assert len(faults_of(step2, major=True)) >= 1, _describe(step2)
    r2 = t.rss[(t.rss["pid"] == pid) & (t.rss["ts"] > marker_ts(ev, pid, 101))
               & (t.rss["ts"] < marker_ts(ev, pid, 2))]
    assert set(r2["cause"].astype(str)) == {"fault"}, r2.to_string()
    # the changes outside faults are the syscalls'
    for n, cause in ((4, "madvise"), (5, "munmap")):
        r = of_kind(between(ev, pid, 100 + n - 1, n), "rss")
        assert set(r["cause"].astype(str)) == {cause}, _describe(r)
        by = r.groupby(r["member"].astype(int))["rss_delta"].sum().to_dict()
        assert by == {0: -32 * PAGE, 1: -32 * PAGE, 3: -16 * PAGE}, _describe(r)
    # the peak (for the summary): at least the kernel's largest VmRSS seen
    pk = rss.peak(t.rss, pid)
    vmrss = max(v["anon"] + v["file"] + v["shmem"] for v in kernel.values())
    assert bool(pk.loc[pid, "exact"]) and int(pk.loc[pid, "peak"]) >= vmrss
    _no_gap(t)


def test_change_after_a_fault_that_never_completes(workloads, tmp_path, disk_tmp):
    out = tmp_path / "status.txt"
    data = disk_tmp / "rssstatus.data"
    proc, t = run_memtrace(["--", workloads["rssstatus"], str(out), str(data), "efault"],
                           tmp_path)
    ev = t.events
    pid = exec_pid(ev, "rssstatus")
    kernel = _steps(out)
    assert kernel[6]["anon"] - kernel[7]["anon"] == 16 * PAGE
    assert _at(t, pid, marker_ts(ev, pid, 6)) == kernel[6]
    r = of_kind(between(ev, pid, 106, 7), "rss")
    # the kernel may report the unmapping in more than one step (one per batch
    # of page table entries it zapped: -24576 then -40960 in one CI run)
    assert sum(ints(r["rss_delta"])) == -16 * PAGE and set(r["cause"].astype(str)) == {"munmap"}, \
        _describe(between(ev, pid, 106, 7))
    assert _at(t, pid, marker_ts(ev, pid, 7)) == kernel[7]
    _no_gap(t)


# ---- acceptance 3: copy-on-write after fork ----

def _cowfork(workloads, tmp_path):
    # --alloc: the pages allocated inside each fault (a copy is a new page)
    proc, t = run_memtrace(["--alloc", "--", workloads["cowfork"]], tmp_path)
    ev = t.events
    assert t.meta.get("lost") == 0
    parent = exec_pid(ev, "cowfork")
    child = int(re.search(r"^CHILD pid=(\d+)$", proc.stderr, re.M).group(1))
    forks = of_kind(ev, "fork")
    assert ints(forks[forks["pid"] == parent]["child"]) == [child]
    addr, length = map_line(proc.stderr)
    fmap = int(re.search(r" file=(0x[0-9a-f]+)", proc.stderr).group(1), 16)
    return proc, t, parent, child, addr, length, fmap


def test_cow_faults_in_the_child(workloads, tmp_path):
    """The child's writes to pages it shares with its parent are copy-on-write
    faults (present | write | user = 7); the kernel counted those pages in
    the child's RSS at fork (dup_mmap copies the parent's entries and adds
    them to the child's counters), so the copy replaces one counted
    anonymous page with another: rss_anon 0, as the child's own RssAnon
    (/proc/self/status, before and after) says; and nothing in the parent."""
    proc, t, parent, child, addr, length, fmap = _cowfork(workloads, tmp_path)
    ev = t.events
    writes = faults_of(between(ev, child, 3, 4))
    writes = writes[(writes["addr"] >= addr) & (writes["addr"] < addr + length)]
    assert len(writes) == length // PAGE, _describe(writes)
    assert all(ec & 7 == 7 for ec in ints(writes["error_code"])), _describe(writes)
    assert [a & ~(PAGE - 1) for a in ints(writes["addr"])] == \
        list(range(addr, addr + length, PAGE))
    m = re.search(r"^CHILD anon_before=(\d+) anon_after=(\d+)$", proc.stderr, re.M)
    assert m and m.group(1) == m.group(2), proc.stderr          # the kernel: no change
    for col in ("rss_anon", "rss_file", "rss_shmem", "rss_swap"):
        assert ints(writes[col]) == [0] * len(writes), _describe(writes)
    # but each copy is a new page, the child's own (kmem:mm_page_alloc inside the fault)
    assert ints(writes["alloc"]) == [1] * len(writes), _describe(writes)
    # no resident change in the parent while the child ran
    t0, t1 = marker_ts(ev, child, 3), marker_ts(ev, child, 5)
    pr = t.rss[(t.rss["pid"] == parent) & (t.rss["ts"] >= t0) & (t.rss["ts"] <= t1)]
    assert len(pr) == 0, pr.to_string()
    pe = faults_of(ev[(ev["pid"] == parent) & (ev["ts"] >= t0) & (ev["ts"] <= t1)])
    moved = pe[["rss_anon", "rss_file", "rss_shmem", "rss_swap"]].ne(0).any(axis=1)
    assert not moved.any(), _describe(pe)
    # the parent's own copies were never touched: its anon RSS is what it was
    assert _at(t, parent, marker_ts(ev, parent, 6))["anon"] == \
        _at(t, parent, marker_ts(ev, parent, 2))["anon"]
    # and the private file page: a read fault maps it, a COW fault replaces it
    step = faults_of(between(ev, child, 4, 5))
    f = step[(step["addr"] >= fmap) & (step["addr"] < fmap + PAGE)]
    assert len(f) == 2, _describe(step)
    assert ints(f["error_code"]) == [4, 7] and ints(f["rss_file"]) == [1, -1], _describe(f)
    # the copy is a new page; the read allocated none unless it read the file from disk
    assert ints(f["alloc"])[1] == 1 and (f["major"].iloc[0] or ints(f["alloc"])[0] == 0), _describe(f)
    _no_gap(t)


def test_cow_of_a_file_page_adds_one_anonymous_page_in_the_child(workloads, tmp_path):
    """The child's counters are known from its fork on (the BPF side follows
    the mm the parent's fork fills), so its copy of a private file page
    shows as the kernel counts it: anon +1, file -1."""
    proc, t, parent, child, addr, length, fmap = _cowfork(workloads, tmp_path)
    step = faults_of(between(t.events, child, 4, 5))
    f = step[(step["addr"] >= fmap) & (step["addr"] < fmap + PAGE)]
    assert ints(f["rss_anon"]) == [0, 1], _describe(f)


# ---- acceptance 4: nothing unexplained over a whole run ----

@pytest.mark.parametrize("name,args", [
    ("seed003", []), ("seed000", []), ("cowfork", []), ("faults", ["8", "4"]),
])
def test_whole_run_adds_up(workloads, tmp_path, name, args):
    """Per process, kind and counter lifetime: baseline + the faults' changes
    + the rss rows' changes == every value the kernel reports after it, to
    the last (rss.check: gap 0, no mismatch)."""
    proc, t = run_memtrace(["--", workloads[name], *args], tmp_path)
    assert t.meta.get("lost") == 0
    c = _no_gap(t)
    pids = set(int(p) for p in t.events["pid"].unique())
    assert set(c["pid"]) <= pids and len(c) > 0
    # every traced process that ran after its exec has anon and file baselines
    for pid in exec_pids_of(t):
        kinds_seen = set(c[c["pid"] == pid]["kind"])
        assert {"anon", "file"} <= kinds_seen, (pid, c.to_string())
    if name == "faults":
        # 8 MiB x 4 rounds written and unmapped: 8192 faults of +1, 4 munmaps of -2048
        pid = exec_pid(t.events, "faults")
        f = faults_of(t.events, pid)
        assert int((f["rss_anon"] == 1).sum()) >= 8192
        r = of_kind(t.events[t.events["pid"] == pid], "rss")
        mun = r[(r["cause"].astype(str) == "munmap") & (r["member"] == 1)]
        assert int(mun["rss_delta"].sum()) <= -8192 * PAGE


def exec_pids_of(t) -> list[int]:
    ex = of_kind(t.events, "exec")
    return sorted(set(int(p) for p in ex["pid"]))


def test_faults_inside_execve_of_a_traced_child(workloads, tmp_path):
    """The ELF loader's faults inside execve run on the new image's mm: their
    changes count from its known start (the argument pages), not from the
    old image's last values."""
    proc, t = run_memtrace(["--", "/bin/sh", "-c", f"{workloads['seed003']}; true"], tmp_path)
    ev = t.events
    child = exec_pid(ev, "seed003")
    x = int(of_kind(ev[ev["pid"] == child], "exec")["ts"].iloc[0])
    before = faults_of(ev[(ev["pid"] == child) & (ev["ts"] < x)])
    k = before[before["ip"].astype("uint64") >= KERNEL_SPACE]
    # a fault adds pages (a copy-on-write of a file page: file -1): never removes more
    assert (k["rss_anon"] >= 0).all() and (k["rss_file"] >= -1).all(), _describe(k)


def test_markers_of_rssstatus_are_complete(workloads, tmp_path, disk_tmp):
    """The workload's own contract: 12 markers, each once, in order."""
    out = tmp_path / "status.txt"
    proc, t = run_memtrace(["--", workloads["rssstatus"], str(out),
                            str(disk_tmp / "rssstatus2.data")], tmp_path)
    m = markers(t.events)
    assert list(m["step"]) == [s for n in range(6) for s in (n, 100 + n)]
    assert kinds(m).unique().tolist() == ["madvise"]
