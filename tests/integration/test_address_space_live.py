"""Issue 3 on real traces: the rebuilt address space against the kernel's
own /proc/PID/maps, for a test workload and for programs nobody here wrote,
and seed 000's malloc story through t.vmas and t.timeline."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

import tracer
from memtrace_helpers import REPO, exec_pid, marker_ts, memtrace_cmd, run_memtrace

pytestmark = pytest.mark.live


def _check_maps(t, pid: int, ts: int, kernel_text: str) -> None:
    diffs = t.model.compare(pid, ts, kernel_text.splitlines())
    assert diffs == [], "model vs kernel maps:\n" + "\n".join(diffs[:20])
    # "same paths": every file mapping of the model has its name
    ours = t.maps_at(pid, ts)
    unnamed = ours[(ours["inode"].fillna(0) != 0) & ~ours["path"].apply(lambda p: isinstance(p, str) and p != "")]
    assert unnamed.empty, f"file mappings without a path:\n{unnamed}"
    cov = t.model.coverage
    assert cov.fraction >= 0.999, cov


def test_mapsdump_matches_its_own_maps(workloads, tmp_path):
    dump = tmp_path / "maps.txt"
    _, t = run_memtrace(["--", workloads["mapsdump"], dump], tmp_path)
    pid = exec_pid(t.events, "mapsdump")
    _check_maps(t, pid, marker_ts(t.events, pid, 1), dump.read_text())


# x86_64 syscall numbers of waiting for input: read, poll, select, pselect6, ppoll
_WAITING = {"0", "7", "23", "270", "271"}


def _blocked_reading(pid: int) -> bool:
    """The process sleeps in a syscall that waits for input (/proc/PID/syscall
    names the syscall a sleeping task is in; stat says it sleeps)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
    return state == b"S" and bool(fields) and fields[0] in _WAITING


def _child_named(parent: int, name: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_bytes()
            except OSError:
                continue
            comm = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode()
            ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
            if ppid == parent and comm == name:
                return int(d.name)
        time.sleep(0.05)
    pytest.fail(f"no child {name} of {parent}")


@pytest.mark.parametrize("program,argv,feed", [
    # the Python interpreter importing modules (json, sqlite3, decimal, ssl: C
    # extensions and their libraries, mapped by ld.so at run time), then
    # waiting for a line on stdin
    ("python3", ["/usr/bin/python3", "-c",
                 "import json, sqlite3, decimal, ssl, sys; sys.stdin.readline()"], b""),
    # a compressor mid-stream: xz has read part of its input and waits for more
    ("xz", ["xz", "-T1", "-c"], os.urandom(1 << 20)),
    # a database shell waiting for its next command
    ("sqlite3", ["sqlite3", ":memory:"], b"create table t(x); insert into t values (1);\n"),
])
def test_real_program_paused_matches_kernel_maps(program, argv, feed, tmp_path):
    out = tmp_path / "trace.parquet"
    mt = subprocess.Popen(memtrace_cmd("-o", out, "--", *argv), cwd=REPO,
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    try:
        pid = _child_named(mt.pid, program)
        if feed:
            mt.stdin.write(feed)
            mt.stdin.flush()
        deadline = time.monotonic() + 60
        while not _blocked_reading(pid):
            assert time.monotonic() < deadline, f"{program} never blocked reading stdin"
            time.sleep(0.05)
        time.sleep(0.2)                       # settled: still blocked, nothing changes
        assert _blocked_reading(pid)
        ts = time.monotonic_ns()              # the trace's clock (CLOCK_MONOTONIC)
        kernel = Path(f"/proc/{pid}/maps").read_text()
        assert _blocked_reading(pid)
        mt.stdin.close()
        err = mt.stderr.read()
        mt.wait(timeout=120)
    finally:
        if mt.poll() is None:
            mt.kill()
    assert mt.returncode == 0, err.decode()
    t = tracer.load(out)
    _check_maps(t, pid, ts, kernel)


def test_seed000_through_the_frames(workloads, tmp_path):
    """30K, 40K, 100K grow the heap by brk; 200K is an mmap and its free the
    munmap; free(40K) changes nothing; free(100K) trims the heap. Step n of
    tests/workloads/seed000.c lies between markers n and n+1."""
    _, t = run_memtrace(["--", workloads["seed000"]], tmp_path)
    ev = t.events
    pid = exec_pid(ev, "seed000")
    tl = t.timeline(pid)
    mark = {n: marker_ts(ev, pid, n) for n in range(1, 10)}
    heap = {n: tl["heap"][tl.index <= mark[n]].iloc[-1] for n in mark}
    assert heap[2] > heap[1]                         # A = malloc(30K): brk
    assert heap[3] > heap[2]                         # B = malloc(40K): brk
    assert heap[4] == heap[3]                        # C = malloc(200K): not the heap
    assert heap[5] > heap[4]                         # D = malloc(100K): brk
    assert heap[5] >= (30 + 40 + 100) * 1024         # A, B and D are all in it
    assert heap[7] == heap[6]                        # free(C): munmap, heap unchanged
    assert heap[8] == heap[7]                        # free(B): nothing returned
    assert heap[9] < heap[8] - 128 * 1024            # free(D): trimmed
    vmas = t.vmas[t.vmas["pid"] == pid]
    c = vmas[(vmas["created_by"] == "mmap") & (vmas["size"] >= 200 * 1024)
             & (vmas["created"] > mark[3]) & (vmas["created"] < mark[4])]
    assert len(c) == 1, c
    assert c.iloc[0]["destroyed_by"] == "munmap"
    assert mark[6] < c.iloc[0]["destroyed"] < mark[7]
    heaps = vmas[vmas["kind"] == "heap"]
    assert (heaps["created_by"] == "brk").all() and len(heaps) >= 4   # one version per brk step
