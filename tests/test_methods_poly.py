"""``poly``: recovers a known third-order polynomial colour map."""

from __future__ import annotations

import torch

from cellbench.data.sets import PairedSet
from cellbench.methods import create_normalizer, load_normalizer
from cellbench.methods.poly import monomial_exponents, polynomial_features


def test_twenty_monomials_in_matching_order():
    exps = monomial_exponents(3)
    assert len(exps) == 20 and len(set(exps)) == 20
    px = torch.rand(50, 3, dtype=torch.float64)
    f = polynomial_features(px, 3)
    expected = torch.stack([px[:, 0] ** a * px[:, 1] ** b * px[:, 2] ** c for a, b, c in exps], 1)
    torch.testing.assert_close(f, expected)


def test_recovers_known_polynomial_map():
    g = torch.Generator().manual_seed(3)
    # A known map with cross terms and cubes; chosen so outputs stay inside [0, 1].
    x = torch.rand(6, 3, 24, 24, generator=g)
    r, gg, b = x[:, 0], x[:, 1], x[:, 2]
    y = torch.stack([
        0.05 + 0.6 * r + 0.1 * gg * b + 0.2 * r**3,
        0.10 + 0.5 * gg + 0.2 * r * gg - 0.1 * b**2 + 0.15 * r * gg * b,
        0.02 + 0.3 * b + 0.3 * r**2 + 0.2 * gg**3,
    ], dim=1)
    assert y.min() >= 0 and y.max() <= 1
    data = PairedSet(x=x, y=y, labels=["x"] * 6)
    norm = create_normalizer("poly", max_pixels=3000).fit(data, seed=0)
    x_test = torch.rand(2, 3, 16, 16, generator=g)
    r, gg, b = x_test[:, 0], x_test[:, 1], x_test[:, 2]
    y_test = torch.stack([
        0.05 + 0.6 * r + 0.1 * gg * b + 0.2 * r**3,
        0.10 + 0.5 * gg + 0.2 * r * gg - 0.1 * b**2 + 0.15 * r * gg * b,
        0.02 + 0.3 * b + 0.3 * r**2 + 0.2 * gg**3,
    ], dim=1)
    assert (norm.transform(x_test) - y_test).abs().max() < 1e-4
    # the affine baseline cannot represent this map: poly must be far better
    aff = create_normalizer("affine").fit(data, seed=0)
    assert (aff.transform(x_test) - y_test).abs().max() > 1e-2


def test_save_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g)
    data = PairedSet(x=x, y=(x**2).flip(1), labels=["a"] * 3)
    norm = create_normalizer("poly", preset="quick").fit(data, seed=1)
    norm.save(tmp_path / "m")
    again = load_normalizer(tmp_path / "m")
    assert torch.equal(norm.transform(x), again.transform(x))
