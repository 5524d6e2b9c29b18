"""`tracer.load(PATH)`: a trace file back as pandas frames."""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from tracer import layout, trace_schema, writer
from tracer.errors import TraceFileError

_NULLABLE = {
    pa.uint64(): pd.UInt64Dtype(), pa.int64(): pd.Int64Dtype(),
    pa.uint32(): pd.UInt32Dtype(), pa.int32(): pd.Int32Dtype(),
    pa.uint16(): pd.UInt16Dtype(), pa.int16(): pd.Int16Dtype(),
    pa.int8(): pd.Int8Dtype(), pa.bool_(): pd.BooleanDtype(),
}

# Columns a trace written before them lacks (docs/format.md): null when it
# is read. The resident-change columns were int16 before: read as int32.
ADDED = (("count", pa.uint32()), ("last_ts", pa.uint64()), ("pages", pa.uint16()))
_WIDER = {c: pa.int32() for c in ("rss_anon", "rss_file", "rss_shmem", "rss_swap")}


def schema() -> pa.Schema:
    """The columns of a trace as loaded: the writer's, with the ADDED ones
    and the wider resident-change columns of traces written before them."""
    fields = [pa.field(f.name, _WIDER.get(f.name, f.type)) for f in trace_schema.SCHEMA]
    have = set(trace_schema.SCHEMA.names)
    return pa.schema(fields + [pa.field(n, t) for n, t in ADDED if n not in have])


def _complete(table: pa.Table) -> pa.Table:
    """The table with the columns of schema(): the ADDED ones it lacks as
    nulls, the resident-change columns widened."""
    cols = []
    for f in schema():
        if f.name not in table.column_names:
            cols.append(pa.nulls(len(table), f.type))
            continue
        c = table.column(f.name)
        cols.append(c.cast(f.type) if f.name in _WIDER and c.type != f.type else c)
    return pa.Table.from_arrays(cols, names=schema().names)


def _required() -> list[str]:
    """The columns every trace has (all but the ADDED ones)."""
    added = {n for n, _ in ADDED}
    return [n for n in trace_schema.SCHEMA.names if n not in added]


class Trace:
    """A loaded trace: `events` (docs/format.md), `meta`, and the address-space
    frames built from them on first use."""

    def __init__(self, table: pa.Table, meta: dict, path: Path) -> None:
        self.path = path
        self.meta = meta
        self.complete = bool(meta.get("complete", False))
        self._table = _complete(table) if table is not None else None

    @cached_property
    def events(self) -> pd.DataFrame:
        df = self._table.to_pandas(types_mapper=_NULLABLE.get)
        # ts, pid, tid are never missing: plain numpy dtypes
        for col, dt in (("ts", "uint64"), ("pid", "int32"), ("tid", "int32")):
            df[col] = df[col].astype(dt)
        df["kind"] = df["kind"].astype(pd.CategoricalDtype(trace_schema.KINDS))
        return df

    @cached_property
    def model(self):  # -> tracer.address_space.AddressSpaces
        from tracer import address_space
        return address_space.build(self.events, page_size=int(self.meta.get("page_size", 4096)))

    @property
    def vmas(self) -> pd.DataFrame:
        return self.model.vmas

    @property
    def faults(self) -> pd.DataFrame:
        """The fault rows joined to their mappings, with `count` (the faults
        each stands for: 1, or a summary row's); a summary row whose pages
        fall in several mappings is one row per mapping, the event's index
        repeated (docs/format.md, Summary fault rows)."""
        return self.model.faults

    @cached_property
    def rss(self) -> pd.DataFrame:
        """Resident bytes over time per process, from the kernel's counters
        (tracer.rss.frame): one row per event that changed them (with
        --rss sampled: per read from /proc that found a change, cause
        `sampled`); empty for a trace recorded with --no-rss."""
        from tracer import rss
        events = self.events
        if self.meta.get("residency") is False:
            events = events.iloc[:0]
        return rss.frame(events, page_size=int(self.meta.get("page_size", 4096)))

    @cached_property
    def stacks(self):  # -> tracer.stacks.Stacks
        """The user stacks recorded with --stacks, each frame named and each
        row's call site (tracer.stacks); empty without --stacks."""
        from tracer import stacks
        return stacks.resolve(self)

    def timeline(self, pid: int) -> pd.DataFrame:
        """The model's timeline of pid with resident bytes beside the virtual
        columns (tracer.rss.join_timeline)."""
        from tracer import rss
        return rss.join_timeline(self.model.timeline(pid), self.rss, pid)

    def maps_at(self, pid: int, ts: int, **kw) -> pd.DataFrame:
        return self.model.maps_at(pid, ts, **kw)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "cut short"
        return f"<Trace {self.path} {len(self._table)} events, {state}>"


def load(path: str | Path, run: int | str | None = None) -> Trace:
    """Reads a trace written by memtrace (Parquet, CSV, or the `.partial`
    spill left by a run that did not finish), or a run of a dataset
    (`--dataset`): its directory, or the dataset's with `run` an index in
    start order (-1: the latest) or a run name (tracer.dataset.load)."""
    p = Path(path)
    if run is not None or p.is_dir():
        from tracer import dataset
        return dataset.load(p, run)
    partial = p.with_name(p.name + writer.PARTIAL_SUFFIX)
    if not p.exists() and partial.exists():
        p = partial
    if not p.exists():
        raise TraceFileError(f"{path}: no such trace file")
    if p.is_dir():
        raise TraceFileError(f"{path}: is a directory, not a trace file")
    if p.stat().st_size == 0:
        raise TraceFileError(f"{path}: empty file, not a trace")
    if p.name.endswith(writer.PARTIAL_SUFFIX):
        table = _read_partial(p)
        meta = {"complete": False, "format_version": layout.C["MT_FORMAT_VERSION"],
                "note": "the run did not finish: events up to its last flush"}
    elif _is_parquet(p):
        table, meta = _read_parquet(p)
    else:
        table, meta = _read_csv(p)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > layout.C["MT_FORMAT_VERSION"]:
        raise TraceFileError(f"{path}: trace format version {version} is newer than this "
                             f"memtrace reads ({layout.C['MT_FORMAT_VERSION']}): upgrade memtrace")
    return Trace(table, meta, p)


def _is_parquet(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"PAR1"


def _read_parquet(p: Path) -> tuple[pa.Table, dict]:
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        raise TraceFileError(f"{p}: not a readable Parquet file ({_first_line(e)})") from None
    raw = (table.schema.metadata or {}).get(writer.META_KEY)
    if raw is None:
        raise TraceFileError(f"{p}: a Parquet file, but not a memtrace trace (no metadata)")
    meta = _meta_of(raw, p)
    missing = [n for n in _required() if n not in table.schema.names]
    if missing:
        raise TraceFileError(f"{p}: not a whole memtrace trace: no column {', '.join(missing)}")
    return table.replace_schema_metadata(None), meta


def _meta_of(raw: bytes | str, p: Path) -> dict:
    """The metadata JSON object, or a TraceFileError saying what is wrong."""
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise TraceFileError(f"{p}: damaged memtrace metadata (not JSON)") from None
    if not isinstance(meta, dict):
        raise TraceFileError(f"{p}: damaged memtrace metadata (not a JSON object)")
    return meta


def _read_csv(p: Path) -> tuple[pa.Table, dict]:
    side = Path(str(p) + ".meta.json")
    if not side.exists():
        raise TraceFileError(f"{p}: not a memtrace trace (no Parquet header, no {side.name})")
    try:
        meta = _meta_of(side.read_bytes(), side)
        full = schema()
        plain = trace_schema.plain_schema(full)
        table = pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(
            column_types=plain, strings_can_be_null=True, quoted_strings_can_be_null=False))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise TraceFileError(f"{p}: not a readable memtrace CSV trace ({_first_line(e)})") from None
    names = table.schema.names
    # the writer's columns in its order; a trace written before the ADDED
    # columns has none of them
    if names != [n for n in plain.names if n in names] or not set(_required()) <= set(names):
        raise TraceFileError(f"{p}: CSV columns are not those of a memtrace trace")
    return table.cast(pa.schema([full.field(n) for n in names])), meta


def _read_partial(p: Path) -> pa.Table:
    batches = []
    try:
        with pa.memory_map(str(p)) as src:
            reader = ipc.open_stream(src)
            try:
                for b in reader:
                    batches.append(b)
            except (pa.ArrowException, OSError):
                pass  # cut mid-batch: keep the whole ones
    except (pa.ArrowException, OSError) as e:
        raise TraceFileError(f"{p}: not a readable memtrace spill ({_first_line(e)})") from None
    return pa.Table.from_batches(batches, trace_schema.SCHEMA).unify_dictionaries()


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
