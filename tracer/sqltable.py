"""Query results as text that fits a terminal of 80 columns.

A table whose columns fit side by side is printed as one; text columns too
wide are cut (ending in `~`), widest first, down to their header's width or 8
characters; numbers are never cut. If it still does not fit, each row is
printed as a record, one `column | value` line per column (as psql's `\\x`).
"""
from __future__ import annotations

import datetime
import decimal
from typing import Any, Sequence

WIDTH = 80
GAP = "  "
_MIN = 8


def cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, datetime.datetime):   # no trailing zeros of the fraction
        spec = "seconds" if not v.microsecond else \
            "milliseconds" if not v.microsecond % 1000 else "microseconds"
        return v.isoformat(sep=" ", timespec=spec)
    if isinstance(v, (datetime.date, decimal.Decimal)):
        return str(v)
    return str(v).replace("\n", " ")


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "~"


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int = WIDTH) -> str:
    """The rows as an aligned table, or as records if no table fits."""
    text = [[cell(v) for v in r] for r in rows]
    right = [bool(rows) and all(_numeric(r[i]) or r[i] is None for r in rows)
             for i in range(len(columns))]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]
    total = sum(widths) + len(GAP) * (len(columns) - 1)
    # shrink the widest cuttable column, a character at a time
    floor = [w if right[i] else min(w, max(len(columns[i]), _MIN)) for i, w in enumerate(widths)]
    while total > width:
        i = max(range(len(widths)), key=lambda j: widths[j] - floor[j])
        if widths[i] <= floor[i]:
            return _records(columns, text, width)
        widths[i] -= 1
        total -= 1
    out = [GAP.join(_align(c, widths[i], right[i]) for i, c in enumerate(columns)).rstrip(),
           GAP.join("-" * w for w in widths)]
    for r in text:
        out.append(GAP.join(_align(_cut(v, widths[i]), widths[i], right[i])
                            for i, v in enumerate(r)).rstrip())
    return "\n".join(out)


def _align(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _records(columns: Sequence[str], text: list[list[str]], width: int) -> str:
    key = max(len(c) for c in columns)
    room = max(width - key - 3, _MIN)
    out = []
    for n, r in enumerate(text, 1):
        out.append(f"-[ row {n} ]".ljust(width, "-"))
        out.extend(f"{c.ljust(key)} | {_cut(v, room)}" for c, v in zip(columns, r))
    return "\n".join(out)


def wrap(head: str, items: Sequence[str], indent: int, width: int = WIDTH) -> list[str]:
    """`head` then the items, comma-separated, wrapped at `width`."""
    lines, line = [], head
    for i, item in enumerate(items):
        word = item + ("," if i < len(items) - 1 else "")
        if len(line) + len(word) + 1 > width and line.strip() and line != head:
            lines.append(line.rstrip())
            line = " " * indent
        line += word + " "
    lines.append(line.rstrip())
    return lines
