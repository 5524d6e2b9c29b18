"""`memtrace diff`: a workload and its variant that maps 64 MiB more."""
import json
import subprocess
import sys

import pytest

from memtrace_helpers import REPO, run_memtrace

pytestmark = pytest.mark.live


def _diff(*args):
    return subprocess.run([sys.executable, "-m", "tracer", "diff", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_diff_shows_the_added_mapping_and_nothing_else(workloads, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_memtrace(["--", workloads["faults"], 64, 1], tmp_path / "a")
    run_memtrace(["--", workloads["faults"], 64, 2], tmp_path / "b")   # one more 64 MiB round
    old, new = tmp_path / "a" / "trace.parquet", tmp_path / "b" / "trace.parquet"
    r = _diff("--json", old, new)
    assert r.returncode == 0, r.stderr
    changes = json.loads(r.stdout)["changes"]
    above = {(c["scope"], c["metric"]): c["abs"] for c in changes if c["above_noise"]}
    proc = next(s for s, _ in above)
    assert proc.startswith("faults#")
    # exactly these figures changed; the mapping's own figures exactly so, the
    # process totals within the start-up's run-to-run noise (a fault or two)
    assert set(above) == {
        (proc, "bytes_mapped"), (proc, "pages_touched"), (proc, "minor_faults"),
        (proc, "mmap_calls"), (proc, "munmap_calls"), (f"{proc} anon", "map.mapped"),
        (f"{proc} anon", "map.faults"), (f"{proc} anon", "map.pages_touched")}, above
    assert above[(f"{proc} anon", "map.mapped")] == 64 << 20
    assert above[(f"{proc} anon", "map.faults")] == 16384
    assert above[(f"{proc} anon", "map.pages_touched")] == 16384
    assert above[(proc, "bytes_mapped")] == 64 << 20
    assert above[(proc, "mmap_calls")] == above[(proc, "munmap_calls")] == 1
    assert abs(above[(proc, "minor_faults")] - 16384) <= 4
    assert abs(above[(proc, "pages_touched")] - 16384) <= 4
    text = _diff(old, new)
    table = [x for x in text.stdout.splitlines() if not x.startswith(("old: ", "new: "))]
    assert text.returncode == 0 and len(table) == 9 and max(map(len, table)) <= 80, text.stdout
    assert _diff("--fail-above", 50, old, new).returncode == 10
    assert _diff("--fail-above", 500, old, new).returncode == 0
