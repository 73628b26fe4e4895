"""Same-class agreement, prediction consistency, accuracy, and the statistics that compare methods.

Wilson intervals, the exact McNemar test, the Jensen-Shannon consistency and confident flip rate,
the paired bootstrap interval of a difference between two methods, and Kendall's tau between two
rankings.

The paper's headline (sec. 6): "a cell classification network was used to classify both real
images and their transformed counterpart [...] the goal is that the real images and the
transformed images are classified as the same cell type" -- 88.6 % of 981 pairs for pcNet,
85.2 % for ccGAN. :func:`agreement` is that figure: the fraction of test pairs with
``classifier(G(x)) == classifier(y)``.

All functions take integer class predictions as 1-D arrays (numpy or torch), probabilities as
``(N, C)`` arrays, and are pure.

:func:`js_divergence` is a continuous companion of agreement: where both predictions agree it still
measures how far the class-probability vectors on G(x) and on y moved (agreement saturates at
100 %); :func:`flip_rate` counts changed calls only among cells the classifier is sure about.
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
    "CONFIDENT",
    "js_divergence",
    "confident_flips",
    "flip_rate",
    "BootstrapDifference",
    "paired_bootstrap_difference",
    "KendallResult",
    "kendall_tau",
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


# --------------------------------------------------------------------------- prediction consistency

#: Default probability above which the classifier's call on y counts as confident (flip rate).
CONFIDENT = 0.9


def _proba(p, what: str) -> np.ndarray:
    if hasattr(p, "detach"):
        p = p.detach().cpu().numpy()
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected (N, C) class probabilities, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{what}: probabilities must be finite and >= 0 (pass the classifier's softmax)")
    s = arr.sum(axis=1, keepdims=True)
    if np.any(s <= 0):
        raise ValueError(f"{what}: a row of probabilities sums to 0")
    return arr / s


def js_divergence(proba_a, proba_b) -> np.ndarray:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between matching rows of two probability arrays.

    ``JS(p, q) = H(m) - (H(p) + H(q)) / 2 = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``,
    logarithms to base 2, ``0 log 0 = 0``; rows are normalised to sum 1 (as scipy does). It is 0 for
    identical vectors and 1 for vectors with disjoint support, symmetric, and finite where the
    Kullback-Leibler divergence is not. ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``
    is the same number (scipy returns the square root, a metric).

    Parameters
    ----------
    proba_a, proba_b:
        ``(N, C)`` class probabilities (e.g. the classifier's softmax on G(x) and on y).

    Returns
    -------
    np.ndarray
        ``(N,)`` float64 divergences in bits.

    References
    ----------
    Lin, J. (1991). Divergence measures based on the Shannon entropy. IEEE Transactions on
    Information Theory 37(1), 145-151 (the Jensen-Shannon divergence with equal weights 1/2).
    """
    from scipy.special import rel_entr

    p, q = _proba(proba_a, "proba_a"), _proba(proba_b, "proba_b")
    if p.shape != q.shape:
        raise ValueError(f"proba_a {p.shape} and proba_b {q.shape} differ (same pairs and classes needed)")
    m = 0.5 * (p + q)
    js = 0.5 * (rel_entr(p, m).sum(axis=1) + rel_entr(q, m).sum(axis=1)) / math.log(2.0)
    return np.clip(js, 0.0, 1.0)


def confident_flips(pred_g, pred_y, proba_y, *, threshold: float = CONFIDENT) -> np.ndarray:
    """Per pair: 1.0 where the classifier's call on y is confident and G(x)'s call differs, 0.0 where
    it is confident and they agree, NaN where it is not confident (``max(proba_y) < threshold``)."""
    a, b = _ints(pred_g, "pred_g"), _ints(pred_y, "pred_y")
    p = _proba(proba_y, "proba_y")
    if not (a.shape == b.shape == (len(p),)):
        raise ValueError(f"pred_g {a.shape}, pred_y {b.shape} and proba_y {p.shape} differ in length")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold}: must be in (0, 1], e.g. 0.9")
    out = (a != b).astype(np.float64)
    out[p.max(axis=1) < threshold] = np.nan
    return out


def flip_rate(pred_g, pred_y, proba_y, *, threshold: float = CONFIDENT, confidence: float = 0.95) -> Proportion:
    """Flip rate among confidently classified cells, with its Wilson interval.

    Among the pairs whose y the classifier calls with probability ``>= threshold`` (default 0.9),
    the fraction whose G(x) gets another class. Unlike agreement it ignores cells the classifier
    itself finds ambiguous, where a flip says little about the normalization.
    """
    flips = confident_flips(pred_g, pred_y, proba_y, threshold=threshold)
    return proportion(flips[~np.isnan(flips)] > 0.5, confidence=confidence)


# --------------------------------------------------------------------------- differences between methods

@dataclass(frozen=True)
class BootstrapDifference:
    """``mean(a) - mean(b)`` over the same images, with a paired percentile bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int  # pairs with both values finite (the ones resampled)
    resamples: int
    confidence: float
    mean_a: float
    mean_b: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0 (the difference is significant)."""
        return bool(self.ci_low > 0.0 or self.ci_high < 0.0)


def paired_bootstrap_difference(a, b, *, resamples: int = 2000, confidence: float = 0.95,
                                seed: int = 0) -> BootstrapDifference:
    """Paired bootstrap interval of ``mean(a) - mean(b)`` for per-image values of two methods.

    The test images are resampled with replacement, the *same* indices for both methods (so what
    the two share, e.g. a hard image, cancels), ``resamples`` times; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the resampled differences
    of means (the percentile interval). Images where either value is NaN or infinite (an empty
    region, an identical image's PSNR, a cell the classifier was not confident about) are left out
    first. Seeded: the same inputs and seed give the same interval.

    Parameters
    ----------
    a, b:
        ``(N,)`` per-image values of methods A and B on the same images, in the same order.

    References
    ----------
    Efron, B. & Tibshirani, R. J. (1993). An Introduction to the Bootstrap. Chapman & Hall,
    ch. 13 (confidence intervals from bootstrap percentiles); a pair of values per image is
    resampled as one unit.
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"a {x.shape} and b {y.shape} differ in length: a paired bootstrap needs the same images")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: must be in (0, 1), e.g. 0.95")
    if int(resamples) < 1:
        raise ValueError(f"resamples={resamples}: must be >= 1, e.g. 2000")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n == 0:
        nan = float("nan")
        return BootstrapDifference(nan, nan, nan, 0, int(resamples), confidence, nan, nan)
    d = x - y
    rng = np.random.default_rng(seed)
    means = np.empty(int(resamples))
    chunk = max(1, 2_000_000 // n)  # bounded memory for large test sets
    for start in range(0, len(means), chunk):
        stop = min(len(means), start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapDifference(float(d.mean()), float(lo), float(hi), n, int(resamples), confidence,
                               float(x.mean()), float(y.mean()))


@dataclass(frozen=True)
class KendallResult:
    """Kendall's tau-b between two rankings of the same items (NaN when undefined) and its p-value."""

    tau: float
    pvalue: float
    n: int


def kendall_tau(values_a, values_b) -> KendallResult:
    """Kendall's tau-b between two scorings of the same items (e.g. methods under two seeds).

    The rank correlation of the orders the two scorings induce: 1 = the same order, -1 = reversed;
    tau-b corrects for ties, and is NaN when a scoring is constant. Items with a non-finite value on
    either side are left out. ``scipy.stats.kendalltau`` (two-sided p-value; exact for small n
    without ties).

    References
    ----------
    Kendall, M. G. (1938). A new measure of rank correlation. Biometrika 30(1/2), 81-93.
    """
    from scipy.stats import kendalltau

    x, y = np.asarray(values_a, dtype=np.float64).ravel(), np.asarray(values_b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"values_a {x.shape} and values_b {y.shape} differ in length (same items needed)")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return KendallResult(float("nan"), float("nan"), int(len(x)))
    r = kendalltau(x, y)
    return KendallResult(float(r.statistic), float(r.pvalue), int(len(x)))
