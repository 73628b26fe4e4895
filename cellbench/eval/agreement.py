"""Same-class agreement, accuracy, Wilson intervals and the exact McNemar test.

The paper's headline (sec. 6): "a cell classification network was used to classify both real
images and their transformed counterpart [...] the goal is that the real images and the
transformed images are classified as the same cell type" -- 88.6 % of 981 pairs for pcNet,
85.2 % for ccGAN. :func:`agreement` is that figure: the fraction of test pairs with
``classifier(G(x)) == classifier(y)``.

All functions take integer class predictions as 1-D arrays (numpy or torch) and are pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Proportion",
    "McNemarResult",
    "wilson_interval",
    "proportion",
    "agreement",
    "accuracy",
    "per_class",
    "mcnemar_exact",
]


@dataclass(frozen=True)
class Proportion:
    """``k`` successes out of ``n`` with a Wilson confidence interval (fractions in [0, 1])."""

    k: int
    n: int
    value: float
    ci_low: float
    ci_high: float

    def percent(self) -> tuple[float, float, float]:
        """``(value, ci_low, ci_high)`` in percent."""
        return 100.0 * self.value, 100.0 * self.ci_low, 100.0 * self.ci_high


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test of two paired binary outcomes.

    ``b`` = pairs where only method A is right, ``c`` = only B is right; ``statistic`` =
    ``min(b, c)`` (the exact test's statistic, as statsmodels reports it); ``pvalue`` = two-sided
    binomial p-value of ``b`` in ``b + c`` trials with p = 1/2 (1.0 when ``b + c == 0``).
    """

    b: int
    c: int
    statistic: int
    pvalue: float


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``.

    ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``z`` the normal quantile of
    ``(1 + confidence) / 2`` (1.959964 for 95 %). Unlike the normal (Wald) interval it stays in
    [0, 1] and keeps its coverage near 0 % and 100 %, where good methods live. ``n == 0`` gives
    ``(nan, nan)``.

    References
    ----------
    Wilson, E. B. (1927). Probable inference, the law of succession, and statistical inference.
    JASA 22(158), 209-212.
    """
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = _z(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(success, *, confidence: float = 0.95) -> Proportion:
    """Proportion of True in a boolean array, with its Wilson interval."""
    s = np.asarray(success, dtype=bool).ravel()
    k, n = int(s.sum()), int(s.size)
    lo, hi = wilson_interval(k, n, confidence=confidence)
    return Proportion(k=k, n=n, value=k / n if n else float("nan"), ci_low=lo, ci_high=hi)


def _ints(a, what: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of class indices, got shape {arr.shape}")
    return arr


def agreement(pred_g, pred_y, *, confidence: float = 0.95) -> Proportion:
    """Same-class agreement: fraction of pairs with ``classifier(G(x)) == classifier(y)`` (sec. 6).

    Parameters
    ----------
    pred_g, pred_y:
        ``(N,)`` predicted class indices on G(x) and on the real y of the same pairs.
    """
    a, b = _ints(pred_g, "pred_g"), _ints(pred_y, "pred_y")
    if a.shape != b.shape:
        raise ValueError(f"pred_g {a.shape} and pred_y {b.shape} differ in length")
    return proportion(a == b, confidence=confidence)


def accuracy(pred, target, *, confidence: float = 0.95) -> Proportion:
    """Fraction of ``pred == target`` (class indices), with its Wilson interval."""
    return agreement(pred, target, confidence=confidence)


def per_class(success, labels: Sequence[str], *, confidence: float = 0.95) -> dict[str, Proportion]:
    """Split a per-pair boolean outcome by the pair's true class label (sorted by class name)."""
    s = np.asarray(success, dtype=bool).ravel()
    lab = np.asarray(list(labels))
    if len(lab) != len(s):
        raise ValueError(f"{len(s)} outcomes but {len(lab)} labels")
    return {c: proportion(s[lab == c], confidence=confidence) for c in sorted(set(lab.tolist()))}


def mcnemar_exact(correct_a, correct_b) -> McNemarResult:
    """Exact (binomial) McNemar test between two methods evaluated on the same pairs.

    Parameters
    ----------
    correct_a, correct_b:
        ``(N,)`` booleans: per pair, whether method A (B) got it right (e.g. agreed with the
        classifier on y).

    Notes
    -----
    Only discordant pairs carry information: under H0 (equal success rates) the ``b`` pairs only A
    gets right among the ``b + c`` discordant ones follow Binomial(b + c, 1/2);
    ``scipy.stats.binomtest(b, b + c, 0.5).pvalue`` (two-sided) is the p-value.

    References
    ----------
    McNemar, Q. (1947). Note on the sampling error of the difference between correlated
    proportions or percentages. Psychometrika 12(2), 153-157.
    """
    a = np.asarray(correct_a, dtype=bool).ravel()
    b_ = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b_.shape:
        raise ValueError(f"correct_a {a.shape} and correct_b {b_.shape} differ in length (same pairs needed)")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    if b + c == 0:
        return McNemarResult(b=b, c=c, statistic=0, pvalue=1.0)
    from scipy.stats import binomtest

    p = float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(b=b, c=c, statistic=min(b, c), pvalue=min(1.0, p))
