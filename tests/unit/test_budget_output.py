"""The budget report as text, JSON and JUnit XML (parsed back), and the
end-of-run summary as a dict (--json)."""
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from test_budget_check import MiB, two_processes
from tracer import budget as bg
from tracer import budget_report as br
from tracer import capture, check, summary
from tracer.errors import OutputError

BUDGET = """
[total]
max_mapped = "12M"
max_minor_faults = 100
max_site_mapped = "1M"

[[process]]
comm = "prog"
max_bytes_mapped = "8M"

[[process]]
comm = "nothing"
max_heap = "1M"
"""


@pytest.fixture
def results(tmp_path):
    p = tmp_path / "budget.toml"
    p.write_text(BUDGET)
    b = bg.load(p)
    t, _ = two_processes()
    return check.evaluate(t, b), b, t


def test_text_fits_80_columns_and_says_what_broke(results):
    out, b, t = results
    text = br.render(out, b, t)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80, text
    assert lines[0].endswith("2 of 5 limits broken, 2 not checked")
    assert any(x.startswith("  BROKEN  total  max_mapped  12.3 MiB > 12.0 MiB") for x in lines)
    assert any(x.startswith("  BROKEN  prog#0  max_bytes_mapped  9.0 MiB > 8.0 MiB")
               for x in lines)
    assert "  ok      total  max_minor_faults  13 <= 100" in lines
    assert "  skipped nothing" not in text          # scopes are named by their selector
    assert "  skipped comm='nothing'  max_heap  no traced process matches comm='nothing'" \
        in lines
    brief = br.render(out, b, t, only_broken=True)
    assert "ok " not in brief and "skipped" not in brief and "BROKEN" in brief


def test_json_round_trip(results, tmp_path):
    out, b, t = results
    path = tmp_path / "r.json"
    br.write_json(path, br.as_dict(out, b, t))
    doc = json.loads(path.read_text())
    assert (doc["limits"], doc["broken"], doc["skipped"]) == (5, 2, 2)
    by = {(r["process"] or r["scope"], r["limit"]): r for r in doc["results"]}
    peak = by[("total", "max_mapped")]
    assert peak["status"] == "broken" and peak["max"] == 12 * MiB
    assert peak["measured"] == out[0].measured and peak["unit"] == "bytes"
    assert peak["responsible"][0]["size"] == 8 * MiB
    assert peak["call_sites"] == "no stacks recorded"
    assert by[("prog#0", "max_bytes_mapped")]["selector"] == {"comm": "prog"}
    assert by[("total", "max_site_mapped")]["status"] == "skipped"


def test_junit_round_trip(results, tmp_path):
    out, b, t = results
    path = tmp_path / "r.xml"
    br.write_junit(path, out, b, "run.parquet", 0)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "2", "2")
    cases = suite.findall("testcase")
    assert len(cases) == 5
    names = [(c.get("classname"), c.get("name")) for c in cases]
    assert ("memtrace.total", "max_mapped <= 12.0 MiB") in names
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failed) == {"max_mapped <= 12.0 MiB", "max_bytes_mapped <= 8.0 MiB"}
    f = failed["max_mapped <= 12.0 MiB"]
    assert f.get("message") == "12.3 MiB > 12.0 MiB (+2%)"
    assert "anon 0x7f0000000000" in f.text
    skipped = [c.find("skipped").get("message") for c in cases if c.find("skipped") is not None]
    assert len(skipped) == 2 and any("no stacks recorded" in m for m in skipped)
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"trace": "run.parquet", "budget": b.source}


def test_outputs_are_checked_before_the_work(tmp_path):
    with pytest.raises(OutputError, match="no directory"):
        br.check_writable(tmp_path / "missing" / "r.json")
    with pytest.raises(OutputError, match="is a directory"):
        br.check_writable(None, tmp_path)
    br.check_writable(None, tmp_path / "r.xml")


def test_summary_dict_holds_the_printed_figures(tmp_path):
    res = capture.Result(start_ts=1_000_000_000, end_ts=3_500_000_000,
                         counts={"mmap": 4, "munmap": 1, "brk": 2, "fault": 10, "exec": 1},
                         faults={7: [9, 1]}, bytes_mapped=3 * MiB, bytes_unmapped=MiB,
                         processes={7: "prog"}, threads=1,
                         counters={"lost_fault": 2, "lost_event": 0},
                         kernel={7: {"minflt": 12, "majflt": 1, "source": "/proc/PID/stat"}},
                         exit_status=3, rows=20)
    opts = capture.Options(command=["prog"], pids=[], follow=True, duration=None,
                           output=tmp_path / "t.parquet", fmt="parquet")
    meta = summary.metadata(res, opts, ["--", "prog"])
    d = json.loads(json.dumps(summary.as_dict(res, meta, Path("t.parquet"), 4096)))
    text = summary.render(res, meta, Path("t.parquet"), 4096)
    assert d["processes"] == {"7": "prog"} and d["duration_s"] == 2.5
    assert d["events"]["mmap"] == 4 and d["syscalls"] == 7
    assert "syscalls  7:" in text
    assert d["faults"] == {"captured_minor": 9, "captured_major": 1}
    assert "10: 9 minor, 1 major" in text
    k = d["kernel"]["total"]
    assert (k["kernel_minor"], k["kernel_major"]) == (12, 1)
    assert "12 minor, 1 major" in text
    assert d["bytes_mapped"] == 3 * MiB and d["bytes_unmapped"] == MiB
    assert d["lost"] == 2 and d["lost_by_counter"]["lost_fault"] == 2
    assert "LOST      2 events" in text
    assert d["trace"] == {"path": "t.parquet", "bytes": 4096, "rows": 20}
    assert d["exit_status"] == 3
