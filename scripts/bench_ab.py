"""Two tracers (or a tracer and none) compared on one workload, run after
run: the paired ratio B/A of the workload's time, fork to exit and CPU.

On this kind of VM a workload's time moves +-15% from one run to the next
whatever traces it, so a difference of a few percent between two memtrace
variants drowns in `scripts/bench`'s medians. Here A and B alternate (ABBA),
each pair gives B/A, and the median of many pairs is printed with its
quartiles and a 95% confidence interval (bench.median_ci: distribution-free,
from the order statistics), for the workload's time from fork to exit and
for its CPU time, both read from the same runs. Tracer names are
scripts/bench's (`untraced`, `memtrace`, `memtrace-latency`,
`memtrace-norss`, `memtrace-summary`, ...); `untraced untraced` gives the
spread of the measure itself (A/A).

    sudo .venv/bin/python scripts/bench_ab.py [--pairs 30] [--workload faults]
         [--args "64 8"] [--json F] [--settle S] A B [A B ...]
    sudo .venv/bin/python scripts/bench_ab.py --rotate [...] A B [C ...]

Pairs of one set are measured one set after the other; sets an hour apart
differed by 1.3% where the two tracers, paired directly, did not
(docs/benchmarks.md, seventeenth session). `--rotate` compares several
tracers in one set: each round (--pairs of them) runs every tracer once,
in an order rotated by one each round, and each tracer's time is divided
by the first's of the same round.

`MEMTRACE_BASE=DIR` adds `memtrace-base`, `memtrace-base-summary`,
`memtrace-base-sampled` and `memtrace-base-a`: the memtrace of the checkout
in DIR.

Without --args the workload runs as scripts/bench runs it (faults: 256 MiB x
8, the 524k faults of issue 4; churn: 100000), so that the two scripts'
figures are of one workload: this script's earlier default, "64 8", gave
summary mode 1.02-1.05 where `faults 256 8` gives 1.12 (docs/benchmarks.md,
tenth session).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the tracers, the workloads, run_once)


def _at_least_two(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"not an integer of 2 or more: {text!r}")
    return int(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=_at_least_two, default=30,
                    help="pairs (rounds with --rotate); quartiles need two")
    ap.add_argument("--workload", default="faults")
    ap.add_argument("--args", help="the workload's arguments (default: scripts/bench's)")
    ap.add_argument("--json", help="write every pair's times here")
    ap.add_argument("--settle", type=float, default=bench.SETTLE_S,
                    help="seconds of quiet before each run, once the run before's "
                         "programs are gone (default %(default)s: bench.SETTLE_S)")
    ap.add_argument("--rotate", action="store_true",
                    help="A B [C ...] in one set: each round runs them all, in an "
                         "order rotated by one each round; B/A, C/A ... per round")
    ap.add_argument("tracers", nargs="+", help="A B [A B ...]")
    args = ap.parse_args()
    bench.SETTLE_S = args.settle
    if args.rotate and len(args.tracers) < 2:
        ap.error("--rotate: at least two tracers")
    if not args.rotate and len(args.tracers) % 2:
        ap.error("tracers come in pairs: A B")
    out = []
    with tempfile.TemporaryDirectory(prefix="memtrace-ab-") as d:
        tmp = Path(d)
        exes = bench.build(tmp)
        cmd = bench.workloads(exes, tmp)[args.workload]
        if args.args is not None:
            cmd = [*cmd[:1], *args.args.split()]
        args.args = " ".join(cmd[1:]) or "(its defaults)"
        tr = bench.tracers(tmp)
        if args.rotate:
            out.append(_rotated(args, tr, exes, cmd))
        else:
            out.extend(_paired(args, a, b, tr, exes, cmd)
                       for a, b in zip(args.tracers[::2], args.tracers[1::2]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _report(args, a: str, b: str, pairs: list[tuple[dict, dict]], unit: str) -> None:
    for measure in ("workload", "cpu"):
        ratios = [tb[measure] / ta[measure] for ta, tb in pairs]
        q = statistics.quantiles(ratios, n=4)
        lo, hi = bench.median_ci(ratios)
        print(f"{args.workload} {args.args}: {b} / {a} = {statistics.median(ratios):.3f} "
              f"{measure} (95% CI {lo:.3f}..{hi:.3f}, quartiles {q[0]:.3f}..{q[2]:.3f}; "
              f"{a} {statistics.median(ta[measure] for ta, _ in pairs):.3f} s, "
              f"{b} {statistics.median(tb[measure] for _, tb in pairs):.3f} s; "
              f"{len(pairs)} {unit})", flush=True)


def _paired(args, a: str, b: str, tr: dict, exes: dict, cmd: list[str]) -> dict:
    """A and B alternated (ABBA), B/A per pair."""
    pairs = []
    for i in range(args.pairs):
        t = {}
        # by position, so that `untraced untraced` measures the noise (A/A)
        for pos in ((0, 1) if i % 2 == 0 else (1, 0)):
            t[pos] = bench.run_once(tr[(a, b)[pos]], exes["fork_exit_timer"], cmd)
        pairs.append(t)
    _report(args, a, b, [(t[0], t[1]) for t in pairs], "pairs")
    return {"workload": args.workload, "args": args.args, "a": a, "b": b,
            "pairs": [[t[0], t[1]] for t in pairs]}


def _rotated(args, tr: dict, exes: dict, cmd: list[str]) -> dict:
    """--rotate: every tracer once a round, the order rotated each round
    (so each takes each place equally often), each against the first
    tracer's run of the same round: tracers compared in the same stretch
    of the machine's time, not in sets an hour apart."""
    names = args.tracers
    rounds = []
    for i in range(args.pairs):
        t = {}
        for k in range(len(names)):
            pos = (i + k) % len(names)
            t[pos] = bench.run_once(tr[names[pos]], exes["fork_exit_timer"], cmd)
        rounds.append([t[k] for k in range(len(names))])
    for k in range(1, len(names)):
        _report(args, names[0], names[k], [(r[0], r[k]) for r in rounds], "rounds")
    return {"workload": args.workload, "args": args.args, "tracers": names, "rounds": rounds}


if __name__ == "__main__":
    sys.exit(main())
