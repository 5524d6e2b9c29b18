"""Per-run totals of a trace dataset computed three ways, for tests that
compare them: DuckDB (`memtrace query`), pandas over tracer.load, Spark."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from memtrace_helpers import memtrace_cmd

SYSCALLS = ["brk", "mmap", "munmap", "mremap", "mprotect", "madvise"]
TOTALS = ["processes", "faults", "minor", "major", "syscalls", "mmap_bytes", "munmap_bytes"]


def pandas_totals(trace) -> dict:
    """The run_totals figures of one trace, from its events frame (written
    apart from tracer/query.py's SQL, so the two check each other)."""
    e = trace.events
    f = e[e.kind == "fault"]
    n = f["count"].fillna(1).astype("int64")           # a summary row: `count` faults
    major = f.major.astype(bool)
    mm = e[(e.kind == "mmap") & (e.ret >= 0)]
    mu = e[(e.kind == "munmap") & (e.ret == 0)]
    return {"processes": int(e.pid.nunique()), "faults": int(n.sum()),
            "minor": int(n[~major].sum()), "major": int(n[major].sum()),
            "syscalls": int(e.kind.isin(SYSCALLS).sum()),
            "mmap_bytes": int(mm["len"].sum()), "munmap_bytes": int(mu["len"].sum())}


def query_json(root: Path, sql: str, cwd: Path) -> list[dict]:
    """`memtrace query ROOT SQL --json`, run as a user would, parsed."""
    r = subprocess.run(memtrace_cmd("query", str(root), sql, "--json", quiet=False),
                       cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def by_run(rows: list[dict]) -> dict[str, dict]:
    return {r["run"]: {k: int(r[k]) for k in TOTALS} for r in rows}


def spark_skip_reason() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (scripts/setup --with-spark installs it)"
    if shutil.which("java") is None:
        return "no java on PATH: Spark needs a JVM (scripts/setup --with-spark installs one)"
    return None


def spark_run_totals(root: Path) -> list[dict]:
    """run_totals by Spark SQL: the dataset read with spark.read.parquet
    (Hive partition discovery, no schema given), tracer.query's SQL text."""
    from pyspark.sql import SparkSession

    from tracer import query
    spark = (SparkSession.builder.master("local[1]").appName("memtrace-test")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    try:
        spark.sparkContext.setLogLevel("ERROR")
        spark.read.parquet(str(root)).createOrReplaceTempView("events")
        rows = spark.sql(query.VIEWS["run_totals"]).collect()
        return [{**r.asDict(), "date": r["date"].isoformat()} for r in rows]
    finally:
        spark.stop()


# ---- synthetic runs (no BPF): the recorder's own write path ----

def write_run(root: Path, *, faults: int, mmaps: int = 2, major: int = 0,
              hostname: str = "host-a", now: float = 1735787045.0, pid: int = 7,
              token: str | None = None, commit: bool = True, say=lambda s: None):
    """A run of dataset `root` written as `memtrace --dataset` writes one
    (dataset.start_run, writer.Spill, Run.commit), of a process `pid` that
    execs, has its maps read, calls mmap `mmaps` times (one munmap) and
    takes `faults` faults in its anonymous mapping (the first `major` of
    them major). Returns the committed events path, or the Run if not
    `commit`."""
    import numpy as np

    from tracer import _procfs, dataset, layout, trace_rows, writer
    C = layout.C
    run = dataset.start_run(root, now=now, hostname=hostname, token=token)
    comms = trace_rows.CommTable()
    x = np.zeros(1, layout.EXEC)
    x["ts"], x["pid"], x["tid"], x["old_tid"] = 100, pid, pid, pid
    x["comm"], x["filename"] = b"prog", b"/usr/bin/prog"
    anon = 0x10000000
    maps = [_procfs.MapsEntry(0x400000, 0x401000, "r-xp", 0, "08:01", 5, "/usr/bin/prog"),
            _procfs.MapsEntry(anon, anon + (faults + 1) * 4096, "rw-p", 0, "00:00", 0, ""),
            _procfs.MapsEntry(0x7ffd0000, 0x7ffe0000, "rw-p", 0, "00:00", 0, "[stack]")]
    e = np.zeros(mmaps + 2, layout.EVENT)
    e["ts"] = 200 + np.arange(mmaps + 2) * 10
    e["pid"] = e["tid"] = pid
    e["comm"] = b"prog"
    e["kind"][:mmaps] = C["MT_EV_MMAP"]
    e["args"][:mmaps, 1] = 8192
    e["args"][:mmaps, 2] = 3                      # PROT_READ|PROT_WRITE
    e["args"][:mmaps, 3] = 0x22                   # MAP_PRIVATE|MAP_ANONYMOUS
    e["args"][:mmaps, 4] = 2**64 - 1              # fd -1
    e["ret"][:mmaps] = 0x7f0000000000 + np.arange(mmaps) * 0x10000
    e["kind"][mmaps] = C["MT_EV_MUNMAP"]
    e["args"][mmaps, :2] = [0x7f0000000000, 8192]
    e["kind"][mmaps + 1] = C["MT_EV_EXIT"]
    e["ts"][mmaps + 1] = 10**6
    e["flags"][mmaps + 1] = 1                     # the last thread: the process is gone
    f = np.zeros(faults, layout.FAULT)
    f["ts"] = 1000 + np.arange(faults)
    f["pid"] = f["tid"] = pid
    f["addr"] = anon + np.arange(faults) * 4096
    f["ip"] = 0x400100
    f["error_code"] = C["MT_PF_USER"] | C["MT_PF_WRITE"]
    f["flags"][:major] = C["MT_FAULT_MAJOR"]
    f["rss_anon"] = 1
    spill = writer.Spill(run.events)
    spill.write([trace_rows.exec_batch(x, comms),
                 trace_rows.maps_batch(110, pid, "prog", "exec", maps),
                 trace_rows.event_batch(e, comms), trace_rows.fault_batch(f, comms)])
    if not commit:
        spill.close()
        return run
    minor = faults - major
    meta = {"format_version": C["MT_FORMAT_VERSION"], "tool_version": "test",
            "kernel_release": "test", "page_size": 4096, "complete": True, "lost": 0,
            "clock_offset_ns": int(now * 1e9) - 100, "start_ts": 100, "end_ts": 10**6,
            "command": ["/usr/bin/prog", str(faults)], "pids": [pid],
            "processes": {str(pid): "prog"}, "exit_status": 0, "rows": spill.rows,
            "kernel": {"per_pid": {str(pid): {
                "captured_minor": minor, "captured_major": major,
                "kernel_minor": minor, "kernel_major": major}},
                "total": {"captured_minor": minor, "captured_major": major,
                          "kernel_minor": minor, "kernel_major": major}},
            "dataset": run.identity()}
    spill.finish("parquet", meta)
    return run.commit(meta, say=say)
