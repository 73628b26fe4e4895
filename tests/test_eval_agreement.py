"""Agreement, Wilson intervals and the exact McNemar test against hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from cellbench.eval.agreement import (
    accuracy,
    agreement,
    mcnemar_exact,
    per_class,
    proportion,
    wilson_interval,
)


def exact_mcnemar_by_hand(b: int, c: int) -> float:
    """Two-sided exact McNemar: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n, k = b + c, min(b, c)
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_wilson_interval_known_values():
    # k = 0: the upper bound is z^2 / (n + z^2) (closed form), z = 1.959964
    z = 1.959963984540054
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(z * z / (10 + z * z), abs=1e-12)
    # against scipy's independent implementation
    for k, n in [(1, 10), (45, 50), (981 * 886 // 1000, 981), (7, 7)]:
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize("b,c", [(9, 2), (2, 9), (0, 5), (10, 10), (1, 0), (30, 12)])
def test_mcnemar_matches_hand_computed(b, c):
    # build outcomes: b pairs only A right, c only B right, plus concordant pairs
    a = np.array([True] * b + [False] * c + [True] * 7 + [False] * 4)
    bb = np.array([False] * b + [True] * c + [True] * 7 + [False] * 4)
    r = mcnemar_exact(a, bb)
    assert (r.b, r.c, r.statistic) == (b, c, min(b, c))
    assert r.pvalue == pytest.approx(exact_mcnemar_by_hand(b, c), abs=1e-12)


def test_mcnemar_known_number_and_no_discordant_pairs():
    a = np.r_[np.ones(9, bool), np.zeros(2, bool)]
    r = mcnemar_exact(a, ~a)
    assert r.pvalue == pytest.approx(134 / 2048, abs=1e-15)  # 2 * (1 + 11 + 55) / 2^11
    same = np.array([True, False, True])
    assert mcnemar_exact(same, same).pvalue == 1.0
    with pytest.raises(ValueError, match="same pairs"):
        mcnemar_exact(same, same[:2])


def test_agreement_accuracy_and_per_class():
    pg = np.array([0, 1, 2, 2, 1, 0])
    py = np.array([0, 1, 1, 2, 1, 2])
    a = agreement(pg, py)
    assert (a.k, a.n) == (4, 6) and a.value == pytest.approx(4 / 6)
    assert a.ci_low < a.value < a.ci_high
    assert accuracy(pg, np.array([0, 1, 2, 0, 0, 0])).k == 4
    pc = per_class(pg == py, ["x", "x", "y", "y", "z", "z"])
    assert {k: (v.k, v.n) for k, v in pc.items()} == {"x": (2, 2), "y": (1, 2), "z": (1, 2)}
    assert proportion([]).n == 0 and math.isnan(proportion([]).value)
    with pytest.raises(ValueError):
        agreement(pg, py[:3])
