"""Acceptance of trace datasets: three runs written with `--dataset` into
one directory; `memtrace query` (DuckDB), pandas over tracer.load and, where
pyspark and Java are installed, Spark SQL give the same per-run totals."""
import json
import subprocess

import pytest

import tracer
from dataset_helpers import (by_run, pandas_totals, query_json,
                             spark_run_totals, spark_skip_reason)
from memtrace_helpers import REPO, memtrace_cmd

pytestmark = pytest.mark.live

# faults MiB rounds: MiB*256*rounds first touches of anonymous memory each
RUNS = [(4, 1), (8, 1), (2, 3)]


@pytest.fixture(scope="module")
def fleet(workloads, tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset") / "fleet"
    for mib, rounds in RUNS:
        cmd = memtrace_cmd("-o", root, "--dataset", "--", workloads["faults"], mib, rounds)
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    # a report inside a run (RUN/_report/, plots and HTML) must not disturb the engines
    first = tracer.load_dataset(root).paths[0]
    r = subprocess.run(memtrace_cmd("report", first, quiet=False), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (first / "_report").is_dir(), r.stderr
    return root


def test_duckdb_and_pandas_give_the_same_per_run_totals(fleet):
    duck = by_run(query_json(fleet, "SELECT * FROM run_totals", cwd=REPO))
    ds = tracer.load_dataset(fleet)
    assert len(ds) == 3 and ds.partial == []
    pand = {}
    for i, (mib, rounds) in enumerate(RUNS):
        t = tracer.load(fleet, run=i)            # start order: the order they ran in
        assert t.meta["command"][1:] == [str(mib), str(rounds)]
        totals = pandas_totals(t)
        pand[t.meta["dataset"]["run"]] = totals
        # the workload's own first touches are all there, minor (a file
        # page may still fault major: one run of a clean-clone CI had one)
        assert totals["minor"] >= mib * 256 * rounds
        # the events against the capture's counters and the kernel's (wait4)
        k = t.meta["kernel"]["total"]
        assert (k["captured_minor"], k["captured_major"]) == (totals["minor"], totals["major"])
        assert k["kernel_minor"] >= totals["minor"] and k["kernel_major"] >= totals["major"]
    assert duck == pand
    assert len({v["faults"] for v in duck.values()}) == 3


def test_runs_and_mappings_tables_agree_with_the_events(fleet):
    rows = query_json(fleet, """
        SELECT t.run, t.faults, t.minor, r.captured_minor, r.complete, r.lost, r.command,
               m.mapped_faults, m.anon_faults
        FROM run_totals t JOIN runs r USING (host, run)
        JOIN (SELECT host, run, SUM(faults) AS mapped_faults,
                     SUM(CASE WHEN vma_kind = 'anon' THEN faults ELSE 0 END) AS anon_faults
              FROM mappings GROUP BY host, run) m USING (host, run)
        ORDER BY r.start""", cwd=REPO)
    assert [r["command"].split()[1:] for r in rows] == [[str(a), str(b)] for a, b in RUNS]
    for r, (mib, rounds) in zip(rows, RUNS):
        assert r["complete"] is True and r["lost"] == 0
        assert r["captured_minor"] == r["minor"]
        assert r["mapped_faults"] == r["faults"]          # every fault in one mapping row
        assert r["anon_faults"] >= mib * 256 * rounds     # the workload's anonymous pages


def test_query_output_fits_80_columns(fleet):
    r = subprocess.run(memtrace_cmd("query", fleet, "SELECT * FROM run_totals", quiet=False),
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    assert max(map(len, r.stdout.splitlines())) <= 80
    assert r.stdout.splitlines()[-1] == "(3 rows)"


def test_spark_gives_the_same_per_run_totals(fleet, tmp_path, monkeypatch):
    reason = spark_skip_reason()
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)      # anything Spark leaves in its working directory
    spark = spark_run_totals(fleet)
    duck = query_json(fleet, "SELECT * FROM run_totals", cwd=REPO)
    assert len(spark) == 3
    key = ["host", "date", "run"]
    assert ({tuple(r[k] for k in key): by_run([r])[r["run"]] for r in spark}
            == {tuple(r[k] for k in key): by_run([r])[r["run"]] for r in duck})
    print(json.dumps(sorted(spark, key=lambda r: r["run"]), indent=None))
