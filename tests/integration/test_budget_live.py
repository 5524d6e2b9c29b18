"""Budgets on real runs: `memtrace --budget FILE -- CMD`, with -p, and
`memtrace check` on the trace; --json and --junit parsed back."""
import json
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from memtrace_helpers import (
    REPO, kill_all, map_line, markers, memtrace_cmd, of_kind, run_memtrace,
                              wait_for_trace)
from tracer import metrics

pytestmark = pytest.mark.live
MiB = 1 << 20

BUDGET = """
[total]
max_mmap_calls = 100

[[process]]
comm = "faults"
max_mapped = "96M"
"""


def _write(tmp_path, text, name="budget.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _check(*args):
    return subprocess.run([sys.executable, "-m", "tracer", "check", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_within_budget_exits_with_cmds_status(workloads, tmp_path):
    budget = _write(tmp_path, BUDGET)
    js, xml = tmp_path / "summary.json", tmp_path / "budget.xml"
    # CMD's own status, 3, is what a run within budget exits with
    proc, t = run_memtrace(["--budget", budget, "--json", js, "--junit", xml, "--", "sh", "-c",
                            f"{workloads['faults']} 64 1; exit 3"],
                           tmp_path, quiet=False, expect_status=3)
    assert "limits kept" in proc.stderr and "BROKEN" not in proc.stderr, proc.stderr
    doc = json.loads(js.read_text())
    results = doc["budget"]["results"]
    assert doc["budget"]["broken"] == 0 and all(r["status"] == "ok" for r in results)
    mapped = next(r for r in results if r["limit"] == "max_mapped")
    assert mapped["process"] == "faults#0"
    assert mapped["measured"] == metrics.per_process(t).loc["faults#0", "peak_mapped"]
    assert 64 * MiB < mapped["measured"] <= 96 * MiB
    # the summary: the figures of the trace's own metadata, the same run
    assert doc["exit_status"] == 3 == t.meta["exit_status"]
    assert doc["kernel"] == t.meta["kernel"] and doc["lost"] == t.meta["lost"] == 0
    assert doc["trace"]["rows"] == len(t.events) == t.meta["rows"]
    kinds = t.events["kind"].astype(str).value_counts().to_dict()
    assert doc["events"]["fault"] == kinds["fault"]
    assert doc["events"]["mmap"] == kinds["mmap"]
    assert doc["faults"]["captured_minor"] + doc["faults"]["captured_major"] == kinds["fault"]
    suite = ET.parse(xml).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "0")


def test_twice_the_mapping_breaks_it(workloads, tmp_path):
    budget = _write(tmp_path, BUDGET)
    js, xml = tmp_path / "summary.json", tmp_path / "budget.xml"
    proc, t = run_memtrace(["--budget", budget, "--json", js, "--junit", xml, "--",
                            workloads["faults"], 128, 1], tmp_path, expect_status=8)
    peak = int(metrics.per_process(t).loc["faults#0", "peak_mapped"])
    assert peak > 128 * MiB
    err = proc.stderr
    assert "memtrace: budget " in err and "1 of 2 limits broken" in err, err
    assert " ok " not in err                      # -q: the broken limit only
    assert f"BROKEN  faults#0  max_mapped  {peak / MiB:.1f} MiB > 96.0 MiB" in err, err
    # the mapping responsible: the 128 MiB the workload mapped, and where it faulted
    mm = of_kind(t.events, "mmap")
    addr = int(mm.loc[mm["len"] == 128 * MiB, "ret"].iloc[0])
    line = next(x for x in err.splitlines() if x.strip().startswith(f"anon {addr:#x}"))
    assert line.split()[2:5] == ["128.0", "MiB", "32,768"], line
    assert line.split()[5].startswith("main+0x"), line
    assert "mapped at: no stacks recorded" in err
    doc = json.loads(js.read_text())["budget"]
    (r,) = [r for r in doc["results"] if r["status"] == "broken"]
    top = r["responsible"][0]
    assert (top["kind"], top["start"], top["size"], top["created_by"]) == \
        ("anon", addr, 128 * MiB, "mmap")
    assert top["faults"] == 32768 and top["fault_site"].startswith("main+0x")
    suite = ET.parse(xml).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failure = suite.find("testcase/failure")
    over = 100 * (peak - 96 * MiB) / (96 * MiB)
    assert failure.get("message") == f"{peak / MiB:.1f} MiB > 96.0 MiB (+{over:.0f}%)"

    # the same verdict from the trace, after the fact
    trace = tmp_path / "trace.parquet"
    c = _check(budget, trace, "--json", tmp_path / "check.json")
    assert c.returncode == 8, c.stderr
    assert f"BROKEN  faults#0  max_mapped  {peak / MiB:.1f} MiB > 96.0 MiB" in c.stdout
    again = json.loads((tmp_path / "check.json").read_text())
    assert [x["measured"] for x in again["results"]] == [x["measured"] for x in doc["results"]]
    roomy = _write(tmp_path, BUDGET.replace('"96M"', '"256M"'), "roomy.toml")
    c = _check(roomy, trace)
    assert c.returncode == 0 and "2 limits kept" in c.stdout, c.stdout


def test_budget_with_attach(workloads, tmp_path):
    """-p: what the process maps after the attach counts; its mappings from
    before are its state at attach, not mapped by a call in the trace."""
    budget = _write(tmp_path, '[[process]]\ncomm = "attachme"\nmax_bytes_mapped = "512K"\n')
    target = subprocess.Popen([workloads["attachme"]], stderr=subprocess.PIPE, text=True)
    out = tmp_path / "attach.parquet"
    mt = None
    try:
        assert target.stderr.readline().startswith("READY")
        mt = subprocess.Popen(memtrace_cmd("--budget", budget, "-o", out, "-p", target.pid),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not wait_for_trace(out, lambda ev: (markers(ev)["pid"] == target.pid).any(), mt):
            if mt.poll() is None:
                mt.send_signal(signal.SIGINT)
            pytest.fail(f"memtrace -p: not attached within 60 s: {mt.communicate(timeout=30)[1]}")
        target.send_signal(signal.SIGUSR1)
        rest = target.stderr.read()
        assert target.wait(timeout=30) == 0, rest
        _, err = mt.communicate(timeout=60)
    finally:
        kill_all(target, mt)
    assert mt.returncode == 8, err
    addr, length = map_line(rest)
    assert "BROKEN  attachme#0  max_bytes_mapped  1.0 MiB > 512.0 KiB (+100%)" in err, err
    line = next(x for x in err.splitlines() if x.strip().startswith(f"anon {addr:#x}"))
    assert line.split()[2:5] == ["1.0", "MiB", "256"], line
