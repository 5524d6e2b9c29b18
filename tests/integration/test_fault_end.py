"""How a fault's end is found (live: root + bcc).

By default memtrace does not follow a minor fault to its end (the
PAGE_FAULTS_MIN perf event costs more than every other hook together): BPF
sends a fault when its thread's next fault, syscall, signal or exit shows it
has ended, or when a clock tick finds the thread back in user mode, and at
the end of tracing user space reads the faults still open. A fault that
fails (SIGSEGV) is not counted by the kernel and must not be in the trace.
`--fault-latency` follows every end (latency, end time) as before.
"""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from memtrace_helpers import (
    kill_all,
    MARK_RUSAGE, REPO, between, counter, exec_pid, faults_of, ints, map_line, marker_ts,
    markers, memtrace_cmd, pre_exec_faults, run_memtrace, rusage_line, wait_for_trace,
)

pytestmark = pytest.mark.live

PAGE = 4096
GUP_MAX = 4


def _in(f, start: int, length: int):
    addr = f["addr"].astype("uint64")
    return f[(addr >= start) & (addr < start + length)]


def test_failed_faults_are_not_in_the_trace(workloads, tmp_path):
    pages = 64
    proc, t = run_memtrace(["--", workloads["segvpage"], pages], tmp_path)
    ev, meta = t.events, t.meta
    assert meta["lost"] == 0
    pid = exec_pid(ev, "segvpage")
    start, length = map_line(proc.stderr)
    f = _in(between(ev, pid, 1, 2), start, length)
    f = f[f["kind"] == "fault"]
    # each page: a fault that failed (SIGSEGV, not counted), then one that made it
    assert len(f) == pages, f"{len(f)} faults in the mapping, {pages} pages"
    assert sorted((a - start) // PAGE for a in ints(f["addr"])) == list(range(pages))
    assert (f["rss_anon"].astype(int) == 1).all()
    assert counter(meta, "fault_failed") == pages
    ru = rusage_line(proc.stderr)
    minor = faults_of(ev, pid, major=False)
    before = int((minor["ts"] < marker_ts(ev, pid, MARK_RUSAGE)).sum())
    gup = ru.minflt - pre_exec_faults(meta) - before
    assert 0 <= gup <= GUP_MAX, (ru.minflt, before, pre_exec_faults(meta))


@pytest.mark.parametrize("latency", [False, True], ids=["entry", "fault-latency"])
def test_both_ends_count_the_same_faults(workloads, tmp_path, latency):
    args = ["--fault-latency"] if latency else []
    proc, t = run_memtrace([*args, "--", workloads["faults"], 16, 2], tmp_path)
    ev, meta = t.events, t.meta
    assert meta["lost"] == 0
    assert meta["fault_end"] == ("followed" if latency else "entry")
    pid = exec_pid(ev, "faults")
    minor = faults_of(ev, pid, major=False)
    lat = minor["latency"]
    if latency:
        assert lat.notna().all() and (lat.astype(int) > 0).all()
    else:
        assert lat.isna().all()
    ru = rusage_line(proc.stderr)
    before = int((minor["ts"] < marker_ts(ev, pid, MARK_RUSAGE)).sum())
    gup = ru.minflt - pre_exec_faults(meta) - before
    assert 0 <= gup <= GUP_MAX, (ru.minflt, before, pre_exec_faults(meta))
    assert (minor["ts"].diff().dropna() >= 0).all(), "fault rows not in time order"
    # pages allocated inside faults: only with --alloc
    assert meta["alloc"] is False and minor["alloc"].isna().all()
    assert (minor["rss_anon"].astype(int) >= 0).all() and minor["rss_anon"].notna().all()


def test_last_faults_of_a_process_that_runs_on(workloads, tmp_path):
    """A process that faults and then computes (no syscall, no fault) while
    tracing stops: its last faults are in the trace all the same."""
    target = subprocess.Popen([workloads["attachme"], "spin"], stderr=subprocess.PIPE,
                              text=True)
    mt = None
    try:
        ready = target.stderr.readline()
        assert ready.startswith("READY"), ready
        out = tmp_path / "spin.parquet"
        mt = subprocess.Popen(memtrace_cmd("-o", out, "-p", target.pid), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not wait_for_trace(out, lambda ev: (markers(ev)["pid"] == target.pid).any(), mt):
            mt.send_signal(signal.SIGINT)
            pytest.fail(f"memtrace -p: not attached within 60 s: {mt.communicate(timeout=30)[1]}")
        target.send_signal(signal.SIGUSR1)
        start, length = map_line(target.stderr.readline())
        time.sleep(1.0)     # the pages written; it computes now
        assert target.poll() is None
        mt.send_signal(signal.SIGINT)
        _, err = mt.communicate(timeout=60)
        assert mt.returncode in (0, 130), err
    finally:
        kill_all(target, mt)
    import tracer
    t = tracer.load(out)
    assert t.meta["lost"] == 0
    f = _in(faults_of(t.events, target.pid), start, length)
    assert len(f) == length // PAGE, f"{len(f)} faults in the mapping, {length // PAGE} pages"
    assert sorted((a - start) // PAGE for a in ints(f["addr"])) == list(range(length // PAGE))
