"""Trace datasets (tracer/dataset.py): the partition layout, the sidecar,
a run hidden until whole, and tracer.load of runs and dataset roots."""
import json
import re

import pyarrow.parquet as pq
import pytest

import tracer
from dataset_helpers import pandas_totals, write_run
from tracer import dataset, trace_schema, writer
from tracer.errors import OutputError, TraceFileError, UsageError

NOW = 1735787045.0          # 2025-01-02 03:04:05 UTC


def test_layout_is_hive_partitions_with_one_parquet_file_and_a_sidecar(tmp_path):
    root = tmp_path / "fleet"
    events = write_run(root, faults=5, hostname="web-01.example", now=NOW)
    run = events.parent.name[len("run="):]
    assert re.fullmatch(r"20250102T030405Z-[0-9a-f]{6}", run)
    part = root / "host=web-01.example" / "date=2025-01-02"
    assert events == part / f"run={run}" / "events.parquet"
    assert sorted(p.name for p in events.parent.iterdir()) == ["_memtrace.json", "events.parquet"]
    # nothing else anywhere: no staging directory, no spill, no temporary file
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "host=web-01.example", "host=web-01.example/date=2025-01-02",
        f"host=web-01.example/date=2025-01-02/run={run}",
        f"host=web-01.example/date=2025-01-02/run={run}/_memtrace.json",
        f"host=web-01.example/date=2025-01-02/run={run}/events.parquet"]


def test_every_events_file_has_the_trace_schema(tmp_path):
    write_run(tmp_path, faults=3, hostname="a")
    write_run(tmp_path, faults=40, mmaps=7, major=2, hostname="b")
    files = sorted(tmp_path.rglob("events.parquet"))
    assert len(files) == 2
    for f in files:
        schema = pq.read_schema(f)
        assert schema.remove_metadata().equals(trace_schema.SCHEMA)


def test_sidecar_holds_the_metadata_the_identity_and_faults_per_mapping(tmp_path):
    events = write_run(tmp_path, faults=9, major=4, hostname="a", now=NOW)
    side = json.loads((events.parent / "_memtrace.json").read_text())
    footer = json.loads(pq.read_schema(events).metadata[writer.META_KEY])
    ident = {"layout_version": 1, "host": "a", "hostname": "a", "date": "2025-01-02",
             "run": events.parent.name[len("run="):], "events": "events.parquet"}
    assert side["dataset"] == footer["dataset"] == ident
    assert side["command"] == ["/usr/bin/prog", "9"] and side["complete"] is True
    assert side["mappings_error"] is None
    # every fault in exactly one row; the synthetic faults are all in the anonymous mapping
    assert side["mappings"] == [{"pid": 7, "vma_kind": "anon", "path": None, "faults": 9,
                                 "minor": 5, "major": 4, "read": 0, "write": 9, "exec": 0,
                                 "latency_ns": 0}]


def test_host_names_become_safe_partition_values(tmp_path):
    assert dataset.partition_value("web 01/x:y") == "web_01_x_y"
    assert dataset.partition_value("..hidden") == "hidden"      # never a hidden directory
    assert dataset.partition_value("") == "_"
    events = write_run(tmp_path, faults=1, hostname="a b")
    assert events.parents[2].name == "host=a_b"
    side = json.loads((events.parent / "_memtrace.json").read_text())
    assert side["dataset"]["hostname"] == "a b"


def test_a_run_is_hidden_until_committed(tmp_path):
    run = write_run(tmp_path, faults=3, commit=False)
    assert run.staging.name.startswith(".run=")
    assert dataset.run_dirs(tmp_path) == []
    assert dataset.partial_runs(tmp_path) == [run.staging]
    # memtrace killed here: the spill of the hidden run reads as a trace cut short
    t = tracer.load(run.staging)
    assert not t.complete and (t.events.kind == "fault").sum() == 3
    assert t.meta["dataset"] == {"host": "host-a", "date": run.date, "run": run.run}


def test_runs_of_the_same_second_and_token_get_distinct_names(tmp_path):
    a = write_run(tmp_path, faults=1, now=NOW, token="abc")
    b = write_run(tmp_path, faults=2, now=NOW, token="abc")
    assert (a.parent.name, b.parent.name) == ("run=20250102T030405Z-abc",
                                              "run=20250102T030405Z-abc-2")
    assert [(tracer.load(p.parent).events.kind == "fault").sum() for p in (a, b)] == [1, 2]


def test_start_run_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(UsageError, match="--dataset needs -o DIR"):
        dataset.start_run(None)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        dataset.start_run(f)
    with pytest.raises(OutputError, match="no directory"):
        dataset.start_run(tmp_path / "missing" / "fleet")


def test_load_a_run_directory_and_a_dataset_root(tmp_path):
    runs = [write_run(tmp_path, faults=n, now=NOW + i, hostname=h)
            for i, (n, h) in enumerate([(3, "b"), (5, "a"), (8, "a")])]
    t = tracer.load(runs[1].parent)
    assert (t.events.kind == "fault").sum() == 5 and t.meta["dataset"]["host"] == "a"
    assert t.meta["mappings"][0]["faults"] == 5            # the sidecar's metadata
    # selectors: index in start order, run name, path below the root
    assert tracer.load(tmp_path, run=0).path == runs[0]
    assert tracer.load(tmp_path, run=-1).path == runs[2]
    assert tracer.load(tmp_path, run=runs[1].parent.name[4:]).path == runs[1]
    rel = runs[2].parent.relative_to(tmp_path).as_posix()
    assert tracer.load(tmp_path, run=rel).path == runs[2]
    with pytest.raises(TraceFileError, match="a dataset of 3 runs: .*run="):
        tracer.load(tmp_path)
    with pytest.raises(TraceFileError, match="matches no run"):
        tracer.load(tmp_path, run="nope")
    with pytest.raises(TraceFileError, match="no run 3 "):
        tracer.load(tmp_path, run=3)
    with pytest.raises(TraceFileError, match="is one run already"):
        tracer.load(runs[0].parent, run=0)
    with pytest.raises(TraceFileError, match="no memtrace runs"):
        tracer.load(tmp_path / "host=a")


def test_a_root_with_one_run_loads_it(tmp_path):
    events = write_run(tmp_path, faults=4)
    assert tracer.load(tmp_path).path == events


def test_load_dataset_lists_and_iterates_runs(tmp_path):
    sizes = [6, 2, 11]
    for i, n in enumerate(sizes):
        write_run(tmp_path, faults=n, now=NOW + 60 * i, hostname="h")
    ds = tracer.load_dataset(tmp_path)
    assert len(ds) == 3 and ds.partial == []
    assert ds.runs.command.tolist() == [f"/usr/bin/prog {n}" for n in sizes]   # start order
    assert [pandas_totals(t)["faults"] for t in ds] == sizes
    assert ds.mappings.groupby("run").faults.sum().tolist() == sizes
    with pytest.raises(TraceFileError, match="no such dataset directory"):
        tracer.load_dataset(tmp_path / "missing")


def test_a_damaged_sidecar_is_one_clear_error(tmp_path):
    events = write_run(tmp_path, faults=1)
    (events.parent / "_memtrace.json").write_text("{not json")
    with pytest.raises(TraceFileError, match="not a readable memtrace sidecar"):
        tracer.load_dataset(tmp_path)
    (events.parent / "_memtrace.json").write_text("[]")
    with pytest.raises(TraceFileError, match="not a memtrace sidecar"):
        tracer.load(events.parent)


@pytest.mark.parametrize("error, text", [(ValueError("model bug"), "ValueError: model bug"),
                                         (KeyboardInterrupt(), "interrupted")])
def test_a_failing_summary_still_commits_the_run(tmp_path, monkeypatch, error, text):
    def fail(path):
        raise error
    monkeypatch.setattr(dataset, "mapping_summary", fail)
    said = []
    events = write_run(tmp_path, faults=2, say=said.append)
    side = json.loads((events.parent / "_memtrace.json").read_text())
    assert (side["mappings"], side["mappings_error"]) == (None, text)
    assert said == [f"faults per mapping not summarised ({text})"]
    assert (tracer.load(tmp_path).events.kind == "fault").sum() == 2


def test_an_abandoned_run_leaves_nothing(tmp_path):
    run = dataset.start_run(tmp_path / "fleet", hostname="h")
    run.abandon()
    assert not run.staging.exists() and dataset.partial_runs(tmp_path / "fleet") == []
