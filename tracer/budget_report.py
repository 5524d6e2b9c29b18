"""Budget results (tracer.check.Outcome) as text (80 columns), a JSON
object, and JUnit XML (one testcase per limit and process, a failure for
each broken limit, skipped for a limit that could not be checked)."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from tracer.check import NO_STACKS, Outcome, broken
from tracer.errors import OutputError

FIGURE_NAME = {"peak_rss": "resident", "pages_touched": "pages", "minor_faults": "minor", "major_faults": "major",
               "file_write_faults": "writes"}
WIDTH = 80


def fmt(value: int | None, unit: str) -> str:
    if value is None:
        return "?"
    if unit != "bytes":
        return f"{value:,}"
    v = float(value)
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or u == "TiB":
            return f"{v:.0f} {u}" if u == "B" else f"{v:.1f} {u}"
        v /= 1024
    return str(value)


def _mapping_name(row: dict) -> str:
    """"anon 0x7f...", "file r-x libc.so.6", "stack [stack]"."""
    path, kind = row.get("path"), row["kind"]
    if path and path.startswith("/"):
        perms = f"{row['perms'][:3]} " if row.get("perms") else ""
        return f"{kind} {perms}{path.rsplit('/', 1)[-1]}"
    if path:
        return f"{kind} {path}"
    return f"{kind} {row['start']:#x}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"


def verdict(o: Outcome) -> str:
    unit = o.limit.unit
    if o.status == "skipped":
        return o.reason
    rel = ""
    if o.status == "broken" and o.limit.value:
        rel = f" (+{100.0 * (o.measured - o.limit.value) / o.limit.value:.0f}%)"
    op = ">" if o.status == "broken" else "<="
    return f"{fmt(o.measured, unit)} {op} {fmt(o.limit.value, unit)}{rel}"


def _block(o: Outcome, start_ts: int | None) -> list[str]:
    """The lines of one broken limit: verdict, then what is responsible."""
    lines = [f"  BROKEN  {o.who}  {o.limit.name}  {verdict(o)}"]
    pad = " " * 4
    metric = o.limit.metric
    if metric in ("site_mapped", "brk_calls", "mmap_calls", "munmap_calls"):
        if o.sites == NO_STACKS:
            lines.append(f"{pad}call sites: {NO_STACKS}")
            return lines
        head = "bytes" if metric == "site_mapped" else "calls"
        lines.append(f"{pad}{'call site':<50} {head:>12}")
        for r in o.top:
            lines.append(f"{pad}{_cut(str(r['site']), 50):<50} "
                         f"{fmt(r['figure'], 'bytes' if head == 'bytes' else 'calls'):>12}")
        return lines
    if o.at_ts is not None and start_ts is not None:
        lines.append(f"{pad}at the peak, {(o.at_ts - start_ts) / 1e9:.3f} s after the start,"
                     " the largest mappings:")
    if not o.top:
        lines.append(f"{pad}no mapping accounts for it (faults outside known mappings)")
        return lines
    figure = FIGURE_NAME.get(metric, "faults")
    many = len({p for r in o.top for p in r.get("pids", [r["pid"]])}) > 1
    lines.append(f"{pad}{'mapping':<26} {'size':>9} {figure:>8}  faulted most at")
    for r in o.top:
        times = f" x{r['count']}" if r.get("count", 1) > 1 else ""
        one = len(r.get("pids", [r["pid"]])) == 1
        name = (f"{r['pid']} " if many and one else "") + _mapping_name(r)
        name = _cut(name, 26 - len(times)) + times
        value = r["figure"] if metric in FIGURE_NAME else r["faults"]
        site = _cut(r.get("fault_site") or "-", WIDTH - len(pad) - 47)
        lines.append(f"{pad}{_cut(name, 26):<26} {fmt(r['size'], 'bytes'):>9} "
                     f"{value:>8,}  {site}")
        if r.get("mapped_at"):
            lines.append(f"{pad}  mapped at {_cut(str(r['mapped_at']), WIDTH - len(pad) - 12)}")
    if o.sites == NO_STACKS:
        lines.append(f"{pad}mapped at: {NO_STACKS}")
    return lines


def _limits(n: int) -> str:
    return f"{n} limit" if n == 1 else f"{n} limits"


def render(outcomes: list[Outcome], budget, t, only_broken: bool = False) -> str:
    """The report: a head line, then each limit (broken ones with the
    mappings responsible); `only_broken` leaves out the kept ones."""
    bad = broken(outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    verdict_ = (f"{len(bad)} of {_limits(len(outcomes))} broken" if bad
                else f"{_limits(len(outcomes) - skipped)} kept")
    if skipped:
        verdict_ += f", {skipped} not checked"
    head = f"memtrace: budget {budget.source}: {verdict_}"
    if len(head) > WIDTH:                     # a long path: its file name
        head = f"memtrace: budget {Path(budget.source).name}: {verdict_}"
    lines = [head]
    lost = int(t.meta.get("lost", 0) or 0)
    if lost or not t.complete:
        why = f"{lost:,} events were lost" if lost else "the trace was cut short"
        lines.append(f"  note: {why}: the figures are lower bounds")
    start = t.meta.get("start_ts")
    for o in outcomes:
        if o.status == "broken":
            lines.extend(_block(o, start))
        elif not only_broken:
            state = "ok     " if o.status == "ok" else "skipped"
            lines.append(f"  {state} {o.who}  {o.limit.name}  {verdict(o)}")
    return "\n".join(_cut(x, WIDTH) for x in lines)


def as_dict(outcomes: list[Outcome], budget, t) -> dict:
    start = t.meta.get("start_ts")
    results = []
    for o in outcomes:
        results.append({
            "scope": o.scope.kind,
            "selector": {k: v for k, v in (("comm", o.scope.comm), ("exe", o.scope.exe)) if v},
            "process": o.process, "pids": o.pids,
            "limit": o.limit.name, "metric": o.limit.metric, "unit": o.limit.unit,
            "max": o.limit.value, "measured": o.measured, "status": o.status,
            "reason": o.reason or None,
            "at_s": None if o.at_ts is None or start is None else (o.at_ts - start) / 1e9,
            "responsible": o.top,
            "call_sites": NO_STACKS if o.sites == NO_STACKS else "recorded",
        })
    return {"budget": budget.source, "limits": len(outcomes),
            "broken": len(broken(outcomes)),
            "skipped": sum(o.status == "skipped" for o in outcomes),
            "complete": bool(t.complete), "lost": int(t.meta.get("lost", 0) or 0),
            "results": results}


def junit(outcomes: list[Outcome], budget, trace: str, start_ts: int | None = None) -> bytes:
    failures = len(broken(outcomes))
    skipped = sum(o.status == "skipped" for o in outcomes)
    counts = {"tests": str(len(outcomes)), "failures": str(failures), "errors": "0",
              "skipped": str(skipped), "time": "0"}
    root = ET.Element("testsuites", name="memtrace", **counts)
    suite = ET.SubElement(root, "testsuite", name=f"memtrace budget {budget.source}", **counts)
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="trace", value=trace)
    ET.SubElement(props, "property", name="budget", value=budget.source)
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", classname=f"memtrace.{o.who}",
                             name=f"{o.limit.name} <= {fmt(o.limit.value, o.limit.unit)}",
                             time="0")
        if o.status == "broken":
            fail = ET.SubElement(case, "failure", type="memtrace.budget", message=verdict(o))
            fail.text = "\n".join(_block(o, start_ts))
        elif o.status == "skipped":
            ET.SubElement(case, "skipped", message=o.reason)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def check_writable(*paths: Path | None) -> None:
    """Before the work: each output's directory exists (OutputError if not)."""
    for p in paths:
        if p is None:
            continue
        if p.is_dir():
            raise OutputError(f"{p} is a directory: name a file")
        if not p.parent.is_dir():
            raise OutputError(f"cannot write {p}: no directory {p.parent}")


def write_json(path: Path, doc: dict) -> None:
    _write(path, (json.dumps(doc, indent=1, default=_plain) + "\n").encode())


def write_junit(path: Path, outcomes: list[Outcome], budget, trace: str,
                start_ts: int | None = None) -> None:
    _write(path, junit(outcomes, budget, trace, start_ts))


def _plain(v):
    if hasattr(v, "item"):                  # numpy scalars
        return v.item()
    return str(v)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
