"""Trace datasets: the runs of many commands and hosts as one table
(`memtrace -o DIR --dataset -- CMD`; layout in docs/format.md, "Datasets").

    DIR/host=HOST/date=YYYY-MM-DD/run=RUN/events.parquet   the trace
    DIR/host=HOST/date=YYYY-MM-DD/run=RUN/_memtrace.json   its sidecar

Every events.parquet has the trace schema (tracer.trace_schema.SCHEMA), so
DuckDB's and Spark's Hive partition discovery read DIR as one table with
`host`, `date` and `run` columns. The sidecar's name starts with `_`, which
Spark skips when it lists a table; a run being written lives in
`.run=RUN` (Spark skips a leading dot too, and it does not match
`run=*`) and is renamed into place once whole, so a reader never sees half
a run.

    >>> ds = tracer.load_dataset("fleet")
    >>> ds.runs                         # one row per run, from the sidecars
    >>> t = ds.load(-1)                 # the latest run, a tracer.Trace
    >>> tracer.load("fleet", run="20250101T120000Z-9f3a1c")
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tracer.errors import OutputError, TraceFileError, UsageError

LAYOUT_VERSION = 1
EVENTS = "events.parquet"
SIDECAR = "_memtrace.json"
_RUN_GLOB = "host=*/date=*/run=*"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def partition_value(text: str) -> str:
    """`text` made safe as a Hive partition value and a file name: characters
    other than letters, digits, `.`, `_` and `-` become `_` (engines differ in
    how they unescape %XX, so nothing is escaped)."""
    safe = _UNSAFE.sub("_", text).lstrip(".")
    return safe or "_"


@dataclass
class Run:
    """One run being written into a dataset: `events` is where the trace
    goes; `commit` writes the sidecar and moves the run into place."""

    root: Path
    host: str
    hostname: str
    date: str
    run: str
    staging: Path
    made: list[Path] = field(default_factory=list)    # directories created, to chown

    @property
    def events(self) -> Path:
        return self.staging / EVENTS

    @property
    def final(self) -> Path:
        return self.staging.with_name("run=" + self.run)

    def identity(self) -> dict:
        return {"layout_version": LAYOUT_VERSION, "host": self.host, "hostname": self.hostname,
                "date": self.date, "run": self.run, "events": EVENTS}

    def commit(self, meta: dict, owner: tuple[int, int] | None = None,
               say: Callable[[str], None] = lambda s: None) -> Path:
        """Writes the sidecar (meta, `dataset`, `mappings`), then renames the
        run into place; returns the final events path. The events file must
        be written (Spill.finish) with `meta` already holding `dataset`."""
        side = dict(meta)
        side["dataset"] = self.identity()
        try:
            side["mappings"], side["mappings_error"] = mapping_summary(self.events), None
        except (Exception, KeyboardInterrupt) as e:
            # an analysis bug, or a Ctrl-C while the model is built (it takes
            # seconds on large traces), must not cost the trace its run
            error = "interrupted" if isinstance(e, KeyboardInterrupt) else \
                f"{type(e).__name__}: {e}"
            side["mappings"], side["mappings_error"] = None, error
            say(f"faults per mapping not summarised ({error})")
        tmp = self.staging / (SIDECAR + ".tmp")
        try:
            tmp.write_text(json.dumps(side, indent=1, default=_json_default) + "\n")
            os.replace(tmp, self.staging / SIDECAR)
            # start_run chose a name free in both forms; a run someone made
            # since then in its place is not overwritten (rename fails)
            os.rename(self.staging, self.final)
        except OSError as e:
            raise OutputError(f"cannot write the run {self.final}: {e.strerror or e}") from None
        final = self.final
        if owner is not None:
            from tracer.capture_files import chown
            for p in [*self.made[:-1], final, final / EVENTS, final / SIDECAR]:
                chown(p, owner, say)
        return final / EVENTS

    def abandon(self) -> None:
        """Removes the staging directory if nothing was written in it."""
        try:
            self.staging.rmdir()
        except OSError:
            pass


def start_run(root: Path | None, now: float | None = None, hostname: str | None = None,
              token: str | None = None) -> Run:
    """Makes the hidden directory of a new run of dataset `root` (created if
    its parent exists). The run is named by its start, in UTC, and 24
    random bits (`token`), unique across hosts, containers (whose memtrace
    may have the same pid) and runs in the same second: `20250101T120000Z-9f3a1c`."""
    if root is None:
        raise UsageError("--dataset needs -o DIR, the dataset directory")
    now = time.time() if now is None else now
    hostname = socket.gethostname() if hostname is None else hostname
    host = partition_value(hostname)
    stamp = time.gmtime(now)
    date = time.strftime("%Y-%m-%d", stamp)
    run = time.strftime("%Y%m%dT%H%M%SZ", stamp) + "-" + (token or secrets.token_hex(3))
    if root.exists() and not root.is_dir():
        raise OutputError(f"{root} is a file: --dataset needs a directory")
    if not root.parent.is_dir():
        raise OutputError(f"cannot write {root}: no directory {root.parent}")
    made = []
    try:
        for d in (root, root / f"host={host}", root / f"host={host}" / f"date={date}"):
            try:
                d.mkdir()
                made.append(d)
            except FileExistsError:     # another memtrace's, maybe this instant
                if not d.is_dir():
                    raise OutputError(f"{d} is a file: not a memtrace dataset") from None
        while True:
            staging = _free_name(d / f".run={run}")
            try:
                staging.mkdir()
                break
            except FileExistsError:     # taken between the look and the mkdir
                continue
    except OSError as e:
        raise OutputError(f"cannot write {root}: {e.strerror or e}") from None
    run = staging.name[len(".run="):]
    return Run(root, host, hostname, date, run, staging, made + [staging])


def _free_name(p: Path) -> Path:
    """p, or p-2, p-3, ... whichever (and whose hidden/visible twin) is free."""
    base, n = p.name.lstrip("."), 1
    while True:
        name = base if n == 1 else f"{base}-{n}"
        if not (p.parent / name).exists() and not (p.parent / ("." + name)).exists():
            return p.with_name(("." if p.name.startswith(".") else "") + name)
        n += 1


def mapping_summary(events_path: Path) -> list[dict]:
    """Faults per process and mapping (kind and path), from the
    address-space model: the `mappings` of the sidecar. Every fault of the
    trace is in one row (vma_kind null: the model found no mapping); a
    summary row's faults are split between mappings as t.faults splits
    them (tracer.as_summary.split)."""
    import numpy as np
    import pandas as pd

    from tracer.trace import load
    f = load(events_path).faults
    access = f["access"].astype(object).to_numpy()
    n = f["count"].to_numpy(np.int64)          # a summary row stands for `count` faults
    major = f["major"].to_numpy(dtype=bool, na_value=False)
    g = pd.DataFrame({
        "pid": f["pid"].to_numpy(np.int64),
        "vma_kind": f["vma_kind"].astype(object).to_numpy(),
        "path": f["path"].astype(object).to_numpy(),
        "faults": n, "minor": np.where(major, 0, n), "major": np.where(major, n, 0),
        "read": np.where(access == "read", n, 0), "write": np.where(access == "write", n, 0),
        "exec": np.where(access == "exec", n, 0),
        # a summary row's latency is its faults' mean: times count, their sum
        "latency_ns": f["latency"].to_numpy(np.int64, na_value=0) * n,
    }).groupby(["pid", "vma_kind", "path"], dropna=False, sort=True).sum().reset_index()
    g = g.astype(object).where(g.notna(), None)
    return g.to_dict("records")


# ---- reading ----

def is_run_dir(p: Path) -> bool:
    return (p / EVENTS).exists() or (p / (EVENTS + ".partial")).exists()


def run_dirs(root: Path) -> list[Path]:
    """The whole (committed) runs of dataset `root`, sorted by path."""
    return sorted(p for p in root.glob(_RUN_GLOB) if (p / EVENTS).is_file())


def partial_runs(root: Path) -> list[Path]:
    """Runs being written, or left by a memtrace that was killed."""
    return sorted(p for p in root.glob("host=*/date=*/.run=*") if p.is_dir())


def read_sidecar(run_dir: Path) -> dict:
    side = run_dir / SIDECAR
    try:
        meta = json.loads(side.read_bytes())
    except FileNotFoundError:
        raise TraceFileError(f"{run_dir}: a run without its {SIDECAR}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise TraceFileError(f"{side}: not a readable memtrace sidecar ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("dataset"), dict):
        raise TraceFileError(f"{side}: not a memtrace sidecar (no `dataset` object)")
    return meta


class Dataset:
    """The runs of a dataset directory: `runs` (a DataFrame, one row per
    run, the `runs` table of `memtrace query`), `load(selector)`, iteration
    (one tracer.Trace per run, loaded as it is reached), `query(sql)`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise TraceFileError(f"{root}: no such dataset directory")
        self.paths = run_dirs(self.root)
        self.sidecars = [read_sidecar(p) for p in self.paths]
        # oldest first: by start time, then host and run
        order = sorted(range(len(self.paths)), key=lambda i: (
            _start_ns(self.sidecars[i]) or 0, str(self.paths[i])))
        self.paths = [self.paths[i] for i in order]
        self.sidecars = [self.sidecars[i] for i in order]

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator:
        return (self.load(i) for i in range(len(self)))

    @property
    def partial(self) -> list[Path]:
        return partial_runs(self.root)

    @property
    def runs(self):  # -> pandas.DataFrame
        from tracer import query
        return query.runs_table(self.paths, self.sidecars).to_pandas()

    @property
    def mappings(self):  # -> pandas.DataFrame
        from tracer import query
        return query.mappings_table(self.paths, self.sidecars).to_pandas()

    def select(self, run: int | str) -> Path:
        """A run's directory: `run` an index in start order (-1: the
        latest), a run name, or a path below the root
        (`host=H/date=D/run=R`)."""
        if isinstance(run, int):
            if not -len(self) <= run < len(self):
                raise TraceFileError(f"{self.root}: no run {run} (the dataset has {len(self)})")
            return self.paths[run]
        hits = [p for p in self.paths if p.name == f"run={run}"
                or p.relative_to(self.root).as_posix() == str(run).strip("/")]
        if len(hits) != 1:
            names = ", ".join(p.relative_to(self.root).as_posix() for p in (hits or self.paths)[:4])
            what = "is ambiguous" if hits else "matches no run"
            raise TraceFileError(f"{self.root}: run {run!r} {what} ({names}"
                                 f"{', ...' if len(hits or self.paths) > 4 else ''})")
        return hits[0]

    def load(self, run: int | str):  # -> tracer.Trace
        return load_run(self.select(run))

    def query(self, sql: str):  # -> pandas.DataFrame
        from tracer import query
        with query.connect(self) as con:
            return con.execute(sql).df()

    def __repr__(self) -> str:
        return f"<Dataset {self.root} {len(self)} runs>"


def load_dataset(root: str | Path) -> Dataset:
    """A dataset directory (`memtrace -o DIR --dataset`) and its runs."""
    return Dataset(root)


def load_run(run_dir: Path):  # -> tracer.Trace
    """One run's trace, its metadata from the sidecar (a run cut short,
    which has none, from the spill, with `dataset` from its path)."""
    from tracer.trace import load
    t = load(run_dir / EVENTS)
    if (run_dir / SIDECAR).exists():
        t.meta = read_sidecar(run_dir)
    elif "dataset" not in t.meta:
        t.meta["dataset"] = _identity_of(run_dir)
    return t


def load(path: Path, run: int | str | None = None):  # -> tracer.Trace
    """tracer.load for a directory: a run directory, or a dataset root with
    `run` selecting one (Dataset.select), or holding only one."""
    if not path.is_dir():
        raise TraceFileError(f"{path}: run= selects a run of a dataset directory")
    if is_run_dir(path):
        if run is not None:
            raise TraceFileError(f"{path}: is one run already; run= is for the dataset root")
        return load_run(path)
    ds = Dataset(path)
    if run is None:
        if len(ds) != 1:
            what = "no memtrace runs" if not len(ds) else f"a dataset of {len(ds)} runs"
            raise TraceFileError(f"{path}: is a directory with {what}: give a trace file, a run "
                                 "directory, or run=... (tracer.load_dataset for all runs)")
        run = 0
    return ds.load(run)


def _identity_of(run_dir: Path) -> dict:
    """host, date and run from a run directory's path (`.run=` too)."""
    parts = [part.lstrip(".").split("=", 1) for part in run_dir.parts[-3:]]
    return {k: v for k, v in (x for x in parts if len(x) == 2) if k in ("host", "date", "run")}


def _start_ns(meta: dict) -> int | None:
    """A run's start as Unix time in ns (start_ts is CLOCK_MONOTONIC)."""
    try:
        return int(meta["start_ts"]) + int(meta["clock_offset_ns"])
    except (KeyError, TypeError, ValueError):
        return None


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):      # numpy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
