"""``hm``: recovers known per-region affine maps on constructed images; paired and unpaired."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cellbench.data.masks import BACKGROUND, CYTOPLASM, NUCLEUS, RED_CELL
from cellbench.data.sets import PairedSet, as_unpaired
from cellbench.errors import ConfigError
from cellbench.methods import create_normalizer, load_normalizer

from .smears import toy_smears

# One known affine colour map per region (3x3 matrix, offset); outputs stay inside [0, 1].
MAPS = {
    BACKGROUND: (torch.diag(torch.tensor([0.9, 1.0, 1.1])), torch.tensor([0.05, 0.0, -0.02])),
    RED_CELL: (torch.tensor([[0.8, 0.1, 0.0], [0.0, 0.9, 0.0], [0.05, 0.0, 0.85]]), torch.tensor([0.1, 0.0, 0.05])),
    CYTOPLASM: (torch.tensor([[0.7, 0.0, 0.1], [0.1, 0.8, 0.0], [0.0, 0.1, 0.9]]), torch.tensor([0.0, 0.05, 0.05])),
    NUCLEUS: (torch.tensor([[1.1, 0.0, 0.0], [0.0, 0.7, 0.1], [0.0, 0.0, 0.6]]), torch.tensor([-0.02, 0.0, 0.2])),
}


def region_mapped_pairs(n=16, size=96, seed=0):
    """X: constructed smears (regions span 3-D colour sets); Y: X with one affine map per region."""
    x, masks = toy_smears(n, size, seed=seed, noise=0.0, texture=0.1)
    y = torch.zeros_like(x)
    for lab, (a, b) in MAPS.items():
        y += (masks == lab)[:, None] * (torch.einsum("ij,njhw->nihw", a, x) + b.view(1, 3, 1, 1))
    assert 0 <= y.min() and y.max() <= 1
    return PairedSet(x=x, y=y, labels=["toy"] * n, masks=masks), masks


def interiors(masks, lab, erode=3):
    m = (masks == lab).float()[:, None]
    return (-F.max_pool2d(-m, 2 * erode + 1, 1, erode))[:, 0] > 0.5


@pytest.mark.parametrize("space", ["rgb", "od"])
def test_recovers_known_per_region_maps(space):
    train, _ = region_mapped_pairs(seed=0)
    test, masks = region_mapped_pairs(n=6, seed=1)
    hm = create_normalizer("hm", space=space).fit(train, seed=0)
    out = hm.transform(test.x)
    err = (out - test.y).abs().amax(1)  # (N, H, W) worst channel
    tol = 0.01 if space == "rgb" else 0.02  # od: an affine map in RGB is not affine in density
    for lab in MAPS:
        inner = interiors(masks, lab)
        assert err[inner].mean() < tol / 2, (lab, err[inner].mean())
        assert torch.quantile(err[inner], 0.95) < 2 * tol, lab
    aff = create_normalizer("affine").fit(train, seed=0)
    assert err.mean() < 0.5 * (aff.transform(test.x) - test.y).abs().amax(1).mean()


def test_no_seams_at_region_borders():
    train, _ = region_mapped_pairs(seed=0)
    hm = create_normalizer("hm").fit(train, seed=0)
    x, masks = toy_smears(2, 96, seed=5, noise=0.0, texture=0.0)  # flat regions
    out = hm.transform(x)
    # flat regions: the output changes between neighbours by no more than the input does, plus
    # a small blend term (soft memberships), never a jump larger than the colours it joins
    dx_in = (x[..., 1:] - x[..., :-1]).abs().amax(1)
    dx_out = (out[..., 1:] - out[..., :-1]).abs().amax(1)
    assert (dx_out <= 1.5 * dx_in + 0.05).all()


def test_unpaired_moment_matching_fits_each_region_distribution():
    train, masks = region_mapped_pairs(seed=0)
    data = as_unpaired(train)
    hm = create_normalizer("hm").fit(data, seed=0)
    assert hm.params["mode"] == "unpaired"
    out = hm.transform(train.x)
    for lab in (RED_CELL, CYTOPLASM, NUCLEUS):
        inner = interiors(masks, lab)
        got = out.permute(0, 2, 3, 1)[inner].mean(0)
        want = train.y.permute(0, 2, 3, 1)[inner].mean(0)
        assert (got - want).abs().max() < 0.02, lab
    # better than doing nothing
    assert (out - train.y).abs().mean() < 0.5 * (train.x - train.y).abs().mean()


def test_save_load_round_trip_identical(tmp_path):
    train, _ = region_mapped_pairs(n=6, seed=0)
    for space in ("rgb", "od"):
        hm = create_normalizer("hm", space=space).fit(train, seed=2)
        hm.save(tmp_path / space)
        again = load_normalizer(tmp_path / space)
        assert torch.equal(hm.transform(train.x), again.transform(train.x))
        assert torch.equal(hm.segment(train.x), again.segment(train.x))


def test_training_without_white_cells_falls_back_to_global_map():
    x, _ = toy_smears(6, 64, seed=3, wbc=False, texture=0.1)
    data = PairedSet(x=x, y=(x * 0.9 + 0.05).clamp(0, 1), labels=["a"] * 6)
    hm = create_normalizer("hm").fit(data, seed=0)
    xw, _ = toy_smears(2, 64, seed=4, texture=0.1)  # now with a WBC
    out = hm.transform(xw)
    assert torch.isfinite(out).all()
    assert (out - (xw * 0.9 + 0.05)).abs().mean() < 0.02


def test_bad_options_raise():
    with pytest.raises(ConfigError, match="mode"):
        create_normalizer("hm", mode="both")
    with pytest.raises(ConfigError, match="space"):
        create_normalizer("hm", space="lab")
