"""Memory budgets: the limits a run must keep, read from a small TOML file
(or a pytest marker's keywords), checked before tracing starts.

    # budget.toml
    [total]                     # the whole traced tree
    max_mapped = "512M"
    max_major_faults = 0

    [[process]]                 # each traced process whose name is "faults"
    comm = "faults"
    max_mapped = "96M"
    max_minor_faults = 40000

    [[process]]                 # each process that exec'd a matching file
    exe = "/usr/bin/python3*"
    max_mmap_calls = 200

`comm` and `exe` are shell patterns (fnmatch); `exe` without a `/` matches
the file name only; given both, a process must match both. Sizes are an
integer of bytes or a string "64M", "1.5G", "512K", "100MiB" (K, M, G, T
are powers of 1024; "MB" is refused as ambiguous). Counts are integers.
The limits and the figures they bound (tracer.metrics) are in LIMITS.

This module reads and validates only; it imports no pandas, so the
recorder can check a budget before tracing at no cost. The check of a
trace against a budget is tracer.check.
"""
from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tracer.errors import UsageError

EXIT_BUDGET = 8   # a limit was broken (README: exit codes)

# limit -> (figure of tracer.metrics.PROCESS_METRICS, unit, what it bounds)
LIMITS: dict[str, tuple[str, str, str]] = {
    "max_mapped": ("peak_mapped", "bytes", "peak mapped bytes (all mappings)"),
    "max_heap": ("peak_heap", "bytes", "peak heap bytes (break - heap start)"),
    "max_rss": ("peak_rss", "bytes", "peak resident bytes (anon + file + shmem)"),
    "max_bytes_mapped": ("bytes_mapped", "bytes", "bytes mapped by successful mmap calls"),
    "max_pages_touched": ("pages_touched", "pages", "distinct pages faulted in"),
    "max_minor_faults": ("minor_faults", "faults", "minor page faults"),
    "max_major_faults": ("major_faults", "faults", "major page faults"),
    "max_file_write_faults": ("file_write_faults", "faults",
                              "write faults on file-backed mappings"),
    "max_brk_calls": ("brk_calls", "calls", "brk calls"),
    "max_mmap_calls": ("mmap_calls", "calls", "mmap calls"),
    "max_munmap_calls": ("munmap_calls", "calls", "munmap calls"),
    "max_site_mapped": ("site_mapped", "bytes",
                        "bytes mapped by one call site (needs stacks)"),
}
SELECTORS = ("comm", "exe")
SECTIONS = ("total", "process")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i|ib)?|b)?\s*$", re.I)
_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40}


@dataclass(frozen=True)
class Limit:
    name: str        # a key of LIMITS
    value: int       # bytes, pages, faults or calls: at most this

    @property
    def metric(self) -> str:
        return LIMITS[self.name][0]

    @property
    def unit(self) -> str:
        return LIMITS[self.name][1]


@dataclass
class Scope:
    """`[total]` (the whole tree) or one `[[process]]` table."""
    kind: str                          # "total" or "process"
    limits: list[Limit]
    comm: str | None = None
    exe: str | None = None
    where: str = "[total]"             # for messages: "[[process]] #2"

    def label(self) -> str:
        if self.kind == "total":
            return "total"
        sel = [f"{k}={v!r}" for k, v in (("comm", self.comm), ("exe", self.exe)) if v]
        return " ".join(sel)


@dataclass
class Budget:
    source: str                        # the file, or "marker"
    scopes: list[Scope] = field(default_factory=list)

    @property
    def limits(self) -> int:
        return sum(len(s.limits) for s in self.scopes)


def parse_size(value: object) -> int:
    """64M -> 67108864. An int (bytes) or a string; ValueError if neither."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    m = _SIZE.match(value)
    if not m:
        raise ValueError(value)
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    return int(round(number * (1 << _SHIFT.get(unit, 0))))


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


def _suggest(key: str, choices) -> str:
    renamed = {metric: name for name, (metric, _, _) in LIMITS.items()}
    if key in renamed:                   # the figure's name given for the limit's
        return f" (did you mean {renamed[key]}?)"
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _at(source: str, where: str) -> str:
    return f"{source}: {where}" if where else source


def _limits(table: dict, source: str, where: str, selectors: tuple[str, ...]) -> list[Limit]:
    out = []
    for key, value in table.items():
        if key in selectors:
            continue
        if key not in LIMITS:
            raise UsageError(f"{_at(source, where)}: unknown key {key!r}"
                             f"{_suggest(key, [*LIMITS, *selectors])}")
        unit = LIMITS[key][1]
        try:
            n = parse_size(value) if unit == "bytes" else _count(value)
        except ValueError:
            if unit == "bytes":
                raise UsageError(f"{_at(source, where)}: {key} = {value!r} is not a size (bytes as"
                                 ' an integer, or "64M", "1.5G": K, M, G, T are powers of'
                                 " 1024)") from None
            raise UsageError(f"{_at(source, where)}: {key} = {value!r} is not a count"
                             " (a non-negative integer)") from None
        out.append(Limit(key, n))
    return out


def _scope_of_process(table: object, source: str, where: str) -> Scope:
    if not isinstance(table, dict):
        raise UsageError(f"{_at(source, where)} must be a table of limits")
    for sel in SELECTORS:
        if sel in table and (not isinstance(table[sel], str) or not table[sel]):
            raise UsageError(f"{_at(source, where)}: {sel} must be a non-empty string (a name"
                             " or a shell pattern)")
    if not any(sel in table for sel in SELECTORS):
        raise UsageError(f"{_at(source, where)}: name the processes with comm = \"NAME\" or"
                         " exe = \"PATH\" (or use [total] for the whole tree)")
    limits = _limits(table, source, where, SELECTORS)
    if not limits:
        raise UsageError(f"{_at(source, where)}: no limits (e.g. max_mapped = \"64M\")")
    return Scope("process", limits, comm=table.get("comm"), exe=table.get("exe"), where=where)


def from_dict(doc: dict, source: str) -> Budget:
    """A parsed TOML document -> Budget, or UsageError naming the first
    problem (unknown section or key, a bad size or count, no limits)."""
    budget = Budget(source)
    for key in doc:
        if key not in SECTIONS:
            hint = (" (limits go in [total] or a [[process]] table)" if key in LIMITS
                    else _suggest(key, SECTIONS))
            raise UsageError(f"{source}: unknown section {key!r}{hint}")
    if "total" in doc:
        if not isinstance(doc["total"], dict):
            raise UsageError(f"{source}: total must be a table: [total]")
        limits = _limits(doc["total"], source, "[total]", ())
        if not limits:
            raise UsageError(f"{source}: [total]: no limits (e.g. max_mapped = \"64M\")")
        budget.scopes.append(Scope("total", limits))
    procs = doc.get("process", [])
    if isinstance(procs, dict):          # [process] written for [[process]]: one of them
        procs = [procs]
    for i, table in enumerate(procs, 1):
        budget.scopes.append(_scope_of_process(table, source, f"[[process]] #{i}"))
    if not budget.scopes:
        raise UsageError(f"{source}: no limits: add [total] or [[process]] tables"
                         " (see memtrace check --help)")
    return budget


def load(path: str | Path) -> Budget:
    """Reads and validates a budget file; UsageError (exit 2) if it is bad."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such budget file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a budget file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the budget: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a TOML file (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    return from_dict(doc, str(path))


def from_keywords(kw: dict, source: str = "memtrace marker") -> Budget:
    """A pytest marker's keywords (max_mapped="64M", ..., and optionally
    comm=/exe= to limit each matching process instead of the whole tree)."""
    if any(k in kw for k in SELECTORS):
        return Budget(source, [_scope_of_process(dict(kw), source, "")])
    limits = _limits(dict(kw), source, "", ())
    if not limits:
        raise UsageError(f"{source}: no limits (e.g. max_mapped=\"64M\")")
    return Budget(source, [Scope("total", limits, where=source)])


def describe() -> str:
    """The limits, one per line, for --help."""
    return "\n".join(f"  {name:<22} {what}" for name, (_, _, what) in LIMITS.items())
