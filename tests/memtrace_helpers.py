"""Helpers of memtrace's tests: running memtrace, compiling the workloads,
reading the workloads' output and markers back from a trace.

Import them as `from memtrace_helpers import ...` (tests/conftest.py puts
tests/ on sys.path). They live here rather than in conftest.py so that a
test never imports the wrong conftest (pytest loads every directory's
conftest.py under the same module name).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
WORKLOAD_SRC = TESTS / "workloads"

# The marker convention of tests/workloads/common.h: a marker is
# madvise(MARK_BASE + n * MARK_STEP, 0, MADV_NORMAL), a successful no-op.
MARK_BASE = 0x7E57000000
MARK_STEP = 4096
MARK_RUSAGE = 4095          # made just before getrusage() in print_rusage()
MARK_MAX = 4096

CFLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wall"]


# ---- live tests: root, bcc, BTF ----

@functools.lru_cache(maxsize=None)
def live_skip_reason() -> str | None:
    """Why live (BPF) tests cannot run here, or None: what keeps memtrace's
    own pytest plugin from tracing (root, bcc), and BTF."""
    from tracer.pytest_plugin import skip_reason
    why = skip_reason()
    if why is not None:
        return "live BPF test: " + why.removeprefix("memtrace: ")
    if not Path("/sys/kernel/btf").exists():
        return "live BPF test: the kernel has no BTF (/sys/kernel/btf missing)"
    return None


# ---- workloads ----

def compile_workloads(out_dir: Path) -> dict[str, str]:
    """Compiles every tests/workloads/*.c into out_dir: name -> path."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc) to build tests/workloads")
    built: dict[str, str] = {}
    for src in sorted(WORKLOAD_SRC.glob("*.c")):
        exe = Path(out_dir) / src.stem
        r = subprocess.run([gcc, *CFLAGS, "-o", str(exe), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"cannot compile {src.relative_to(REPO)}:\n{r.stderr}", pytrace=False)
        built[src.stem] = str(exe)
    return built


# ---- running memtrace ----

def memtrace_cmd(*args: str, quiet: bool = True) -> list[str]:
    """The command line of memtrace run from this checkout, with this Python."""
    return [sys.executable, "-m", "tracer", *(["-q"] if quiet else []), *map(str, args)]


def run_memtrace(args: list, tmp_path: Path, *, name: str = "trace.parquet",
                 quiet: bool = True, expect_status: int | None = 0,
                 timeout: float = 600, **kw):
    """Runs `python -m tracer [-q] -o tmp_path/name ARGS` (ARGS e.g.
    ["--", workload, ...]) from the repository root; returns
    (CompletedProcess with text stdout/stderr, loaded Trace).

    Fails the test, showing memtrace's stderr, if the exit status is not
    `expect_status` (None: any) or there is no trace file."""
    import tracer
    out = Path(tmp_path) / name
    cmd = memtrace_cmd("-o", str(out), *args, quiet=quiet)
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"memtrace did not finish in {timeout} s: {cmd}\n"
                    f"stderr:\n{_text(e.stderr)}", pytrace=False)
    if expect_status is not None and proc.returncode != expect_status:
        pytest.fail(f"memtrace exited {proc.returncode}, expected {expect_status}:"
                    f" {cmd}\nstderr:\n{proc.stderr}", pytrace=False)
    if not out.exists():
        pytest.fail(f"memtrace wrote no {out}: {cmd}\nstderr:\n{proc.stderr}", pytrace=False)
    return proc, tracer.load(out)


def wait_for_trace(out: Path, pred, proc, timeout: float = 60.0, every: float = 0.2) -> bool:
    """Polls the trace memtrace (`proc`) is writing to `out` (its `.partial`
    spill while it runs, docs/format.md) until pred(events) is true: True,
    or False if memtrace exited or `timeout` passed first. The spill is
    flushed about once a second, so this sees events with that delay."""
    import tracer
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if pred(tracer.load(out).events):
                return True
        except Exception:  # not there yet, or cut mid-write: try again
            pass
        time.sleep(every)
    return False


def procs(**match: int) -> dict[int, tuple[str, str]]:
    """pid -> (comm, state) of the processes whose /proc/PID/stat fields
    match (ppid=..., sid=...): only those a test started, never anyone
    else's (other tests may run the same programs at the same time)."""
    fields = {"ppid": 1, "sid": 3}          # after the state letter
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            data = Path(f"/proc/{d}/stat").read_bytes()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2:].split()
        if all(int(rest[fields[k]]) == v for k, v in match.items()):
            comm = data[data.find(b"(") + 1:data.rfind(b")")].decode(errors="replace")
            out[int(d)] = (comm, rest[0].decode())
    return out


def kill_session(sid: int) -> None:
    """SIGKILLs what is left of the session a test started (memtrace run
    with start_new_session: CMD and its children are in it, and stay in it
    once memtrace is gone)."""
    for _ in range(40):
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not procs(sid=sid):
            return
        time.sleep(0.05)


def kill_all(*popens) -> None:
    """SIGKILLs and reaps the subprocess.Popen objects given (None skipped)
    that still run: a test's clean-up of its target and its memtrace."""
    for p in popens:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


def ignored_signals(pid: int) -> set[int]:
    """The signals process `pid` ignores (SigIgn of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {n + 1 for n in range(64) if mask >> n & 1}
    return set()


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


# ---- reading traces ----

def kinds(events):
    """events' kind column as plain strings."""
    return events["kind"].astype(str)


def of_kind(events, kind: str):
    return events[kinds(events) == kind]


def markers(events):
    """The marker rows (madvise, len 0, addr MARK_BASE + n * 4096) of a
    trace's events, in time order, with a `step` column n."""
    ev = of_kind(events, "madvise")
    ev = ev[ev["len"].notna() & ev["addr"].notna()]
    ev = ev[ev["len"].astype("uint64") == 0]
    addr = ev["addr"].astype("uint64")
    sel = (addr >= MARK_BASE) & (addr < MARK_BASE + MARK_MAX * MARK_STEP) & \
          ((addr - MARK_BASE) % MARK_STEP == 0)
    out = ev[sel].copy()
    out["step"] = ((out["addr"].astype("uint64") - MARK_BASE) // MARK_STEP).astype("int64")
    return out.sort_values("ts", kind="stable")


def marker_ts(events, pid: int, step: int) -> int:
    """ts of the one marker `step` of process pid (fails if not exactly one)."""
    m = markers(events)
    m = m[(m["pid"] == pid) & (m["step"] == step)]
    assert len(m) == 1, f"pid {pid}: {len(m)} markers of step {step}, expected 1"
    return int(m["ts"].iloc[0])


def between(events, pid: int, first: int, second: int):
    """The rows of process pid strictly between its markers `first` and
    `second` (by ts)."""
    t0, t1 = marker_ts(events, pid, first), marker_ts(events, pid, second)
    ev = events[events["pid"] == pid]
    return ev[(ev["ts"] > t0) & (ev["ts"] < t1)]


def exec_pids(events, name: str) -> list[int]:
    """The pids of the processes that exec'd a file named `name` (a path
    ending in /name, or name itself)."""
    ex = of_kind(events, "exec")
    paths = ex["path"].astype(str)
    hits = ex[(paths == name) | paths.str.endswith("/" + name)]
    return sorted(set(int(p) for p in hits["pid"]))


def exec_pid(events, name: str) -> int:
    """The pid of the one process that exec'd `name`."""
    pids = exec_pids(events, name)
    assert len(pids) == 1, f"processes that exec'd {name}: {pids}"
    return pids[0]


def ints(series) -> list[int]:
    """A column's values as Python ints (nullable or not)."""
    return [int(v) for v in series]


def faults_of(events, pid: int | None = None, major: bool | None = None):
    f = of_kind(events, "fault")
    if pid is not None:
        f = f[f["pid"] == pid]
    if major is not None:
        f = f[f["major"].astype(bool) == major]
    return f


def n_faults(events, pid: int | None = None, major: bool | None = None) -> int:
    """The faults the rows stand for: one each, `count` each in a
    --faults=summary trace."""
    f = faults_of(events, pid, major)
    return int(f["count"].fillna(1).astype("int64").sum()) if "count" in f else len(f)


# ---- the workloads' stderr ----

@dataclass
class Rusage:
    minflt: int
    majflt: int


# Major faults the kernel may count beyond the pages of filemajor's file: a
# clean-clone CI run counted 16385 for 16384 (b3d92d8), untraced filemajor
# 64 here 3 runs in 40; a GUP fault counts in majflt with no perf event
# (mm_account_fault() in mm/memory.c). Every page of the file is still
# exactly one captured major fault.
EXTRA_MAJOR_MAX = 2


def rusage_line(stderr: str) -> Rusage:
    """The workload's 'RUSAGE minflt=N majflt=M' line (the last one)."""
    found = re.findall(r"^RUSAGE minflt=(\d+) majflt=(\d+)$", stderr, re.M)
    assert found, f"no RUSAGE line in the workload's stderr:\n{stderr}"
    return Rusage(int(found[-1][0]), int(found[-1][1]))


def map_line(stderr: str) -> tuple[int, int]:
    """(addr, len) from the workload's 'MAP addr=0x... len=N' line."""
    m = re.search(r"^MAP addr=(0x[0-9a-fA-F]+) len=(\d+)", stderr, re.M)
    assert m, f"no MAP line in the workload's stderr:\n{stderr}"
    return int(m.group(1), 16), int(m.group(2))


def region_lines(stderr: str) -> dict[str, tuple[int, int]]:
    """mapsdump's 'REGION name addr=0x... len=N' lines: name -> (addr, len)."""
    return {m.group(1): (int(m.group(2), 16), int(m.group(3)))
            for m in re.finditer(r"^REGION (\w+) addr=(0x[0-9a-fA-F]+) len=(\d+)$",
                                 stderr, re.M)}


# ---- metadata ----

def kernel_counts(meta: dict, pid: int) -> dict | None:
    """The kernel's own fault counts for pid from t.meta['kernel'], as a dict
    with at least 'minflt' and 'majflt' (plus whatever else the record has).
    Tolerant of the shape: records keyed by pid (int or str) directly or
    under a wrapper ('per_pid', ...), or a list of records with a 'pid';
    a record has minflt/majflt or kernel_minor/kernel_major. None if absent."""
    k = meta.get("kernel")
    names = (("minflt", "majflt"), ("kernel_minor", "kernel_major"))

    def norm(d):
        if not isinstance(d, dict):
            return None
        for mi, ma in names:
            if mi in d and ma in d:
                return {**d, "minflt": int(d[mi]), "majflt": int(d[ma])}
        return None

    def search(node, depth=0):
        if depth > 3:
            return None
        if isinstance(node, list):
            for d in node:
                if isinstance(d, dict) and str(d.get("pid")) == str(pid) and norm(d):
                    return norm(d)
            return None
        if isinstance(node, dict):
            for key in (pid, str(pid)):
                if key in node and norm(node[key]):
                    return norm(node[key])
            for v in node.values():
                if isinstance(v, (dict, list)):
                    r = search(v, depth + 1)
                    if r is not None:
                        return r
        return None

    return search(k) if isinstance(k, (dict, list)) else None


def pre_exec_faults(meta: dict) -> int | None:
    """Minor faults of the traced processes before their exec (counted, not
    recorded): counter pre_exec_fault less pre_exec_major (a page of
    memtrace's code the kernel had dropped from the page cache is a major
    fault of its child), or meta['kernel']['pre_exec_faults']."""
    n = counter(meta, "pre_exec_fault", "pre_exec_faults")
    if n is None and isinstance(meta.get("kernel"), dict):
        v = meta["kernel"].get("pre_exec_faults", meta["kernel"].get("pre_exec_fault"))
        n = None if v is None else int(v)
    return None if n is None else n - (counter(meta, "pre_exec_major") or 0)


def unseen_faults(meta: dict, kernel_minor: int, kernel_major: int,
                  minor: int, major: int) -> tuple[int, int]:
    """(majors the kernel counted beyond the captured and pre-exec ones, all
    faults it counted beyond them): what no tracer sees. A get_user_pages
    fault has no perf event and counts as major when it was retried
    (FAULT_FLAG_TRIED in mm_account_fault(), mm/memory.c), so the unseen
    are held to the sum, not to the minor count alone: a clean-clone CI run
    (c7852a8) counted 1 major where faults captured none. The first must be
    at least 0 (no captured major the kernel did not count); the second is
    the GUP faults, 0..GUP_MAX a process."""
    pre_all = counter(meta, "pre_exec_fault", "pre_exec_faults") or 0
    pre_major = counter(meta, "pre_exec_major") or 0
    return (kernel_major - major - pre_major,
            kernel_minor + kernel_major - pre_all - minor - major)


def counter(meta: dict, *names: str) -> int | None:
    """A BPF counter from t.meta['counters'] under the first of `names`
    present (the MT_CNT_* names of bpf/memtrace.h, lower case, without the
    prefix: fault_min, fault_maj, lost_fault, pre_exec_fault, ...)."""
    c = meta.get("counters") or {}
    for n in names:
        if n in c and c[n] is not None:
            return int(c[n])
    return None


def fs_type(path: Path) -> str:
    r = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "?"
