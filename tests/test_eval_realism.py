"""FID, KID and the classifier two-sample test against independent references and known cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from cellbench.eval.realism import c2st, fid, kid


def fid_sqrtm_reference(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook FID with scipy.linalg.sqrtm (a different route from ours: eigh)."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def mmd2_unbiased_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_fid_identical_and_translated_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    # same covariance, means differ by `shift`: FID = |m1 - m2|^2 exactly (closed form)
    assert fid(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_fid_matches_sqrtm_reference_on_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(300, 5))
    b = rng.normal(0.3, 1.5, size=(250, 5)) @ np.diag([1, 2, 1, 0.5, 1])
    assert fid(a, b) == pytest.approx(fid_sqrtm_reference(a, b), rel=1e-6)


def test_kid_full_subset_equals_hand_computed_mmd_and_caps_subset_size():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 4))
    y = rng.normal(0.5, 1.0, size=(10, 4))
    mean, std, s = kid(x, y, subset_size=1000, n_subsets=5, seed=0)
    assert s == 10  # never above the number of test images
    # with s = N for y, every subset of y is all of y; fix x too by using equal sizes:
    m2, sd2, s2 = kid(x[:10], y, subset_size=10, n_subsets=3, seed=0)
    assert s2 == 10 and sd2 == pytest.approx(0.0, abs=1e-12)
    assert m2 == pytest.approx(mmd2_unbiased_by_loops(x[:10], y), rel=1e-9)
    assert mean > 0


def test_kid_same_distribution_is_near_zero_and_seeded():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    c = rng.normal(1.0, 1.0, size=(300, 8))
    same, _, _ = kid(a, b, subset_size=100, n_subsets=20, seed=0)
    diff, _, _ = kid(a, c, subset_size=100, n_subsets=20, seed=0)
    assert abs(same) < 0.1 * diff
    assert kid(a, c, subset_size=50, seed=4) == kid(a, c, subset_size=50, seed=4)
    with pytest.raises(ValueError, match="feature sizes"):
        kid(a, c[:, :3])


def images(n: int, gen: torch.Generator, shift: float = 0.0) -> torch.Tensor:
    base = torch.rand(n, 3, 1, 1, generator=gen) * 0.2 + 0.4
    return (base + shift + 0.08 * torch.randn(n, 3, 32, 32, generator=gen)).clamp(0, 1)


def test_c2st_identical_distributions_near_chance():
    g = torch.Generator().manual_seed(0)
    r = c2st(images(80, g), images(80, g), seed=0, size=32)
    assert r.n_test == 80 and r.n_train == 80
    assert 30.0 <= r.accuracy <= 70.0
    assert r.ci_low <= 50.0 <= r.ci_high or abs(r.accuracy - 50) < 15


def test_c2st_clearly_different_near_100_and_global_rng_untouched():
    g = torch.Generator().manual_seed(1)
    real, fake = images(80, g), images(80, g, shift=0.25)
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    r = c2st(real, fake, seed=0, size=32)
    assert r.accuracy >= 95.0
    assert torch.equal(state, torch.get_rng_state())
    assert torch.get_num_threads() == threads
    assert c2st(real, fake, seed=0, size=32) == r  # seeded
    with pytest.raises(ValueError):
        c2st(real[:2], fake[:2])
