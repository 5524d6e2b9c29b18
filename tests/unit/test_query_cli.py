"""`memtrace query DIR SQL` (tracer/query.py, tracer/sqltable.py): the
tables, the three output forms, 80 columns, and bad input."""
import csv
import io
import json

import pytest

from dataset_helpers import TOTALS, pandas_totals, write_run
from tracer import cli, sqltable

pytest.importorskip("duckdb", reason="memtrace query needs DuckDB (scripts/setup installs it)")

SIZES = {"a": [3, 17], "b": [9]}      # host -> faults of each run


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    for h, sizes in SIZES.items():
        for i, n in enumerate(sizes):
            write_run(root, faults=n, mmaps=n % 5, major=i, hostname=h, now=1735787045.0 + i)
    return root


def run(capsys, *argv):
    code = cli.main(["query", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_totals_equal_a_pandas_computation_over_tracer_load(fleet, capsys):
    import tracer
    code, out, err = run(capsys, fleet, "SELECT * FROM run_totals", "--json")
    assert code == 0 and err == ""
    got = {(r["host"], r["run"]): {k: r[k] for k in TOTALS} for r in json.loads(out)}
    ds = tracer.load_dataset(fleet)
    want = {(t.meta["dataset"]["host"], t.meta["dataset"]["run"]): pandas_totals(t) for t in ds}
    assert got == want
    assert sorted(v["faults"] for v in got.values()) == [3, 9, 17]


def test_sidecar_tables(fleet, capsys):
    code, out, _ = run(capsys, fleet, "SELECT r.host, r.command, r.complete, p.comm, p.exe,"
                       " p.faults, p.major, p.kernel_minor, p.kernel_major, m.vma_kind, m.faults"
                       " FROM runs r JOIN processes p USING (run) JOIN mappings m USING (run)"
                       " ORDER BY m.faults", "--csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows == [["host", "command", "complete", "comm", "exe", "faults", "major",
                     "kernel_minor", "kernel_major", "vma_kind", "faults"],
                    ["a", "/usr/bin/prog 3", "true", "prog", "/usr/bin/prog", "3", "0", "3", "0",
                     "anon", "3"],
                    ["b", "/usr/bin/prog 9", "true", "prog", "/usr/bin/prog", "9", "0", "9", "0",
                     "anon", "9"],
                    ["a", "/usr/bin/prog 17", "true", "prog", "/usr/bin/prog", "17", "1", "16", "1",
                     "anon", "17"]]


def test_faults_and_syscalls_views(fleet, capsys):
    code, out, _ = run(capsys, fleet, "SELECT count(*) AS n, sum(CASE WHEN is_write THEN 1 END)"
                       " AS w, sum(CASE WHEN major THEN 1 END) AS maj FROM faults", "--json")
    assert json.loads(out) == [{"n": 29, "w": 29, "maj": 1}]
    code, out, _ = run(capsys, fleet, "SELECT call, count(*) AS n FROM syscalls"
                       " GROUP BY call ORDER BY call", "--json")
    assert json.loads(out) == [{"call": "mmap", "n": 3 + 4 + 2}, {"call": "munmap", "n": 3}]


def test_without_sql_it_lists_the_tables(fleet, capsys):
    code, out, _ = run(capsys, fleet)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert names == ["events", "faults", "syscalls", "run_totals", "runs", "processes",
                     "mappings"]
    assert max(map(len, out.splitlines())) <= 80


def test_table_output_fits_80_columns(fleet, capsys):
    for sql in ("SELECT * FROM run_totals", "SELECT * FROM runs", "SELECT * FROM events",
                "SELECT run, faults, major FROM run_totals ORDER BY faults"):
        code, out, _ = run(capsys, fleet, sql)
        assert code == 0
        assert max(map(len, out.splitlines())) <= 80, sql
    lines = out.splitlines()
    assert lines[0].split() == ["run", "faults", "major"]
    assert [line.split()[1] for line in lines[2:5]] == ["3", "9", "17"]
    assert lines[-1] == "(3 rows)"


def test_max_rows(fleet, capsys):
    code, out, _ = run(capsys, fleet, "SELECT ts FROM events", "--max-rows", "2")
    assert out.splitlines()[-1] == "(first 2 rows; --max-rows 0, --csv or --json for all)"
    assert len(out.splitlines()) == 2 + 2 + 1
    code, out, _ = run(capsys, fleet, "SELECT ts FROM events", "--max-rows", "0")
    n = sum(1 for _ in csv.reader(io.StringIO(run(capsys, fleet, "SELECT ts FROM events",
                                                       "--csv")[1]))) - 1
    assert out.splitlines()[-1] == f"({n} rows)"


@pytest.mark.parametrize("argv, status, message", [
    (["{tmp}/missing", "SELECT 1"], 5, "memtrace: {tmp}/missing: no such dataset directory"),
    (["{tmp}/file", "SELECT 1"], 5, "memtrace: {tmp}/file: is a file, not a dataset directory"),
    (["{tmp}/empty", "SELECT 1"], 5, "memtrace: {tmp}/empty: no memtrace runs in it"
                                     " (no host=*/date=*/run=*/events.parquet)"),
    (["{fleet}", "SELEC 1"], 2, 'memtrace: query: Parser Error: syntax error at or near "SELEC"'),
    (["{fleet}", "SELECT nosuch FROM events"], 2,
     'memtrace: query: Binder Error: Referenced column "nosuch" not found in FROM clause!'),
    (["{fleet}", "SELECT * FROM nosuch"], 2,
     "memtrace: query: Catalog Error: Table with name nosuch does not exist!"),
    (["{fleet}", "  "], 2, "memtrace: the SQL is empty"),
    (["{fleet}", "SELECT 1", "--csv", "--json"], 2, "memtrace: argument --json: not allowed"
     " with argument --csv (see memtrace query --help)"),
    ([], 2, "memtrace: the following arguments are required: DIR (see memtrace query --help)"),
    (["{fleet}", "SELECT 1", "--max-rows", "-1"], 2,
     "memtrace: --max-rows must be 0 (all) or more, not -1"),
])
def test_bad_input_is_one_line_and_a_status(fleet, tmp_path, capsys, argv, status, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, fleet=fleet) for a in argv]
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (status, "", message.format(tmp=tmp_path) + "\n")


def test_render_cuts_text_not_numbers_and_falls_back_to_records():
    rows = [("x" * 100, 123456789012, None, 1.5, True)]
    text = sqltable.render(["name", "n", "none", "f", "b"], rows)
    head, rule, line = text.splitlines()
    assert len(line) == 80 and line.split()[1:] == ["123456789012", "NULL", "1.5", "true"]
    assert line.startswith("x" * 45) and line.split()[0].endswith("~")
    wide = sqltable.render([f"column_{i}" for i in range(12)], [tuple(range(12))])
    assert wide.splitlines()[:3] == ["-[ row 1 ]" + "-" * 70, "column_0  | 0", "column_1  | 1"]
    assert max(map(len, wide.splitlines())) <= 80


@pytest.mark.parametrize("which", [0, -1])     # read when the view is made, or when scanned
def test_a_damaged_events_file_is_one_line_and_status_5(tmp_path, capsys, which):
    runs = [write_run(tmp_path, faults=n, now=1735787045.0 + n) for n in (2, 3)]
    damaged = runs[which]
    damaged.write_bytes(damaged.read_bytes()[:3000])
    code, out, err = run(capsys, tmp_path, "SELECT count(*) FROM events")
    assert (code, out) == (5, "")
    assert err.count("\n") == 1 and str(damaged) in err and err.startswith("memtrace: ")
