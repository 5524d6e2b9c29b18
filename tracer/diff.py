"""`memtrace diff OLD NEW`: two traces of the same program side by side:
what changed per process and per mapping, above noise."""
from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from tracer import metrics
from tracer.errors import UsageError
from tracer.trace import load

EXIT_ABOVE = 10   # --fail-above: a change beyond the threshold (README: exit codes)
# below these absolute changes a difference is noise, whatever its ratio
FLOOR = {"bytes": 64 * 1024, "pages": 16, "faults": 16, "calls": 1}
UNITS = dict(metrics.PROCESS_METRICS) | {f"map.{k}": u for k, u in metrics.MAPPING_METRICS}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see memtrace diff --help)")


def main(argv: list[str]) -> int:
    p = _Parser(prog="memtrace diff", description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--noise", type=float, default=2.0, metavar="PCT",
                   help="relative changes up to PCT %% are noise (default 2)")
    p.add_argument("--fail-above", type=float, metavar="PCT",
                   help=f"exit {EXIT_ABOVE} if any change exceeds PCT %%")
    p.add_argument("--all", action="store_true", help="list unchanged figures too")
    args = p.parse_args(argv)
    changes = compare(load(args.old), load(args.new), args.noise)
    if args.json:
        print(json.dumps({"old": args.old, "new": args.new, "noise_pct": args.noise,
                          "changes": changes.to_dict("records")}, indent=1, default=int))
    else:
        print(render(changes, args.old, args.new, args.all))
    if args.fail_above is not None:
        over = changes[changes["above_noise"] & (changes["rel_pct"].abs() > args.fail_above)]
        if len(over):
            print(f"memtrace diff: {len(over)} change(s) above {args.fail_above:g} %",
                  file=sys.stderr)
            return EXIT_ABOVE
    return 0


def compare(old, new, noise_pct: float = 2.0) -> pd.DataFrame:
    """Every figure of both traces: scope (process or process/kind/path),
    metric, old, new, abs, rel_pct, above_noise."""
    rows = []
    po, pn = metrics.per_process(old), metrics.per_process(new)
    for proc in po.index.union(pn.index, sort=False):
        for m, _ in metrics.PROCESS_METRICS:
            rows.append((proc, m, _get(po, proc, m), _get(pn, proc, m)))
    mo, mn = metrics.per_mapping(old), metrics.per_mapping(new)
    for key in mo.index.union(mn.index, sort=False):
        scope = " ".join(str(k) for k in key if k != "") or "?"
        for m, _ in metrics.MAPPING_METRICS:
            rows.append((scope, f"map.{m}", _get(mo, key, m), _get(mn, key, m)))
    df = pd.DataFrame(rows, columns=["scope", "metric", "old", "new"])
    df["abs"] = df["new"] - df["old"]
    df["rel_pct"] = [100.0 * a / o if o else (float("inf") if a else 0.0)
                     for a, o in zip(df["abs"], df["old"])]
    floor = df["metric"].map(lambda m: FLOOR[UNITS[m]])
    df["above_noise"] = (df["abs"].abs() >= floor) & (df["rel_pct"].abs() > noise_pct)
    return df


def _get(frame: pd.DataFrame, key, col: str) -> int:
    return int(frame.loc[key, col]) if key in frame.index else 0


def _fmt(v: int, unit: str) -> str:
    if unit == "bytes":
        for u in ("B", "K", "M", "G", "T"):
            if abs(v) < 1024 or u == "T":
                return f"{v:.0f}{u}" if u == "B" else f"{v:.1f}{u}"
            v /= 1024
    return f"{v:,}"


def render(df: pd.DataFrame, old: str, new: str, show_all: bool = False) -> str:
    lines = [f"old: {old}", f"new: {new}"]
    shown = df if show_all else df[df["above_noise"]]
    if shown.empty:
        return "\n".join(lines + ["no change above noise"])
    lines.append(f"  {'scope':<22} {'figure':<17} {'old':>9} {'new':>9} {'change':>9}")
    for _, r in shown.iterrows():
        unit = UNITS[r["metric"]]
        rel = "new" if r["rel_pct"] == float("inf") else f"{r['rel_pct']:+.0f}%"
        sign = "+" if r["abs"] > 0 else ""
        lines.append(f"  {r['scope'][-22:]:<22} {r['metric'][:17]:<17} "
                     f"{_fmt(r['old'], unit):>9} {_fmt(r['new'], unit):>9} "
                     f"{sign + _fmt(r['abs'], unit):>9} {rel}")
    return "\n".join(lines)
