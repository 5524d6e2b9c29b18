"""`memtrace check BUDGET TRACE`: a recorded trace against a budget
(tracer.budget), and the same check at the end of `memtrace --budget`.

The figures are tracer.metrics' (those `memtrace diff` compares), per
process; `[total]` sums them over the traced tree, except the peaks, which
are the largest sum over the processes at one instant. A broken limit is
reported with the mappings responsible: for a peak, the largest mappings
alive at that instant; for a count, the mappings with most of it; each with
the instruction that faulted most in it (tracer.symbols) and, when the
trace has call stacks of the mapping calls, where it was mapped.
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from tracer import budget as bg
from tracer.errors import UsageError

PEAK_COLUMN = {"peak_mapped": "mapped", "peak_heap": "heap", "peak_rss": "rss_total"}
# per-mapping figure that accounts for a count metric (t.vmas columns)
MAPPING_FIGURE = {"pages_touched": "pages_touched", "minor_faults": "minor",
                  "major_faults": "major", "file_write_faults": "write"}
CALL_KINDS = {"brk_calls": "brk", "mmap_calls": "mmap", "munmap_calls": "munmap"}
NO_STACKS = "no stacks recorded"
TOP = 5


@dataclass
class Outcome:
    """One limit for one process (or the tree): measured against the limit."""
    scope: bg.Scope
    limit: bg.Limit
    process: str | None           # "faults#0" (tracer.metrics.process_key); None: tree
    pids: list[int]
    measured: int | None
    status: str                   # "ok", "broken", "skipped"
    reason: str = ""
    at_ts: int | None = None      # for a peak: when it was
    top: list[dict] = field(default_factory=list)   # the mappings or call sites responsible
    sites: str = ""               # NO_STACKS, or "" when the trace has call stacks

    @property
    def who(self) -> str:
        if self.process is None:
            return "total" if self.scope.kind == "total" else self.scope.label()
        return self.process


def evaluate(t, budget: bg.Budget, exclude: frozenset[int] = frozenset()) -> list[Outcome]:
    """Every limit of `budget` checked on trace `t` (processes in `exclude`
    are left out: the pytest plugin's own process)."""
    from tracer import metrics
    keys = metrics.process_key(t)
    keys = keys[~keys.index.isin(list(exclude))]
    pp = metrics.per_process(t).reindex(keys.to_numpy()).fillna(0) if len(keys) else None
    exe = _exec_paths(t)
    sites = _mmap_sites(t)
    timeline = functools.lru_cache(maxsize=None)(t.timeline)   # asked again per limit
    out: list[Outcome] = []
    for scope in budget.scopes:
        if scope.kind == "total":
            pids = [int(p) for p in keys.index]
            for lim in scope.limits:
                value, at = _tree_figure(t, timeline, pp, pids, lim.metric, sites)
                out.append(_judge(t, scope, lim, None, pids, value, at, sites))
            continue
        matched = [(int(pid), key) for pid, key in keys.items()
                   if _matches(scope, key.rsplit("#", 1)[0], exe.get(int(pid)))]
        if not matched:
            out.extend(Outcome(scope, lim, None, [], None, "skipped",
                               f"no traced process matches {scope.label()}")
                       for lim in scope.limits)
            continue
        for pid, key in matched:
            for lim in scope.limits:
                if lim.metric == "site_mapped":
                    value = _site_mapped(t, [pid], sites)
                else:
                    value = int(pp.loc[key, lim.metric])
                out.append(_judge(t, scope, lim, key, [pid], value,
                                  lambda pid=pid, m=lim.metric: _peak_ts(timeline, pid, m), sites))
    return out


def broken(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status == "broken"]


def _matches(scope: bg.Scope, name: str, exe: str | None) -> bool:
    if scope.comm is not None and not fnmatch.fnmatchcase(name, scope.comm):
        return False
    if scope.exe is not None:
        if exe is None:
            return False
        target = exe if "/" in scope.exe else exe.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(target, scope.exe)
    return True


def _exec_paths(t) -> dict[int, str]:
    """pid -> the file its last exec in the trace ran."""
    ev = t.events
    ex = ev[(ev["kind"] == "exec") & ev["path"].notna()]
    return {int(p): str(x) for p, x in ex.groupby("pid")["path"].last().items()}


def _mmap_sites(t):
    """Call site of each mapping call (a Series on t.events' index), or None
    when the trace has no call stacks. The hook is
    tracer.symbols.mmap_sites(t), which a trace recorded with stacks
    provides; without it every site figure is NO_STACKS."""
    from tracer import symbols
    fn = getattr(symbols, "mmap_sites", None)
    return fn(t) if fn is not None else None


def _judge(t, scope, lim, key, pids, value, at, sites) -> Outcome:
    """`at`: when the peak was, or a function giving it (asked only if the
    limit is broken: it costs a timeline)."""
    if value is None:
        return Outcome(scope, lim, key, pids, None, "skipped",
                       f"{NO_STACKS} (mmap call sites unknown)",
                       sites=NO_STACKS)
    o = Outcome(scope, lim, key, pids, int(value), "ok" if value <= lim.value else "broken",
                sites="" if sites is not None else NO_STACKS)
    if o.status == "broken":
        o.at_ts = at() if callable(at) else at
        o.top = responsible(t, lim.metric, pids, o.at_ts, sites)
    return o


def _peak_ts(timeline, pid: int, metric: str) -> int | None:
    col = PEAK_COLUMN.get(metric)
    if col is None:
        return None
    tl = timeline(pid)
    s = tl[col].astype("float64") if col in tl else None
    if s is None or s.isna().all():
        return None
    return int(s.idxmax())


def _tree_figure(t, timeline, pp, pids: list[int], metric: str, sites) -> tuple[int | None, int | None]:
    if metric == "site_mapped":
        return _site_mapped(t, pids, sites), None
    if not pids:
        return 0, None
    if metric not in PEAK_COLUMN:
        return int(pp[metric].sum()), None
    import pandas as pd
    col = PEAK_COLUMN[metric]
    steps = []
    for pid in pids:        # per process, not per event: the model's timelines
        tl = timeline(pid)
        if col not in tl or not len(tl):
            continue
        s = tl[col].astype("float64").fillna(0.0)
        steps.append(s.diff().fillna(s))
    if not steps:
        return 0, None
    total = pd.concat(steps).sort_index(kind="stable").cumsum()
    return int(total.max()), int(total.idxmax())


def _site_mapped(t, pids: list[int], sites) -> int | None:
    if sites is None:
        return None
    per = _site_bytes(t, pids, sites)
    return int(per.max()) if len(per) else 0


def _site_bytes(t, pids, sites):
    ev = t.events
    ok = (ev["kind"] == "mmap") & ev["pid"].isin(pids) & (ev["ret"].fillna(-1) >= 0)
    rows = ev[ok]
    return rows["len"].astype("int64").groupby(sites.reindex(rows.index)).sum() \
        .sort_values(ascending=False)


def responsible(t, metric: str, pids: list[int], at: int | None, sites) -> list[dict]:
    """The TOP mappings (or call sites) that account for `metric` of `pids`."""
    if metric == "site_mapped":
        per = _site_bytes(t, pids, sites)
        return [{"site": s, "figure": int(b)} for s, b in per.head(TOP).items()]
    if metric in CALL_KINDS:
        if sites is None:
            return []
        ev = t.events
        rows = ev[(ev["kind"] == CALL_KINDS[metric]) & ev["pid"].isin(pids)]
        per = sites.reindex(rows.index).value_counts()
        return [{"site": s, "figure": int(n)} for s, n in per.head(TOP).items()]
    v = t.vmas
    v = v[v["pid"].isin(pids)].assign(unit=_units(v[v["pid"].isin(pids)]))
    if metric in PEAK_COLUMN:
        if at is None:
            return []
        alive = (v["created"] <= at) & (v["destroyed"].isna() | (v["destroyed"] > at))
        now = v[alive.to_numpy(dtype=bool, na_value=False)]
        if metric == "peak_heap":
            now = now[now["kind"] == "heap"]
        weight = now["rss_pages"] if metric == "peak_rss" else now["size"]
        figure = weight.astype("int64").groupby(now["unit"]).sum()
        fault_col = "faults"
    elif metric == "bytes_mapped":
        first = v.sort_values("vma_id").drop_duplicates("unit")
        first = first[first["created_by"] == "mmap"]
        figure = first.set_index("unit")["size"].astype("int64")
        fault_col = "faults"
    else:
        col = MAPPING_FIGURE[metric]
        w = v[v["kind"] == "file"] if metric == "file_write_faults" else v
        figure = w[col].groupby(w["unit"]).sum()
        fault_col = col
    figure = figure[figure > 0]
    return _describe(t, v, figure, fault_col, metric, sites)


def _units(v):
    """A mapping of one process: (pid, lineage) as one int64. A lineage
    (a mapping and its splits, resizes) spans processes: fork copies it."""
    import numpy as np
    return (v["pid"].to_numpy(np.int64) << 32) | v["lineage"].to_numpy(np.int64)


def _describe(t, v, figure, fault_col: str, metric: str, sites) -> list[dict]:
    """The TOP rows of `figure` (unit -> value). Mappings alike (same kind,
    file, address and size: a buffer mapped, unmapped and mapped again, or
    the copies of one in forked children) are one row, `count` of them,
    their values summed."""
    import pandas as pd
    if not len(figure):
        return []
    lin = v[v["unit"].isin(figure.index)].sort_values("vma_id")
    first = lin.drop_duplicates("unit").set_index("unit").loc[figure.index]
    size = lin.groupby("unit")["size"].max().loc[figure.index]
    alike = pd.MultiIndex.from_arrays([first["kind"].astype(str), first["path"].fillna(""),
                                       first["start"], size])
    rep = pd.Series(figure.index, index=figure.index).groupby(pd.factorize(alike)[0]) \
        .transform("min")                              # unit -> its row's first unit
    groups = figure.groupby(rep.to_numpy()).agg(["sum", "size"])
    groups = groups.sort_values("sum", ascending=False, kind="stable").head(TOP)
    row_of = lin["unit"].map(rep)
    counts = lin.groupby(row_of)[fault_col].sum()
    pids = first["pid"].groupby(rep).unique()
    fault_site = _fault_sites(t, lin[row_of.isin(groups.index)], metric, rep)
    rows = []
    for unit, (value, n) in groups.iterrows():
        f = first.loc[unit]
        cause = f["cause_event"]
        mapped_at = None
        if sites is not None and pd.notna(cause) and int(cause) in sites.index:
            mapped_at = sites.loc[int(cause)]
        rows.append({
            "pid": int(f["pid"]), "pids": sorted(int(p) for p in pids.loc[unit]),
            "kind": str(f["kind"]), "perms": str(f["perms"]),
            "path": None if not isinstance(f["path"], str) else f["path"],
            "start": int(f["start"]), "count": int(n),
            # at a peak, what was mapped then; else the mapping at its largest
            "size": int(value) if metric in PEAK_COLUMN else int(size.loc[unit]),
            "figure": int(value), "faults": int(counts.loc[unit]),
            "created_by": str(f["created_by"]),
            "fault_site": fault_site.get(unit), "mapped_at": mapped_at,
        })
    return rows


def _fault_sites(t, lin, metric: str, rep) -> dict[int, str]:
    """row (its first unit, `rep`) -> the instruction that faulted most in
    its mappings (for a count metric, among the faults counted)."""
    import numpy as np
    import pandas as pd
    from tracer import symbols
    f = t.faults
    f = f[f["vma_id"].isin(lin["vma_id"].tolist())]
    major = f["major"].fillna(False).astype(bool)
    if metric == "minor_faults":
        f = f[~major]
    elif metric == "major_faults":
        f = f[major]
    elif metric == "file_write_faults":
        f = f[f["access"] == "write"]
    if not len(f):
        return {}
    s = symbols.fault_sites(SimpleNamespace(faults=f, vmas=t.vmas))["ip_site"]
    unit = _units(t.vmas)[f["vma_id"].to_numpy(dtype=np.int64)]
    row = rep.reindex(unit).to_numpy()
    n = pd.Series(f["count"].to_numpy(np.int64))      # a summary row: `count` faults
    g = n.groupby([row, s.fillna("?").to_numpy()]).sum()
    best = g.sort_values(ascending=False, kind="stable").groupby(level=0).head(1)
    return {int(k[0]): str(k[1]) for k in best.index}


# ---- `memtrace check` ----

EPILOG = """budget file (TOML):
  [total]                 # the whole traced tree
  max_mapped = "512M"
  [[process]]             # each process of that name (comm) or that
  comm = "myprog"         # exec'd that file (exe = "/usr/bin/myprog");
  max_major_faults = 0    # shell patterns

limits (each "at most"):
{limits}

sizes: bytes, or "512K", "64M", "1.5G" (powers of 1024)
exit status: 0 every limit kept, {exit} a limit broken, 2 a bad budget,
5 a bad trace
"""

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see memtrace check --help)")


def main(argv: list[str]) -> int:
    p = _Parser(prog="memtrace check", formatter_class=argparse.RawDescriptionHelpFormatter,
                description=__doc__.split("\n\n")[0],
                epilog=EPILOG.format(limits=bg.describe(), exit=bg.EXIT_BUDGET))
    p.add_argument("budget", metavar="BUDGET", help="budget file (TOML)")
    p.add_argument("trace", metavar="TRACE", help="trace file (.parquet or .csv)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    p.add_argument("--junit", type=Path, metavar="PATH",
                   help="write the results as JUnit XML (a testcase per limit)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only broken limits")
    args = p.parse_args(argv)
    budget = bg.load(args.budget)
    from tracer import budget_report as br
    br.check_writable(args.json, args.junit)
    from tracer.trace import load
    t = load(args.trace)
    outcomes = evaluate(t, budget)
    print(br.render(outcomes, budget, t, only_broken=args.quiet))
    if args.json:
        br.write_json(args.json, {"trace": str(args.trace), **br.as_dict(outcomes, budget, t)})
    if args.junit:
        br.write_junit(args.junit, outcomes, budget, str(args.trace), t.meta.get("start_ts"))
    return bg.EXIT_BUDGET if broken(outcomes) else 0


# ---- `memtrace --budget FILE -- CMD` (record) ----

def add_options(p: argparse.ArgumentParser) -> None:
    """record's --budget, --json, --junit."""
    p.add_argument("--budget", metavar="FILE",
                   help=f"check the run against a budget (TOML; exit {bg.EXIT_BUDGET} if a "
                   "limit is broken; see memtrace check --help)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="write the end-of-run summary (and budget results) as JSON")
    p.add_argument("--junit", type=Path, metavar="PATH",
                   help="write the budget results as JUnit XML (with --budget)")


def prepare(args: argparse.Namespace) -> bg.Budget | None:
    """Before tracing: the budget read and valid, the outputs writable."""
    if args.junit is not None and args.budget is None:
        raise UsageError("--junit writes budget results: give --budget FILE too")
    budget = bg.load(args.budget) if args.budget is not None else None
    from tracer import budget_report as br
    br.check_writable(args.json, args.junit)
    return budget


def after_record(args: argparse.Namespace, budget: bg.Budget | None, res, meta: dict,
                 output: Path, size: int, owner, say) -> bool:
    """After the trace is written: the budget checked (its report on
    stderr), --json and --junit written. True if a limit was broken."""
    if budget is None and args.json is None:
        return False
    from tracer import budget_report as br
    from tracer import capture_files, summary
    doc = summary.as_dict(res, meta, output, size)
    outcomes: list[Outcome] = []
    if budget is not None:
        from tracer.trace import load
        t = load(output)
        outcomes = evaluate(t, budget)
        if broken(outcomes) or not args.quiet:
            print(br.render(outcomes, budget, t, only_broken=args.quiet), file=sys.stderr)
        doc["budget"] = br.as_dict(outcomes, budget, t)
        if args.junit is not None:
            br.write_junit(args.junit, outcomes, budget, str(output), t.meta.get("start_ts"))
            capture_files.chown(args.junit, owner, say)
    if args.json is not None:
        br.write_json(args.json, doc)
        capture_files.chown(args.json, owner, say)
    return bool(broken(outcomes))
