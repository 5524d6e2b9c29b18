"""`memtrace query DIR "SQL"`: SQL over a trace dataset with DuckDB.

The tables (docs/format.md, "Datasets"): `events` (every run's events,
with host, date and run), the views `faults`, `syscalls` and `run_totals`
over it, and `runs`, `processes`, `mappings` from the runs' sidecars.
`memtrace query DIR` without SQL lists them with their columns.

The views are written in SQL that Spark SQL runs unchanged over
`spark.read.parquet(DIR)` (tests/integration/test_dataset_live.py runs
run_totals in both and compares).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import decimal
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from tracer import dataset
from tracer.errors import SetupError, TraceFileError, UsageError

SYSCALLS = ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise")
_IN_SYSCALLS = "(" + ", ".join(f"'{k}'" for k in SYSCALLS) + ")"

# the faults a fault row stands for: `count` (a summary row's), 1 in a
# trace written before the column (null there)
_N = "COALESCE(count, 1)"

VIEWS = {
    # one row per run: the figures a fleet compares run against run
    "run_totals": f"""
SELECT host, date, run,
       COUNT(DISTINCT pid) AS processes,
       CAST(SUM(CASE WHEN kind = 'fault' THEN {_N} ELSE 0 END) AS BIGINT) AS faults,
       CAST(SUM(CASE WHEN kind = 'fault' AND NOT major THEN {_N} ELSE 0 END) AS BIGINT)
            AS minor,
       CAST(SUM(CASE WHEN kind = 'fault' AND major THEN {_N} ELSE 0 END) AS BIGINT) AS major,
       CAST(SUM(CASE WHEN kind IN {_IN_SYSCALLS} THEN 1 ELSE 0 END) AS BIGINT) AS syscalls,
       CAST(SUM(CASE WHEN kind = 'mmap' AND ret >= 0 THEN CAST(len AS BIGINT) ELSE 0 END)
            AS BIGINT) AS mmap_bytes,
       CAST(SUM(CASE WHEN kind = 'munmap' AND ret = 0 THEN CAST(len AS BIGINT) ELSE 0 END)
            AS BIGINT) AS munmap_bytes
FROM events
GROUP BY host, date, run""",
    # error_code bits (x86): 2 write, 4 user mode, 16 instruction fetch
    "faults": f"""
SELECT host, date, run, ts, pid, tid, comm, addr, ip, major,
       (error_code & 2) <> 0 AS is_write, (error_code & 4) <> 0 AS is_user,
       (error_code & 16) <> 0 AS is_fetch, latency,
       rss_anon, rss_file, rss_shmem, rss_swap,
       CAST({_N} AS BIGINT) AS count, last_ts, pages
FROM events WHERE kind = 'fault'""",
    "syscalls": f"""
SELECT host, date, run, ts, pid, tid, comm, kind AS call, addr, len, prot,
       flags, fd, off, new_len, new_addr, ret, duration, ret >= 0 AS ok
FROM events WHERE kind IN {_IN_SYSCALLS}""",
}

_SQL_TYPES = {pa.uint32(): "UINTEGER", pa.uint64(): "UBIGINT", pa.uint16(): "USMALLINT"}
_KEY = [("host", pa.string()), ("date", pa.date32()), ("run", pa.string())]
RUNS = pa.schema(_KEY + [
    ("hostname", pa.string()), ("command", pa.string()), ("start", pa.timestamp("ms")),
    ("seconds", pa.float64()), ("complete", pa.bool_()), ("exit_status", pa.int64()),
    ("processes", pa.int64()), ("events", pa.int64()), ("lost", pa.int64()),
    ("captured_minor", pa.int64()), ("captured_major", pa.int64()),
    ("kernel_minor", pa.int64()), ("kernel_major", pa.int64()),
    ("kernel_release", pa.string()), ("tool_version", pa.string()), ("path", pa.string()),
])
PROCESSES = pa.schema(_KEY + [
    ("pid", pa.int64()), ("comm", pa.string()),
    ("kernel_minor", pa.int64()), ("kernel_major", pa.int64()),
])
MAPPINGS = pa.schema(_KEY + [
    ("pid", pa.int64()), ("vma_kind", pa.string()), ("path", pa.string()),
    ("faults", pa.int64()), ("minor", pa.int64()), ("major", pa.int64()),
    ("read", pa.int64()), ("write", pa.int64()), ("exec", pa.int64()),
    ("latency_ns", pa.int64()),
])


def _key(meta: dict) -> dict:
    d = meta["dataset"]
    return {"host": d.get("host"), "run": d.get("run"),
            "date": datetime.date.fromisoformat(d["date"]) if d.get("date") else None}


def runs_table(paths: list[Path], sidecars: list[dict]) -> pa.Table:
    """One row per run, from the sidecars."""
    rows = []
    for path, m in zip(paths, sidecars):
        total = (m.get("kernel") or {}).get("total") or {}
        start = dataset._start_ns(m)
        cmd = m.get("command")
        rows.append({**_key(m), "hostname": m["dataset"].get("hostname"),
                     "command": shlex.join(cmd) if isinstance(cmd, list) else cmd,
                     "start": None if start is None else
                     datetime.datetime.fromtimestamp(start // 10**6 / 1e3, datetime.UTC)
                     .replace(tzinfo=None),
                     "seconds": (m["end_ts"] - m["start_ts"]) / 1e9
                     if m.get("end_ts") is not None and m.get("start_ts") is not None else None,
                     "complete": m.get("complete"), "exit_status": m.get("exit_status"),
                     "processes": len(m.get("pids") or []), "events": m.get("rows"),
                     "lost": m.get("lost"),
                     **{k: total.get(k) for k in ("captured_minor", "captured_major",
                                                  "kernel_minor", "kernel_major")},
                     "kernel_release": m.get("kernel_release"),
                     "tool_version": m.get("tool_version"), "path": str(path)})
    return pa.Table.from_pylist(rows, RUNS)


def processes_table(sidecars: list[dict]) -> pa.Table:
    """One row per traced process of each run: its name when first seen and
    the kernel's fault counts (null where they were not read: children
    reaped by their parent count in the run's wait4 total)."""
    rows = []
    for m in sidecars:
        per_pid = (m.get("kernel") or {}).get("per_pid") or {}
        for pid, comm in (m.get("processes") or {}).items():
            k = per_pid.get(pid) or {}
            rows.append({**_key(m), "pid": int(pid), "comm": comm,
                         "kernel_minor": k.get("kernel_minor"),
                         "kernel_major": k.get("kernel_major")})
    return pa.Table.from_pylist(rows, PROCESSES)


def mappings_table(paths: list[Path], sidecars: list[dict]) -> pa.Table:
    """Faults per run, process and mapping (the sidecars' `mappings`)."""
    rows = [{**_key(m), **r} for m in sidecars for r in (m.get("mappings") or [])]
    return pa.Table.from_pylist(rows, MAPPINGS)


def connect(ds: "dataset.Dataset"):  # -> duckdb.DuckDBPyConnection
    """An in-memory DuckDB with the dataset's tables and views."""
    try:
        import duckdb
    except ImportError:
        raise SetupError("memtrace query needs DuckDB: scripts/setup installs it, "
                         "or pip install 'memtrace[sql]'") from None
    from tracer.trace import ADDED, schema
    con = duckdb.connect()
    if ds.paths:
        files = ", ".join(_literal(str(p / dataset.EVENTS)) for p in ds.paths)
        # runs written before a column was added (tracer.trace.ADDED) lack
        # it: by name, null there; and null everywhere if no run has it
        read = (f"read_parquet([{files}], hive_partitioning = true, union_by_name = true, "
                "hive_types = {'host': VARCHAR, 'date': DATE, 'run': VARCHAR})")
        try:     # reads the files' footers: a damaged one fails here
            have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {read}").fetchall()}
        except duckdb.Error as e:
            raise TraceFileError(f"{ds.root}: a run's events are unreadable: {_first_line(e)}"
                                 ) from None
        added = "".join(f", CAST(NULL AS {_SQL_TYPES[t]}) AS {n}"
                        for n, t in ADDED if n not in have)
        con.execute(f"CREATE VIEW events AS SELECT *{added} FROM {read}")
    else:
        empty = pa.schema([pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type)
                                    else f.type) for f in schema()] + _KEY).empty_table()
        con.register("_no_events", empty)
        con.execute("CREATE VIEW events AS SELECT * FROM _no_events")
    for name, table in (("runs", runs_table(ds.paths, ds.sidecars)),
                        ("_processes", processes_table(ds.sidecars)),
                        ("mappings", mappings_table(ds.paths, ds.sidecars))):
        con.register(name, table)
    for name, sql in {**VIEWS, "processes": PROCESSES_VIEW}.items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con


# The sidecar's processes (names at first sight: a forked child's is its
# parent's) with the name and program each had last and its faults, from
# the events.
PROCESSES_VIEW = """
WITH ev AS (
    SELECT host, run, pid,
           arg_max(comm, ts) FILTER (WHERE comm IS NOT NULL) AS comm,
           arg_max(path, ts) FILTER (WHERE kind = 'exec') AS exe,
           CAST(sum(COALESCE(count, 1)) FILTER (WHERE kind = 'fault') AS BIGINT) AS faults,
           CAST(sum(COALESCE(count, 1)) FILTER (WHERE kind = 'fault' AND major) AS BIGINT)
               AS major
    FROM events GROUP BY host, run, pid)
SELECT p.host, p.date, p.run, p.pid, coalesce(ev.comm, p.comm) AS comm, ev.exe,
       coalesce(ev.faults, 0) AS faults, coalesce(ev.major, 0) AS major,
       p.kernel_minor, p.kernel_major
FROM _processes p LEFT JOIN ev USING (host, run, pid)"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---- the command ----

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise UsageError(f"{message} (see memtrace query --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="memtrace query", description="SQL (DuckDB) over a trace dataset "
                "(memtrace -o DIR --dataset). Without SQL: the tables and their columns.")
    p.add_argument("dir", type=Path, metavar="DIR", help="the dataset directory")
    p.add_argument("sql", nargs="?", metavar="SQL", help="the query")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV with a header line")
    out.add_argument("--json", action="store_true", help="a JSON array of objects")
    p.add_argument("--max-rows", type=int, default=100, metavar="N",
                   help="rows the table shows (default 100; 0: all; CSV and JSON: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.max_rows < 0:
        raise UsageError(f"--max-rows must be 0 (all) or more, not {args.max_rows}")
    if args.dir.exists() and not args.dir.is_dir():
        raise TraceFileError(f"{args.dir}: is a file, not a dataset directory")
    ds = dataset.Dataset(args.dir)
    if not len(ds):
        raise TraceFileError(f"{args.dir}: no memtrace runs in it "
                             f"(no host=*/date=*/run=*/{dataset.EVENTS})")
    con = connect(ds)
    if args.sql is None:
        return _print(_tables(con))
    if not args.sql.strip():
        raise UsageError("the SQL is empty")
    import duckdb
    try:
        cur = con.execute(args.sql)
        if cur.description is None:      # a statement without rows (CREATE ...)
            return 0
        cols = [d[0] for d in cur.description]
        if args.csv:
            return _print(_csv(cols, _stream(cur)))
        if args.json:
            return _print(_json(cols, _stream(cur)))
        limit = args.max_rows if args.max_rows > 0 else None
        rows = cur.fetchall() if limit is None else cur.fetchmany(limit + 1)
    except duckdb.Error as e:
        # a file of the dataset that cannot be read (IO, or damaged: named
        # in the message), else the query itself
        if isinstance(e, duckdb.IOException) or any(
                str(p / dataset.EVENTS) in str(e) for p in ds.paths):
            raise TraceFileError(f"query: {_first_line(e)}") from None
        raise UsageError(f"query: {_first_line(e)}") from None
    more = limit is not None and len(rows) > limit
    from tracer.sqltable import render
    return _print([render(cols, rows[:limit] if more else rows),
                   _footer(len(rows) - more, more)])


def _footer(n: int, more: bool) -> str:
    if more:
        return f"(first {n} rows; --max-rows 0, --csv or --json for all)"
    return f"({n} row{'s' if n != 1 else ''})"


def _stream(cur, size: int = 10000) -> Iterable[tuple]:
    while True:
        rows = cur.fetchmany(size)
        if not rows:
            return
        yield from rows


def _tables(con) -> list[str]:
    from tracer.sqltable import wrap
    lines = []
    for name in ("events", "faults", "syscalls", "run_totals", "runs", "processes", "mappings"):
        cols = [r[0] for r in con.execute(f"DESCRIBE {name}").fetchall()]
        lines.extend(wrap(f"{name:<10}  ", cols, indent=12))
    return lines


def _csv(cols: list[str], rows: Iterable[tuple]) -> Iterable[str]:
    class Line:
        def write(self, s: str) -> None:
            self.s = s
    line = Line()
    w = csv.writer(line, lineterminator="")
    w.writerow(cols)
    yield line.s
    for r in rows:
        w.writerow([_csv_cell(v) for v in r])
        yield line.s


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    v = _plain(v)
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _json(cols: list[str], rows: Iterable[tuple]) -> Iterable[str]:
    """A JSON array, one object per line."""
    yield "["
    prev = None
    for r in rows:
        if prev is not None:
            yield prev + ","
        prev = json.dumps(dict(zip(cols, map(_plain, r))))
    if prev is not None:
        yield prev
    yield "]"


def _plain(v: Any) -> Any:
    """A DuckDB value as JSON (and CSV) hold it."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, datetime.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return str(v)      # intervals, UUIDs, ...


def _print(lines: Iterable[str]) -> int:
    try:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:   # `| head`: the reader has what it wanted
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
