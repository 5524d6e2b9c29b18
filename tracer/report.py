"""`memtrace report PATH`: per-process and top-mapping tables from a trace."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from tracer import as_summary
from tracer.errors import OutputError, UsageError
from tracer.trace import Trace, load

KiB = 1024


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see memtrace report --help)")


def main(argv: list[str]) -> int:
    p = _Parser(prog="memtrace report", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a trace written by memtrace (.parquet, .csv)")
    p.add_argument("-n", "--top", type=int, default=10, help="mappings to list (default 10)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="where the plots and report.html go (default: TRACE.report/;"
                   " a dataset's run: RUN/_report/)")
    p.add_argument("--pid", type=int, help="the process to plot (default: the busiest)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="tables only")
    args = p.parse_args(argv)
    t = load(args.path)
    text = render(t, args.top)
    print(text)
    if args.plots:
        from tracer import plots
        if args.pid is not None and args.pid not in set(t.events["pid"].tolist()):
            raise UsageError(f"process {args.pid} is not in {args.path}")
        # in a dataset's run directory: a name Spark skips (`_`)
        outdir = args.output or (t.path.parent / "_report" if "dataset" in t.meta
                                 else Path(str(t.path) + ".report"))
        try:
            written = plots.write(t, outdir, text, args.pid)
        except OSError as e:
            raise OutputError(f"cannot write {outdir}: {e.strerror or e}") from None
        print(f"\nplots: {outdir}/ ({', '.join(sorted(written))})")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def render(t: Trace, top: int = 10) -> str:
    ev, vmas = t.events, t.vmas
    lines = [f"trace {t.path}: {len(ev):,} events"
             + ("" if t.complete else "  (CUT SHORT: the run did not finish)")]
    lost = t.meta.get("lost", 0)
    if lost:
        lines.append(f"LOST {lost:,} events: counts below are lower bounds")
    lines += ["", "processes", f"  {'pid':>7} {'comm':<15} {'faults':>9} {'major':>6} "
              f"{'syscalls':>8} {'peak map':>9} {'touched':>8}"]
    faults = ev[ev["kind"] == "fault"]
    # faults per process: a summary row stands for `count` of them
    n = pd.DataFrame({"pid": faults["pid"].to_numpy(), "n": as_summary.counts(faults)})
    n["major"] = n["n"].where(faults["major"].to_numpy(dtype=bool, na_value=False), 0)
    per_pid = n.groupby("pid").sum()
    sys_kinds = ["brk", "mmap", "munmap", "mremap", "mprotect", "madvise"]
    for pid, g in ev.groupby("pid", sort=True):
        comm = g["comm"].dropna().iloc[-1] if g["comm"].notna().any() else "?"
        nf, nmaj = per_pid.loc[pid] if pid in per_pid.index else (0, 0)
        tl = t.timeline(int(pid))
        peak = tl["mapped"].max() if len(tl) else 0
        touched = tl["pages_touched"].max() if len(tl) else 0
        lines.append(f"  {pid:>7} {str(comm)[:15]:<15} {int(nf):>9,} {int(nmaj):>6,} "
                     f"{int(g['kind'].isin(sys_kinds).sum()):>8,} {_size(peak or 0):>9} "
                     f"{_size(4096 * (touched or 0)):>8}")
    if len(vmas):
        lines += ["", f"top {top} mappings by faults",
                  f"  {'pid':>7} {'start':>14} {'size':>7} {'perms':<5} {'kind':<12} "
                  f"{'faults':>8} {'major':>6} {'pages':>6}  path"]
        for _, v in vmas.sort_values("faults", ascending=False).head(top).iterrows():
            if not v["faults"]:
                break
            path = v["path"] if isinstance(v["path"], str) else ""
            lines.append(f"  {v['pid']:>7} {int(v['start']):>14x} {_size(int(v['size'])):>7} "
                         f"{v['perms']:<5} {str(v['kind']):<12} {int(v['faults']):>8,} "
                         f"{int(v['major']):>6,} {int(v['pages_touched']):>6,}  {path[-30:]}")
        major = vmas[vmas["major"] > 0]
        if len(major):
            by_file = major.groupby(major["path"].fillna("(unnamed file)"))["major"].sum()
            lines += ["", "major faults by file"]
            for path, n in by_file.sort_values(ascending=False).head(top).items():
                lines.append(f"  {int(n):>8,}  {path}")
    from tracer import symbols
    sites = symbols.top_sites(t, top)
    if len(sites):
        lines += ["", f"top {len(sites)} fault call sites (faulting instruction)",
                  f"  {'faults':>8} {'major':>6}  site"]
        for _, s in sites.iterrows():
            where = _named(s["ip_site"], s["ip_module"])
            lines.append(f"  {int(s['faults']):>8,} {int(s['major']):>6,}  {where[:60]}")
    lines += _call_site_tables(t, top)
    cov = t.model.coverage
    lines += ["", f"faults attributed to a mapping: {cov}"]
    return "\n".join(lines)


def _named(site: str, module) -> str:
    """A site with its module's file name, unless the site starts with it
    (an unnamed address is already "module+0xoff"): a symbol says whose."""
    base = module.rsplit("/", 1)[-1] if isinstance(module, str) else ""
    return f"{site} ({base})" if base and not site.startswith(base) else site


def _where(r: pd.Series) -> str:
    """A call site named (_named) with its caller, cut to fit 80 columns
    after the counts."""
    where = _named(str(r["call_site"]), r["call_module"])
    return (where + (f" <- {r['caller']}" if r["caller"] else ""))[:60]


def _call_site_tables(t: Trace, top: int) -> list[str]:
    """The call-site tables of a trace recorded with --stacks (tracer.stacks)."""
    if not t.meta.get("stacks"):
        return ["", "call sites: no stacks recorded (--stacks)"]
    from tracer import stacks
    out = []
    b = stacks.top_call_sites(t, "bytes_mapped", top)
    out += ["", f"top {len(b)} call sites by bytes mapped (mmap length, brk and mremap growth)",
            f"  {_size(b.attrs['with_stack'])} of {_size(b.attrs['total'])} mapped by calls "
            "with a recorded stack",
            f"  {'bytes':>8} {'calls':>6}  call site <- its caller"]
    for _, r in b.iterrows():
        out.append(f"  {_size(r['bytes_mapped']):>8} {int(r['calls']):>6,}  {_where(r)}")
    f = stacks.top_call_sites(t, "faults", top)
    n = f.attrs["sample"]
    how = ("every user-mode fault has a stack (--stacks 1)" if n == 1 else
           f"one user-mode fault in {n} per CPU has a stack: counts x {n}, estimates")
    out += ["", f"top {len(f)} call sites by faults", f"  {how}",
            f"  {f.attrs['with_stack']:,}"
            + (f" ({f.attrs['with_stack'] // n:,} sampled x {n})" if n > 1 else "")
            + f" of {f.attrs['total']:,} user-mode faults with a stack",
            f"  {'faults':>8} {'major':>6}  call site <- its caller"]
    for _, r in f.iterrows():
        out.append(f"  {int(r['faults']):>8,} {int(r['major']):>6,}  {_where(r)}")
    return out
