"""`memtrace diff`: a workload and its variant that maps 64 MiB more."""
import json
import subprocess
import sys

import pytest

from memtrace_helpers import REPO, exec_pid, faults_of, kernel_counts, run_memtrace, unseen_faults

pytestmark = pytest.mark.live

GUP_MAX = 4        # execve's argv/env copy (tests/integration/test_capture.py)
# How far the process's own minor-fault total moves between runs of
# `faults 64 1` and `faults 64 2` beyond the round's 16384 pages, by the
# kernel's count (its RUSAGE line, untraced, 12 pairs): -2..+7. A CI run
# (24d295f) saw +5 in the trace, where this test allowed 4.
START_NOISE = 16


def _captured_minor(trace) -> int:
    """The faults process's captured minor faults, after checking they are
    all the kernel counted but its GUP faults: the run-to-run change is then
    the kernel's, not a lost event."""
    pid = exec_pid(trace.events, "faults")
    minor = len(faults_of(trace.events, pid, major=False))
    k = kernel_counts(trace.meta, pid)
    assert k is not None, trace.meta.get("kernel")
    extra_major, unseen = unseen_faults(trace.meta, k["minflt"], k["majflt"], minor, 0)
    assert extra_major >= 0 and 0 <= unseen <= GUP_MAX, (k, minor, trace.meta.get("counters"))
    return minor


def _diff(*args):
    return subprocess.run([sys.executable, "-m", "tracer", "diff", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_diff_shows_the_added_mapping_and_nothing_else(workloads, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, trace_a = run_memtrace(["--", workloads["faults"], 64, 1], tmp_path / "a")
    _, trace_b = run_memtrace(["--", workloads["faults"], 64, 2], tmp_path / "b")  # +1 round
    old, new = tmp_path / "a" / "trace.parquet", tmp_path / "b" / "trace.parquet"
    r = _diff("--json", old, new)
    assert r.returncode == 0, r.stderr
    changes = json.loads(r.stdout)["changes"]
    above = {(c["scope"], c["metric"]): c["abs"] for c in changes if c["above_noise"]}
    proc = next(s for s, _ in above)
    assert proc.startswith("faults#")
    # exactly these figures changed; the mapping's own figures exactly so, the
    # process totals by what each trace captured, within the start-up's noise
    assert set(above) == {
        (proc, "bytes_mapped"), (proc, "pages_touched"), (proc, "minor_faults"),
        (proc, "mmap_calls"), (proc, "munmap_calls"), (f"{proc} anon", "map.mapped"),
        (f"{proc} anon", "map.faults"), (f"{proc} anon", "map.pages_touched")}, above
    assert above[(f"{proc} anon", "map.mapped")] == 64 << 20
    assert above[(f"{proc} anon", "map.faults")] == 16384
    assert above[(f"{proc} anon", "map.pages_touched")] == 16384
    assert above[(proc, "bytes_mapped")] == 64 << 20
    assert above[(proc, "mmap_calls")] == above[(proc, "munmap_calls")] == 1
    grown = _captured_minor(trace_b) - _captured_minor(trace_a)
    assert above[(proc, "minor_faults")] == grown
    assert abs(grown - 16384) <= START_NOISE
    assert abs(above[(proc, "pages_touched")] - 16384) <= START_NOISE
    text = _diff(old, new)
    table = [x for x in text.stdout.splitlines() if not x.startswith(("old: ", "new: "))]
    assert text.returncode == 0 and len(table) == 9 and max(map(len, table)) <= 80, text.stdout
    assert _diff("--fail-above", 50, old, new).returncode == 10
    assert _diff("--fail-above", 500, old, new).returncode == 0
