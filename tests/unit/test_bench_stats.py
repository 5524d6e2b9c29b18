"""scripts/bench.py's confidence interval of a median (no privileges)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench  # noqa: E402


@pytest.mark.parametrize("n, lo, hi", [(10, 2, 9), (20, 6, 15), (30, 10, 21), (100, 40, 61)])
def test_median_ci_is_the_tables_order_statistics(n, lo, hi):
    """The 95% interval is the order statistics tables of the sign test
    give (1-based ranks), whatever order the values come in."""
    xs = list(range(1, n + 1))
    random.Random(n).shuffle(xs)
    assert bench.median_ci(xs) == (lo, hi)


def test_median_ci_of_few_values_is_their_range():
    assert bench.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)


def test_median_ci_covers_the_median_as_often_as_it_says():
    rng = random.Random(7)
    runs = 3000
    covered = sum(lo <= 1.0 <= hi for lo, hi in
                  (bench.median_ci([rng.lognormvariate(0, 0.3) for _ in range(40)])
                   for _ in range(runs)))
    assert 0.94 <= covered / runs <= 0.985
