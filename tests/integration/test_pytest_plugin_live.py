"""The pytest plugin, run by pytest (pytester): a test that breaks its
marker's budget fails with the report, one that keeps it passes, and the
fixture gives the test its trace."""
import pytest

pytestmark = pytest.mark.live

INNER = '''
import subprocess

import pytest

from tracer import metrics

FAULTS = {faults!r}


@pytest.mark.memtrace(max_mapped="96M", max_mmap_calls=50)
def test_within():
    subprocess.run([FAULTS, "64", "1"], check=True)


@pytest.mark.memtrace(max_mapped="96M", max_mmap_calls=50)
def test_over():
    subprocess.run([FAULTS, "128", "1"], check=True)


def test_fixture(memtrace_trace):
    subprocess.run([FAULTS, "8", "1"], check=True)
    t = memtrace_trace.stop()
    pids = metrics.process_key(t)
    assert memtrace_trace.root in pids.index          # pytest itself: traced, in no figure
    (pid,) = [p for p, k in pids.items() if k.startswith("faults#")]
    v = t.vmas[(t.vmas["pid"] == pid) & (t.vmas["kind"] == "anon")]
    big = v.loc[v["size"].idxmax()]
    assert (int(big["size"]), int(big["faults"])) == (8 << 20, 2048)
    # from its exec: no copy of pytest's mappings in the child
    assert metrics.per_process(t).loc[pids[pid], "peak_mapped"] < 16 << 20
'''


def test_marker_fails_the_test_over_budget_and_passes_the_other(pytester, workloads):
    pytester.makepyfile(test_inner=INNER.format(faults=workloads["faults"]))
    r = pytester.runpytest_subprocess("-p", "tracer.pytest_plugin", "-p", "no:cacheprovider",
                                      timeout=600)
    out = r.stdout.str()
    r.assert_outcomes(passed=2, failed=1)
    assert "FAILED test_inner.py::test_over" in out, out
    # the report names the limit, the figure against it, and the mapping
    assert "memtrace: budget memtrace marker: 1 of 2 limits broken" in out, out
    # only the failure's own report: the short summary at the end repeats the
    # message in full when pytest thinks it runs on CI (env CI or BUILD_NUMBER,
    # _pytest/terminal.py running_on_ci), truncated otherwise
    lines = out.split("short test summary info")[0].splitlines()
    broken = [x for x in lines if x.startswith("  BROKEN  total  max_mapped  ")]
    assert len(broken) == 1, out
    measured, rest = broken[0].split()[3], broken[0].split()[4:8]
    assert 128 < float(measured) < 256 and rest == ["MiB", ">", "96.0", "MiB"], broken
    big = [x for x in lines if x.strip().startswith("anon 0x") and "128.0 MiB" in x]
    assert len(big) == 1 and big[0].split()[4] == "32,768" and "main+0x" in big[0], out
    assert "mapped at: no stacks recorded" in out
