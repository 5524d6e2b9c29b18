"""`memtrace report` on traces of real programs: tables, PNG/SVG plots and
the HTML page, each file parsed and holding its series."""
import subprocess
import sys
import xml.etree.ElementTree as ET

import matplotlib.image as mpimg
import pytest

from memtrace_helpers import REPO, run_memtrace

pytestmark = pytest.mark.live


@pytest.mark.parametrize("argv", [
    ["/usr/bin/python3", "-c", "import json, sqlite3, decimal; json.dumps(list(range(10**5)))"],
    ["sh", "-c", "head -c 8000000 /dev/urandom | xz -T1 -c > /dev/null"],
], ids=["python3", "xz"])
def test_report_writes_tables_plots_and_page(argv, tmp_path):
    _, t = run_memtrace(["--", *argv], tmp_path)
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "tracer", "report", str(tmp_path / "trace.parquet"),
                        "-o", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "processes" in r.stdout and "top 10 mappings by faults" in r.stdout
    for name in ("address_space", "memory", "faults"):
        img = mpimg.imread(out / f"{name}.png")
        assert img.shape[0] > 300 and img.shape[1] > 800
        ET.parse(out / f"{name}.svg")
    ids = {el.get("id") for name in ("address_space", "memory", "faults")
           for el in ET.parse(out / f"{name}.svg").iter() if el.get("id")}
    assert {"faults", "vmas-file", "vmas-stack", "mapped", "heap", "pages_touched",
            "minor", "major", "read", "write"} <= ids, ids
    # virtual and resident bytes over time on one figure
    memory = {el.get("id") for el in ET.parse(out / "memory.svg").iter() if el.get("id")}
    assert {"mapped", "rss_total"} <= memory, memory
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3 and "top 10 mappings by faults" in page
