"""scripts/bench_ab.py --rotate: every tracer once a round, each place taken
equally often, each tracer's time over the first's of the same round (no
privileges: run_once replaced)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402
import bench_ab  # noqa: E402


def test_rotation_orders_and_ratios(monkeypatch, capsys):
    order = []
    # a tracer's time is its factor times the round's base: the base moves
    # from round to round (the machine's drift), the ratios do not
    factor = {"A": 1.0, "B": 1.1, "C": 0.9}

    def run_once(prefix, timer, cmd):
        name = prefix[0]
        order.append(name)
        base = 1.0 + (len(order) - 1) // 3      # one base per round
        t = base * factor[name]
        return {"workload": t, "cpu": t / 2, "wall": t}

    monkeypatch.setattr(bench, "run_once", run_once)
    args = argparse.Namespace(tracers=["A", "B", "C"], pairs=6, workload="w", args="x")
    out = bench_ab._rotated(args, {n: [n] for n in factor}, {"fork_exit_timer": "t"}, ["w"])
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert rounds[:3] == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]
    for place in range(3):       # each tracer first, second and third twice
        assert sorted(r[place] for r in rounds) == ["A", "A", "B", "B", "C", "C"]
    assert out["tracers"] == ["A", "B", "C"] and len(out["rounds"]) == 6
    text = capsys.readouterr().out
    assert "w x: B / A = 1.100 workload" in text and "w x: C / A = 0.900 cpu" in text
    assert "6 rounds" in text


def test_pairs_below_two_refused_at_parse_time():
    """Quartiles need two ratios: --pairs 1 used to run a whole set and then
    fail in statistics.quantiles."""
    for bad in ("1", "0", "x", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="2 or more"):
            bench_ab._at_least_two(bad)
    assert bench_ab._at_least_two("2") == 2
