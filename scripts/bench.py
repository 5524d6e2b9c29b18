"""Side-by-side benchmark of memtrace and its peers on the test workloads.

Runs each workload untraced and under each tracer, alternating, several
times, and prints the median ratio of the workload's own time (fork to exit,
measured by scripts/fork_exit_timer.c inside the traced tree, so a tracer's
start-up is excluded) to the untraced run, with the spread (min..max), and
the whole-run ratio (start-up and teardown included) beside it; under it,
a 95% confidence interval of the paired ratio's median (`median_ci`), and
each tracer's own CPU time and peak resident memory (its process's, not
its children's: /proc/PID/stat at its exit, VmHWM every 50 ms), medians.

    sudo scripts/bench [--reps 3] [--workloads faults,churn] [--tracers memtrace,perf]

`--startup` measures memtrace's own start and end instead: from launching
`memtrace -- CMD` to CMD's first instruction (CMD prints its CLOCK_MONOTONIC
time on entering main), and from CMD's last instruction to memtrace's exit
(its stderr closed and its status reaped), with the BPF cache off (compile at
every start), cold (an empty cache) and warm, and the phases memtrace
records in the trace (`startup_s`); then the same end for large traces
(TEARDOWN_WORKLOADS: `faults 256 8`, `churn 100000`, run inside CMD, which
prints its time once the workload has exited). `--root DIR` runs the memtrace of another
checkout (e.g. a `git worktree` of an older commit) with this venv.

    sudo scripts/bench --startup [--reps 5] [--root DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ROOT / "tests" / "workloads"
PY = str(ROOT / ".venv" / "bin" / "python")
MEMORY_SYSCALLS = "brk,mmap,munmap,mremap,mprotect,madvise"


def build(tmp: Path) -> dict[str, str]:
    exes = {}
    for src in [ROOT / "scripts" / "fork_exit_timer.c", *sorted(WORKLOADS.glob("*.c"))]:
        exe = tmp / src.stem
        subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-pthread",
                        "-o", str(exe), str(src)], check=True)
        exes[src.stem] = str(exe)
    return exes


def workloads(exes: dict[str, str], tmp: Path) -> dict[str, list[str]]:
    w = {"faults": [exes["faults"]]}
    if "churn" in exes:
        w["churn"] = [exes["churn"], "100000"]   # ~230k memory syscalls (issue 4: >= 100k)
    if "filemajor" in exes:
        w["filemajor"] = [exes["filemajor"], str(tmp / "filemajor.dat")]
    w["python"] = [sys.executable, "-c",
                   "import json, sqlite3, decimal, email.parser; "
                   "db = sqlite3.connect(':memory:'); "
                   "db.execute('create table t(x)'); "
                   "db.executemany('insert into t values (?)', [(json.dumps({'i': i}),) for i in range(200000)]); "
                   "print(db.execute('select count(*) from t').fetchone())"]
    return w


def tracers(tmp: Path, variants: bool = True) -> dict[str, list[str] | None]:
    """The tracers by name; `variants`: also those for a question about one
    mode (bench_ab.py names them), which scripts/bench runs only when named."""
    t: dict[str, list[str] | None] = {
        "untraced": [],
        "memtrace": [PY, "-m", "tracer", "-q", "-o", str(tmp / "bench.parquet"), "--"],
        # the whole machine traced (summary mode, -a's default), the workload in it
        "memtrace-a": [PY, "-m", "tracer", "-q", "-o", str(tmp / "bench-all.parquet"), ALL],
        "memtrace-summary": [PY, "-m", "tracer", "-q", "--faults=summary", "-o",
                             str(tmp / "bench-summary.parquet"), "--"],
        "memtrace-summary-norss": [PY, "-m", "tracer", "-q", "--faults=summary", "--no-rss",
                                   "-o", str(tmp / "bench-summary-norss.parquet"), "--"],
        # summary mode with every residency change (kmem:rss_stat), not sampled
        "memtrace-summary-exact": [PY, "-m", "tracer", "-q", "--faults=summary", "--rss",
                                   "exact", "-o", str(tmp / "bench-summary-exact.parquet"), "--"],
        # minor faults followed to their end (PAGE_FAULTS_MIN: latency), the
        # default before the lazy end
        "memtrace-latency": [PY, "-m", "tracer", "-q", "--fault-latency", "-o",
                             str(tmp / "bench-latency.parquet"), "--"],
        # every fault, residency read from /proc at an interval (no kmem:rss_stat)
        "memtrace-sampled": [PY, "-m", "tracer", "-q", "--rss", "sampled", "-o",
                             str(tmp / "bench-sampled.parquet"), "--"],
        # residency off (issue 10: the overhead with and without it)
        "memtrace-norss": [PY, "-m", "tracer", "-q", "--no-rss", "-o",
                           str(tmp / "bench-norss.parquet"), "--"],
    }
    base = os.environ.get("MEMTRACE_BASE")
    if base:   # another checkout's memtrace (A/B of two commits: bench_ab.py memtrace-base memtrace)
        # -P: `python -m` puts the working directory first on sys.path, so
        # run from this checkout it imported this checkout's tracer and
        # PYTHONPATH's never: an A/B of two commits measured one against
        # itself (docs/benchmarks.md, thirteenth session)
        other = ["env", f"PYTHONPATH={base}", PY, "-P", "-m", "tracer", "-q"]
        t["memtrace-base"] = [*other, "-o", str(tmp / "bench-base.parquet"), "--"]
        t["memtrace-base-summary"] = [*other, "--faults=summary", "-o",
                                      str(tmp / "bench-base-summary.parquet"), "--"]
        t["memtrace-base-sampled"] = [*other, "--rss", "sampled", "-o",
                                      str(tmp / "bench-base-sampled.parquet"), "--"]
        t["memtrace-base-a"] = [*other, "-o", str(tmp / "bench-base-all.parquet"), ALL]
    if variants:
        t.update({
            # -a without its residency sampling (/proc/PID/status of every process)
            "memtrace-a-norss": [PY, "-m", "tracer", "-q", "--rss", "off", "-o",
                                 str(tmp / "bench-all-norss.parquet"), ALL],
            # -a tracing only the `faults` workload, and -a holding every exec as
            # summary mode holds its command's (what -a costs beyond summary mode)
            "memtrace-a-comm": [PY, "-m", "tracer", "-q", "--comm", "faults", "-o",
                                str(tmp / "bench-all-comm.parquet"), ALL],
            "memtrace-a-hold": [PY, "-m", "tracer", "-q", "--exec-stop", "-o",
                                str(tmp / "bench-all-hold.parquet"), ALL],
            # summary mode whose command starts 4 s after memtrace, as -a's workload does
            "memtrace-summary-late": [PY, "-m", "tracer", "-q", "--faults=summary", "-o",
                                      str(tmp / "bench-summary-late.parquet"), "--",
                                      "sh", "-c", 'sleep 4; exec "$0" "$@"'],
            # summary mode with its execs not held (as -a's are not by default)
            "memtrace-summary-nohold": [PY, "-m", "tracer", "-q", "--faults=summary",
                                        "--no-exec-stop", "-o",
                                        str(tmp / "bench-summary-nohold.parquet"), "--"],
            # summary mode attached (-p) to a shell bench started, which then
            # execs the workload: started as -a's and the untraced run's are
            "memtrace-summary-p": [PY, "-m", "tracer", "-q", "--faults=summary", "-o",
                                   str(tmp / "bench-summary-p.parquet"), PID],
        })
    if shutil.which("perf"):
        t["perf"] = ["perf", "trace", "--pf=all", "-e", MEMORY_SYSCALLS,
                     "-o", str(tmp / "perf.txt"), "--"]
    if shutil.which("strace"):
        t["strace"] = ["strace", "-f", "-qq", "-e", "trace=%memory", "-o", str(tmp / "strace.txt")]
    return t


ALL = "-a"   # a tracers() entry: memtrace -a runs in the background around the workload
PID = "-p"   # a tracers() entry: memtrace -p attaches to the workload's shell before its exec


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """A confidence interval for the median of `xs`, free of any assumed
    distribution: the order statistics k and n-k+1 (1-based), k the largest
    with P(Binomial(n, 1/2) < k) <= (1-level)/2 (so at least `level`
    covered). Fewer than 6 values: their range (no such k)."""
    xs = sorted(xs)
    n = len(xs)
    tail, k = 0.0, 0
    while k < n // 2:
        p = math.comb(n, k) / 2 ** n       # P(B = k)
        if tail + p > (1 - level) / 2:
            break
        tail += p
        k += 1
    if k == 0:
        return xs[0], xs[-1]
    return xs[k - 1], xs[n - k]


def _tracer_on_path() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# Once the run before's programs are gone, what it left still weighs for a
# while (what exactly, not found): `faults 256 8` untraced, started as a
# memtrace exits, took 1.036x (1.020..1.044, 20 pairs) its time on a quiet
# machine, and 0.999x (0.993..1.010) started 3 s later (docs/benchmarks.md,
# thirteenth session). bench_ab.py --settle sets it.
SETTLE_S = 3.0


def wait_released(timeout: float = 15.0) -> None:
    """Until no memtrace program is attached, then SETTLE_S more: memtrace
    leaves the kernel's slow detach to a helper (tracer/bpf_load.release),
    so the programs of the run before stay on the hooks for up to a second
    or more after it exits, and would weigh on the next run (an untraced
    one too, whose workload starts at once where a traced one's starts
    after memtrace's own start)."""
    _tracer_on_path()
    from tracer.bpf_syscall import loaded_prog_names
    deadline = time.monotonic() + timeout
    while "page_fault_user" in loaded_prog_names() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(SETTLE_S)


def run_once(prefix: list[str], timer: str, cmd: list[str], wait: bool = True) -> dict:
    if wait:
        wait_released()
    if prefix[-1:] == [ALL]:
        return _run_under_system_wide(prefix[:-1], timer, cmd)
    if prefix[-1:] == [PID]:
        return _run_attached(prefix[:-1], timer, cmd)
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([*prefix, timer, *cmd], stdout=subprocess.DEVNULL, stderr=err,
                             text=True)
        if prefix:
            status, own_cpu, peak = _watch(p.pid)
            p.returncode = status      # reaped by _watch
        else:        # untraced: nothing read beside it
            status = p.wait()
        wall = time.monotonic() - t0
        err.seek(0)
        stderr = err.read()
    r = {**_timed(stderr, status, f"{' '.join(prefix[:3])} {cmd[0]}"), "wall": wall}
    if prefix:
        r["tracer_cpu"], r["tracer_peak"] = own_cpu, peak
    return r


def _timed(stderr: str, status: int, what: str) -> dict:
    """fork_exit_timer's figures from its stderr: the workload's fork-to-exit
    time and CPU time, in seconds."""
    m = re.search(r"FORK_EXIT_NS (\d+)", stderr)
    cpu = re.search(r"WORKLOAD_CPU_NS (\d+)", stderr)
    if status or not m or not cpu:
        raise RuntimeError(f"{what}: exit {status}: {stderr[-500:]}")
    return {"workload": int(m.group(1)) / 1e9, "cpu": int(cpu.group(1)) / 1e9}


def _watch(pid: int, timeout: float | None = None) -> tuple[int, float, int]:
    """Wait for child `pid`: (exit code, its own CPU seconds, its own peak
    resident bytes). The CPU time is read from /proc/PID/stat once it has
    exited and before it is reaped (waitid WNOWAIT: the zombie's utime +
    stime, all its threads and not its children; wait4's rusage counts the
    children a tracer reaped, and perf trace's holds none of its workload's:
    cutime 0 at its exit here). The peak is its VmHWM, read every 50 ms
    while it runs (the mm is gone at exit): a peak in its last 50 ms may be
    missed. After `timeout` s it is killed."""
    _tracer_on_path()
    from tracer import _procfs, errors
    peak = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
        if deadline is not None and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"pid {pid} still running after {timeout} s: killed")
        try:
            status = _procfs.read_rss_status(pid)
        except errors.NoSuchProcess:
            status = None
        if status is not None:
            peak = max(peak, status.hwm)
        time.sleep(0.05)
    stat = _procfs.read_stat(pid)                 # the zombie, not reaped yet
    cpu = (stat.utime + stat.stime) / os.sysconf("SC_CLK_TCK")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), cpu, peak


@contextlib.contextmanager
def _in_background(argv: list[str], what: str, interrupt: bool):
    """memtrace (`argv`) started 4 s before the body runs (BPF loaded, the
    running processes scanned) and waited for after it, sent SIGINT first
    if `interrupt`: yields a dict that then holds its CPU time and peak
    (`_watch`: tracer_cpu, tracer_peak). An exit other than 0 is an error."""
    own: dict = {}
    with tempfile.TemporaryFile("w+") as err:
        bg = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True)
        time.sleep(4)
        try:
            if bg.poll() is not None:
                err.seek(0)
                raise RuntimeError(f"{what} exited {bg.returncode}: {err.read()[-500:]}")
            yield own
        finally:
            if bg.returncode is None:
                if interrupt:
                    bg.send_signal(signal.SIGINT)
                bg.returncode, own["tracer_cpu"], own["tracer_peak"] = _watch(bg.pid, timeout=120)
        if bg.returncode:
            err.seek(0)
            raise RuntimeError(f"{what} exited {bg.returncode}: {err.read()[-500:]}")


def _run_under_system_wide(memtrace: list[str], timer: str, cmd: list[str]) -> dict:
    """The workload untraced by name, while `memtrace -a` traces the whole
    machine (the workload included) in the background. The tracer's CPU is
    of its whole run (start, the machine's other processes, the end)."""
    with _in_background([*memtrace, "-a", "-d", "600"], "memtrace -a", interrupt=True) as own:
        r = run_once([], timer, cmd, wait=False)
    return {**r, **own}


def _run_attached(memtrace: list[str], timer: str, cmd: list[str]) -> dict:
    """The workload started by bench, as the untraced run's is, but from a
    shell that waits on a FIFO: `memtrace -p` attaches to the shell, and
    4 s later (as -a's workload starts) the shell execs the timer."""
    with tempfile.TemporaryDirectory(prefix="memtrace-bench-p-") as d:
        fifo = os.path.join(d, "go")
        os.mkfifo(fifo)
        shell = subprocess.Popen(["sh", "-c", 'read x < "$0"; exec "$@"', fifo, timer, *cmd],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        def end_shell() -> None:
            if shell.poll() is None:
                shell.kill()
                shell.wait()
        try:
            with _in_background([*memtrace, "-p", str(shell.pid)], "memtrace -p",
                                interrupt=False) as own:
                try:
                    with open(fifo, "w") as f:
                        f.write("go\n")
                    stderr = shell.communicate()[1]
                finally:   # before memtrace -p is waited for: it ends with the shell
                    end_shell()
        finally:           # memtrace -p failed to start: the shell waits on the FIFO
            end_shell()
    # wall: not measured (the workload's start waits on the FIFO)
    return {**_timed(stderr, shell.returncode, f"memtrace -p {cmd[0]}"), "wall": float("nan"),
            **own}


def trace_stats(path: Path) -> dict:
    _tracer_on_path()
    import tracer
    t = tracer.load(path)
    k = t.meta["kernel"]["total"]
    fault = (t.events["kind"] == "fault").to_numpy(bool)
    count = t.events["count"].fillna(1) if "count" in t.events else 1
    return {"faults": int((fault * count).sum()), "lost": t.meta["lost"],
            "kernel_minor": k["kernel_minor"], "kernel_major": k["kernel_major"],
            "unseen_minor": k["unseen_minor"], "bytes_per_row": path.stat().st_size / max(len(t.events), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workloads", default="")
    ap.add_argument("--tracers", default="")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--startup", action="store_true",
                    help="measure memtrace's start-up and teardown instead")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="with --startup: the checkout whose memtrace runs")
    args = ap.parse_args()
    if args.startup:
        return startup_main(args)
    with tempfile.TemporaryDirectory(prefix="memtrace-bench-") as d:
        tmp = Path(d)
        exes = build(tmp)
        wl = workloads(exes, tmp)
        tr = tracers(tmp, variants=bool(args.tracers))
        if args.workloads:
            wl = {k: v for k, v in wl.items() if k in args.workloads.split(",")}
        if args.tracers:
            tr = {k: v for k, v in tr.items() if k == "untraced" or k in args.tracers.split(",")}
        results = {}
        for wname, cmd in wl.items():
            times: dict[str, list[dict]] = {t: [] for t in tr}
            stats = None
            for rep in range(args.reps):
                for tname, prefix in tr.items():   # alternate: one of each per repetition
                    times[tname].append(run_once(prefix, exes["fork_exit_timer"], cmd))
                    if tname == "memtrace" and stats is None:
                        stats = trace_stats(tmp / "bench.parquet")
            base = statistics.median(x["workload"] for x in times["untraced"])
            base_wall = statistics.median(x["wall"] for x in times["untraced"])
            base_cpu = statistics.median(x["cpu"] for x in times["untraced"])
            row = {"untraced_s": base, "memtrace_trace": stats}
            print(f"\n{wname}: untraced {base:.3f} s (median of {args.reps})")
            for tname in tr:
                if tname == "untraced":
                    continue
                ratios = [x["workload"] / base for x in times[tname]]
                # each run against the untraced run of its own repetition:
                # the machine's drift between repetitions cancels out
                paired = [x["workload"] / u["workload"]
                          for x, u in zip(times[tname], times["untraced"])]
                walls = [x["wall"] / base_wall for x in times[tname]]
                cpus = [x["cpu"] / base_cpu for x in times[tname]]
                own_cpu = statistics.median(x["tracer_cpu"] for x in times[tname])
                own_peak = statistics.median(x["tracer_peak"] for x in times[tname])
                row[tname] = {"ratio": statistics.median(ratios), "min": min(ratios),
                              "max": max(ratios), "whole_run_ratio": statistics.median(walls),
                              "cpu_ratio": statistics.median(cpus),
                              "paired_ratio": statistics.median(paired),
                              "paired_ci95": median_ci(paired),
                              "tracer_cpu_s": own_cpu, "tracer_peak_bytes": own_peak}
                print(f"  {tname:<14} {statistics.median(ratios):5.2f}x  "
                      f"({min(ratios):.2f}..{max(ratios):.2f})  cpu "
                      f"{statistics.median(cpus):5.2f}x  paired {statistics.median(paired):5.2f}x  "
                      f"whole run {statistics.median(walls):5.2f}x")
                lo, hi = median_ci(paired)
                print(f"  {'':<14} paired 95% CI {lo:.2f}..{hi:.2f}; its own: {own_cpu:.2f} s CPU, "
                      f"peak {own_peak / 2**20:.0f} MiB"
                      + (" (its whole run)" if tr[tname][-1:] == [ALL] else ""))
            if stats:
                print(f"  memtrace captured {stats['faults']:,} faults, kernel "
                      f"{stats['kernel_minor']:,} minor + {stats['kernel_major']:,} major, "
                      f"lost {stats['lost']}, {stats['bytes_per_row']:.1f} B/row on disk")
            results[wname] = row
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    return 0


STARTUP_MARK = r"""
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static long long now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}
/* startup_mark [CMD ARGS]: CMD, if given, runs (and is waited for) between
 * the two marks: LAST_NS is then printed after the last traced process but
 * this one has exited (the teardown of a large trace) */
int main(int argc, char **argv)
{
	long long first = now();
	int status = 0;
	fprintf(stderr, "FIRST_NS %lld\n", first);
	if (argc > 1) {
		pid_t pid = fork();
		if (pid == 0) {
			execv(argv[1], argv + 1);
			_exit(127);
		}
		waitpid(pid, &status, 0);
	}
	fprintf(stderr, "LAST_NS %lld\n", now());
	return status != 0;
}
"""

# --startup's large traces: (name, workload and its arguments): about 525k
# and 460k rows, most of them written after the last flush but one
TEARDOWN_WORKLOADS = (("faults 256 8", ["faults", "256", "8"]),
                      ("churn 100000", ["churn", "100000"]))


def startup_once(root: Path, mark: str, out: Path, env: dict,
                 workload: list[str] | None = None) -> dict:
    cmd = [PY, "-m", "tracer", "-q", "-o", str(out), "--", mark, *(workload or [])]
    t0 = time.monotonic_ns()
    p = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    _, err = p.communicate()
    t1 = time.monotonic_ns()
    first = re.search(r"FIRST_NS (\d+)", err)
    last = re.search(r"LAST_NS (\d+)", err)
    if p.returncode or not first or not last:
        raise RuntimeError(f"memtrace -- startup_mark: exit {p.returncode}: {err[-500:]}")
    meta = json.loads(__import__("pyarrow.parquet", fromlist=["x"]).read_schema(out)
                      .metadata[b"memtrace"])
    return {"launch_to_first": (int(first.group(1)) - t0) / 1e9,
            "last_to_exit": (t1 - int(last.group(1))) / 1e9,
            "whole": (t1 - t0) / 1e9, "phases": meta.get("startup_s", {}),
            "rows": meta.get("rows", 0)}


def startup_main(args: argparse.Namespace) -> int:
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="memtrace-bench-") as d:
        tmp = Path(d)
        src = tmp / "startup_mark.c"
        src.write_text(STARTUP_MARK)
        mark = str(tmp / "startup_mark")
        if subprocess.run(["gcc", "-O1", "-static", "-o", mark, str(src)],
                          stderr=subprocess.DEVNULL).returncode:
            subprocess.run(["gcc", "-O1", "-o", mark, str(src)], check=True)
        exes = {}
        for _label, (name, *_args) in TEARDOWN_WORKLOADS:
            exes[name] = str(tmp / name)
            subprocess.run(["gcc", "-O2", "-o", exes[name], str(WORKLOADS / f"{name}.c")],
                           check=True)
        warm_dir = tmp / "cache-warm"
        modes = {"cache off": lambda i: "off",
                 "cold cache": lambda i: str(tmp / f"cache-cold-{i}"),
                 "warm cache": lambda i: str(warm_dir)}
        env = dict(os.environ)
        env["MEMTRACE_BPF_CACHE"] = str(warm_dir)
        startup_once(args.root, mark, tmp / "s.parquet", env)   # fills the warm cache
        for rep in range(args.reps):
            for mode, where in modes.items():      # alternate
                env["MEMTRACE_BPF_CACHE"] = where(rep)
                results.setdefault(mode, []).append(
                    startup_once(args.root, mark, tmp / "s.parquet", env))
            # teardown of large traces (warm cache): the workload runs inside
            # the mark, whose LAST_NS follows the workload's exit
            env["MEMTRACE_BPF_CACHE"] = str(warm_dir)
            for label, (name, *wargs) in TEARDOWN_WORKLOADS:
                wait_released()    # the run before's programs off the hooks
                results.setdefault(label, []).append(
                    startup_once(args.root, mark, tmp / "s.parquet", env, [exes[name], *wargs]))
    print(f"memtrace start-up and teardown ({args.root}), median of {args.reps} "
          "[min..max], seconds")
    for mode, runs in results.items():
        def stat(key: str) -> str:
            xs = [r[key] for r in runs]
            return f"{statistics.median(xs):.3f} [{min(xs):.3f}..{max(xs):.3f}]"
        phases = {k: statistics.median(r["phases"].get(k, 0) for r in runs)
                  for k in runs[0]["phases"]}
        if mode in modes:
            print(f"  {mode:<11} launch->first instruction {stat('launch_to_first')}   "
                  f"last exit->memtrace exit {stat('last_to_exit')}   whole {stat('whole')}")
        else:      # a large trace: its teardown, the start-up being as above
            print(f"  {mode:<15} ({statistics.median(r['rows'] for r in runs):,.0f} rows, warm)"
                  f"  last exit->memtrace exit {stat('last_to_exit')}   whole {stat('whole')}")
        print("              phases: " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
