"""`memtrace -a` (system-wide capture), live: each traced process's faults
against the kernel's own counts of it, and the filters.

The oracles (no tolerance but the one the kernel makes):
- tests/workloads/faultkids.c forks children one after another and prints
  each one's rusage from wait4 (its whole life, fork to exit). A child of a
  traced process is traced from its fork, so its captured faults equal
  ru_minflt exactly, except for a child that exec's: execve copies argv and
  the environment with get_user_pages, faults that raise no perf event
  (test_capture.py: GUP), 1 page for these command lines.
- A process running at start and sleeping or stopped while memtrace takes
  it in (baseline /proc/PID/stat read then) and while it ends (its zombie's
  counters, or read as tracing stops): captured == the difference, exactly.
  The busy neighbour is held with SIGSTOP at those two moments.
A fault BPF could not deliver is counted (lost_fault: on 6.x a ring
reservation can fail, rarely, with the ring far from full; with every
process of a busy machine traced it happened about once in 2 million
faults here): each figure may then be short by at most that count, never
more, which is what is checked. Other losses fail the test.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from memtrace_helpers import REPO, memtrace_cmd, n_faults, of_kind, wait_for_trace

pytestmark = pytest.mark.live

GUP_MAX = 4                 # execve's copy of argv/env: 1 page here
EXEC_HOWS = (2, 3)          # faultkids children that exec
LEFT_FLAGS = 1 | 16         # exit row: GROUP_DEAD | LEFT (bpf/memtrace.h)
KID_RE = re.compile(r"^KID i=(\d+) pid=(\d+) how=(\d+) minflt=(\d+) majflt=(\d+)$", re.M)


@dataclass
class Kid:
    i: int
    pid: int
    how: int
    minflt: int
    majflt: int


def _kids(stderr: str, n: int) -> list[Kid]:
    kids = [Kid(*map(int, m.groups())) for m in KID_RE.finditer(stderr)]
    assert len(kids) == n and f"KIDS n={n}" in stderr, f"faultkids did not finish:\n{stderr}"
    return kids


def _start(args: list, quiet: bool = True) -> subprocess.Popen:
    return subprocess.Popen(memtrace_cmd(*map(str, args), quiet=quiet), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(mt: subprocess.Popen, timeout: float = 120) -> str:
    try:
        err = mt.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        mt.kill()
        pytest.fail(f"memtrace did not exit within {timeout} s:\n{mt.communicate()[1]}")
    assert mt.returncode == 0, f"memtrace exited {mt.returncode}:\n{err}"
    assert "Traceback" not in err, err
    return err


def _stat(pid: int) -> tuple[str, int]:
    """(state, minflt) from /proc/PID/stat."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return f[0], int(f[7])


def _hold(proc: subprocess.Popen) -> None:
    """SIGSTOP, and wait until the process is stopped (no fault after that)."""
    proc.send_signal(signal.SIGSTOP)
    for _ in range(400):
        if _stat(proc.pid)[0] == "T":
            return
        time.sleep(0.01)
    pytest.fail(f"process {proc.pid} did not stop")


def _ready(proc: subprocess.Popen) -> None:
    line = proc.stderr.readline()
    assert line.startswith("READY"), f"expected READY, got {line!r}"


def _go(proc: subprocess.Popen) -> str:
    """Lets a waiting faultkids fork its children; its stderr to the end,
    without reaping it (its zombie keeps its counters for memtrace)."""
    proc.stdin.write("g")
    proc.stdin.close()
    return proc.stderr.read()


def _kill(*procs) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()


def _slack(meta: dict) -> int:
    """Faults lost (counted); nothing else may be."""
    c = meta["counters"]
    others = {k: c.get(k, 0) for k in ("lost_event", "lost_exec", "lost_rss", "map_full")}
    assert not any(others.values()), f"events lost: {others}"
    return c.get("lost_fault", 0)


def _check_kids(ev, kids: list[Kid], origin: dict, slack: int,
                left: set[int] = frozenset()) -> None:
    """Each child not in `left`: captured == its rusage (GUP for exec),
    short by at most `slack` faults lost."""
    for k in kids:
        assert origin.get(str(k.pid)) == "fork", (k, origin.get(str(k.pid)))
        if k.pid in left:
            continue
        minor = n_faults(ev, k.pid, major=False)
        major = n_faults(ev, k.pid, major=True)
        gup = GUP_MAX if k.how in EXEC_HOWS else 0
        assert 0 <= k.majflt - major <= slack, f"{k}: captured {major} major"
        assert 0 <= k.minflt - minor <= gup + slack, f"{k}: captured {minor} (slack {slack})"


def _same_as_kernel(meta: dict, pid: int, slack: int) -> dict:
    k = meta["kernel"]["per_pid"].get(str(pid))
    assert k is not None, f"no kernel count for {pid}: {meta['kernel']['per_pid']}"
    short = (k["kernel_minor"] - k["captured_minor"]) + (k["kernel_major"] - k["captured_major"])
    assert k["kernel_minor"] >= k["captured_minor"] and k["kernel_major"] >= k["captured_major"] \
        and short <= slack, (k, slack)
    return k


# ---- every process ----

def test_every_process_counts_equal_the_kernels(workloads, tmp_path):
    """-a: the children of a driver started after memtrace (traced from
    fork) equal their rusage; a busy neighbour and the driver, running at
    start, equal their /proc/PID/stat difference; memtrace is not traced;
    the summary's table fits 80 columns."""
    out = tmp_path / "all.parquet"
    nb = drv = mt = None
    try:
        nb = subprocess.Popen([workloads["neighbour"], "0", "1", "50000"],
                              stderr=subprocess.PIPE, text=True)
        _ready(nb)
        _hold(nb)
        drv = subprocess.Popen([workloads["faultkids"], "10", "64", "1"],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _ready(drv)
        mt = _start(["-a", "-d", 600, "-o", out], quiet=False)
        assert wait_for_trace(out, lambda ev: (ev["pid"] == drv.pid).any(), mt), \
            "the driver, running at start, is not in the trace"
        before = _stat(nb.pid)[1]
        nb.send_signal(signal.SIGCONT)
        kids = _kids(_go(drv), 10)
        deadline = time.monotonic() + 60
        while _stat(nb.pid)[1] - before < 10_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        _hold(nb)
        mt.send_signal(signal.SIGINT)
        err = _finish(mt)
    finally:
        _kill(mt, nb, drv)
    import tracer
    t = tracer.load(out)
    ev, meta = t.events, t.meta
    slack = _slack(meta)
    assert meta["interrupted"] == "SIGINT"
    pids = set(int(p) for p in ev["pid"].unique())
    assert mt.pid not in pids, "memtrace traced itself"
    origin = meta["system"]["origin"]
    _check_kids(ev, kids, origin, slack)
    assert origin[str(nb.pid)] == "start" and origin[str(drv.pid)] == "start"
    k = _same_as_kernel(meta, nb.pid, slack)
    assert k["kernel_minor"] >= 10_000, f"the neighbour was not busy: {k}"
    assert k["source"].startswith("/proc/PID/stat (as tracing stopped)"), k
    # held (stopped) as -a took it in and let it go: no fault between the
    # reads around either (summary.kernel_counts' windows)
    assert (k["start_window_minor"], k["end_window_minor"]) == (0, 0), k
    k = _same_as_kernel(meta, drv.pid, slack)
    assert k["source"].startswith("/proc/PID/stat (exited)"), k
    lines = err.splitlines()
    top = [i for i, ln in enumerate(lines) if ln.startswith("  by process")]
    assert top, err
    table = lines[top[0]:]
    table = table[:next(i for i, ln in enumerate(table) if ln.startswith("  trace "))]
    assert len(table) >= 5 and max(len(ln) for ln in table) <= 80, "\n".join(table)
    # the last two rows: every process; those with the kernel's count (its total)
    tot = meta["kernel"]["total"]
    assert table[-1].split()[-4:] == [f"{tot[c]:,}" for c in (
        "captured_minor", "captured_major", "kernel_minor", "kernel_major")], table[-1]
    minor = n_faults(ev, major=False)
    assert table[-2].split()[-4:-2] == [f"{minor:,}", f"{n_faults(ev) - minor:,}"]


# ---- --comm ----

def test_comm_filter_traces_only_matching_processes(workloads, tmp_path):
    """-a --comm faultkids -d: the driver and its children, nothing of a
    busy neighbour; a child that exec's another program or renames itself
    leaves the trace (exit row flagged left) and is not traced after."""
    out = tmp_path / "comm.parquet"
    nb = drv = mt = None
    try:
        nb = subprocess.Popen([workloads["neighbour"], "0", "1", "100000"],
                              stderr=subprocess.PIPE, text=True)
        _ready(nb)
        drv = subprocess.Popen([workloads["faultkids"], "10", "64", "1"],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _ready(drv)
        mt = _start(["-a", "--comm", "faultkids", "-d", 10, "-o", out])
        assert wait_for_trace(out, lambda ev: (ev["pid"] == drv.pid).any(), mt)
        before = _stat(nb.pid)[1]
        kids = _kids(_go(drv), 10)
        _finish(mt)
        # while memtrace traced (the children alone may take ~10 ms: 870
        # faults of the neighbour's 100,000 a second, once)
        busy = _stat(nb.pid)[1] - before
    finally:
        _kill(mt, nb, drv)
    import tracer
    t = tracer.load(out)
    ev, meta = t.events, t.meta
    slack = _slack(meta)
    assert meta["interrupted"] == "duration"
    exits = of_kind(ev, "exit")
    ended = set(int(p) for p in exits.loc[exits["flags"].astype(int) & 1 == 1, "pid"])
    missing = [k for k in kids if k.pid not in ended]
    assert not missing, f"-d 10 ended before these children exited: {missing}"
    assert busy > 1000, f"the neighbour made only {busy} faults meanwhile"
    pids = set(int(p) for p in ev["pid"].unique())
    assert pids == {drv.pid} | {k.pid for k in kids}, sorted(pids)
    assert set(ev["comm"].dropna().astype(str)) <= {"faultkids", "true"}
    leavers = {k.pid for k in kids if k.how in (3, 4)}
    assert set(meta["system"]["left"]) == leavers
    _check_kids(ev, kids, meta["system"]["origin"], slack, left=leavers)
    for k in kids:
        if k.pid not in leavers:
            continue
        rows = ev[ev["pid"] == k.pid].sort_values("ts", kind="stable")
        last = rows.iloc[-1]
        assert str(last["kind"]) == "exit" and int(last["flags"]) == LEFT_FLAGS, (k, last)
        untraced = k.minflt - n_faults(ev, k.pid)
        # 3: the exec of true and true itself; 4: the 64 pages after its rename
        assert untraced >= (64 if k.how == 4 else 1), (k, untraced)


# ---- --uid and --cgroup ----

def _cgroup_dir() -> Path:
    from tracer import _procfs
    mounts = _procfs.cgroup2_mounts()
    if not mounts:
        pytest.skip("no cgroup v2 hierarchy mounted")
    d = Path(mounts[0][1]) / f"memtrace-test-{os.getpid()}"
    try:
        d.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a cgroup in {mounts[0][1]}: {e.strerror}")
    return d


def test_uid_and_cgroup_filters_together(workloads, tmp_path):
    """-a --uid nobody --cgroup CG --exec-stop: of four drivers (nobody in
    CG running at start; nobody in CG started later, traced from its exec;
    root in CG; nobody outside CG) only the first two and their children.
    The one taken in at its exec, held there while its counters are read,
    equals the kernel's count exactly, as the one running at start does."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    cg = _cgroup_dir()
    bindir = Path(tempfile.mkdtemp(prefix="memtrace-sys-"))
    procs: list = []
    mt = None
    try:
        bindir.chmod(0o755)
        exe = bindir / "faultkids"
        shutil.copy(workloads["faultkids"], exe)
        exe.chmod(0o755)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

        def driver(in_cg: bool, as_nobody: bool, wait: bool) -> subprocess.Popen:
            argv = [*(nobody if as_nobody else []), str(exe), "5", "32", "1" if wait else "0"]
            if in_cg:   # the shell moves itself into the cgroup, then exec's
                argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cg), *argv]
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            return p

        first = driver(True, True, wait=True)
        _ready(first)
        mt = _start(["-a", "--uid", "nobody", "--cgroup", cg, "--exec-stop", "-o",
                     tmp_path / "f.parquet"])
        assert wait_for_trace(tmp_path / "f.parquet",
                              lambda ev: (ev["pid"] == first.pid).any(), mt)
        later, root_in, out_nobody = (driver(True, True, False), driver(True, False, False),
                                      driver(False, True, False))
        errs = {p.pid: p.communicate()[1] if p is not later else p.stderr.read()
                for p in (later, root_in, out_nobody)}
        errs[first.pid] = _go(first)
        mt.send_signal(signal.SIGTERM)
        _finish(mt)
    finally:
        _kill(mt, *procs)
        shutil.rmtree(bindir, ignore_errors=True)
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    import tracer
    t = tracer.load(tmp_path / "f.parquet")
    ev, meta = t.events, t.meta
    slack = _slack(meta)
    assert meta["interrupted"] == "SIGTERM"
    kids = {pid: _kids(err, 5) for pid, err in errs.items()}
    traced = {first.pid, later.pid} | {k.pid for p in (first.pid, later.pid) for k in kids[p]}
    pids = set(int(p) for p in ev["pid"].unique())
    assert pids == traced, (sorted(pids - traced), sorted(traced - pids))
    origin = meta["system"]["origin"]
    assert origin[str(first.pid)] == "start" and origin[str(later.pid)] == "exec"
    for p in (first.pid, later.pid):
        _check_kids(ev, kids[p], origin, slack)
        k = _same_as_kernel(meta, p, slack)
        assert k["source"].startswith("/proc/PID/stat (exited)"), k
