"""``reinhard`` and ``macenko`` (torchstain): target statistics reached; low-content guard."""

from __future__ import annotations

import logging

import pytest
import torch
from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer
from torchstain.torch.utils.rgb2lab import rgb2lab
from torchstain.torch.utils.split import lab_split

from cellbench.data.sets import LabelledSet, UnpairedSet
from cellbench.methods import create_normalizer, load_normalizer

from .smears import toy_smears


def systems(n=6, size=64):
    x, _ = toy_smears(n, size, seed=0, noise=0.02, texture=0.1)
    y, _ = toy_smears(n, size, seed=1, noise=0.02, texture=0.1, background=(0.85, 0.9, 0.97))
    return UnpairedSet(LabelledSet(x, ["a"] * n), LabelledSet(y, ["a"] * n))


def test_reinhard_reaches_target_lab_statistics():
    data = systems()
    norm = create_normalizer("reinhard", n_reference=6).fit(data, seed=0)
    # reference values: torchstain fitted directly on the same mosaic
    ts = TorchReinhardNormalizer()
    ts.fit(torch.cat(list(data.y.images), dim=2) * 255)
    torch.testing.assert_close(norm.means, ts.target_means.float())
    out = norm.transform(data.x.images)
    lab = lab_split(rgb2lab(out[0].clone()))  # torchstain's LAB (converts in place, hence clone)
    means = torch.stack([c.mean() for c in lab])
    assert (means - norm.means).abs().max() < 1.0  # LAB units; 8-bit output rounding


def beer_lambert_systems(n=6, size=64, seed=0):
    """X and Y images of the same two-stain concentration fields, rendered by Beer-Lambert
    (``I = Io exp(-HE c)``, natural log and ``Io = 240`` as in torchstain) with different stain
    vectors: Y with Ruifrok & Johnston's haematoxylin and eosin vectors (Anal. Quant. Cytol. Histol.
    23(4), 2001), X with bluer ones. Macenko's model holds exactly, so it must recover Y's stains."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 2, size // 8, size // 8, generator=g)
    c = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    c = (c - 0.35).clamp(min=0) * torch.tensor([2.5, 1.5]).view(1, 2, 1, 1)  # zero = background
    he_y = torch.tensor([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]]).T
    he_x = torch.tensor([[0.45, 0.80, 0.40], [0.25, 0.90, 0.35]]).T
    he_x = he_x / he_x.norm(dim=0)

    def render(he):
        return (240.0 / 255.0) * torch.exp(-torch.einsum("cs,nshw->nchw", he, c))

    x, y = render(he_x), render(he_y)
    return UnpairedSet(LabelledSet(x, ["a"] * n), LabelledSet(y, ["a"] * n))


def macenko_statistics(images):
    """torchstain's Macenko stain matrix ``(3, 2)`` and 99th-percentile concentrations of a mosaic."""
    ts = TorchMacenkoNormalizer()
    ts.fit(torch.cat(list(images), dim=2) * 255.0)
    return ts.HERef.float(), ts.maxCRef.float()


def test_macenko_moves_towards_target():
    """The stain statistics Macenko transfers, re-estimated on its output, are the target's: the
    distance of the output's stain matrix and maximal concentrations to the fitted reference drops
    from ~0.3 (raw X) to below a tenth of that, and the output is closer to the paired Y images."""
    data = beer_lambert_systems()
    x, y = data.x.images, data.y.images
    norm = create_normalizer("macenko", n_reference=6).fit(data, seed=0)
    # the reference's haematoxylin vector is Y's (eosin is biased by the alpha percentile)
    torch.testing.assert_close(norm.he_ref[:, 0], torch.tensor([0.650, 0.704, 0.286]), atol=0.01, rtol=0)
    out = norm.transform(x)
    assert norm.passthrough_count == 0
    he_x, c_x = macenko_statistics(x)
    he_o, c_o = macenko_statistics(out)
    d_he_x, d_he_o = (he_x - norm.he_ref).norm(), (he_o - norm.he_ref).norm()
    d_c_x, d_c_o = (c_x - norm.max_c_ref).norm(), (c_o - norm.max_c_ref).norm()
    assert d_he_x > 0.2 and d_he_o < 0.1 * d_he_x, (d_he_x, d_he_o)
    assert d_c_x > 0.2 and d_c_o < 0.1 * d_c_x, (d_c_x, d_c_o)
    assert (out - y).abs().mean() < 0.8 * (x - y).abs().mean()


def _low_content(kind):
    if kind == "blank":
        return torch.full((2, 3, 32, 32), 0.9)
    if kind == "black":
        return torch.zeros(2, 3, 32, 32)
    if kind == "saturated":
        return torch.ones(2, 3, 32, 32)
    if kind == "nearly_empty":
        # background with faint unstained specks: optical density ln(240/218) < 0.15 everywhere
        x = torch.full((2, 3, 32, 32), 0.92)
        x[:, :, 8:14, 8:14] = 0.85
        return x
    return toy_smears(2, 32, seed=7, wbc=False)[0]


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
@pytest.mark.parametrize("kind", ["blank", "black", "saturated", "nearly_empty", "no_wbc"])
def test_low_content_images_fall_back_to_identity(method, kind, caplog):
    """Uniform images (blank, black, saturated) go through both methods unchanged and are counted;
    a nearly empty image with no pixel above Macenko's density threshold goes through Macenko
    unchanged (Reinhard, defined for any non-uniform image, transfers it); a smear without a white
    cell still has stained red cells: both normalize it and count nothing."""
    norm = create_normalizer(method, n_reference=4).fit(systems(4), seed=0)
    assert norm.passthrough_count == 0
    x = _low_content(kind)
    with caplog.at_level(logging.WARNING):
        out = norm.transform(x)
    assert torch.isfinite(out).all() and out.shape == x.shape
    unchanged = kind in ("blank", "black", "saturated") or (kind == "nearly_empty" and method == "macenko")
    if unchanged:
        assert torch.equal(out, x) and caplog.text.count("returned unchanged") == 2
        assert norm.passthrough_count == 2
    else:
        assert not torch.equal(out, x) and (out - x).abs().amax((1, 2, 3)).min() > 0.05
        assert norm.passthrough_count == 0 and "returned unchanged" not in caplog.text


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_passthrough_count_accumulates_and_resets_on_fit_and_load(method, tmp_path):
    """The count grows over transform calls (one per image passed through) and starts again at
    zero after every fit and load (Normalizer.passthrough_count)."""
    data = systems(4)
    norm = create_normalizer(method, n_reference=3).fit(data, seed=0)
    blank = torch.full((3, 3, 64, 64), 0.9)
    mixed = torch.cat([data.x.images[:2], blank[:1]])
    norm.transform(blank)
    norm.transform(mixed)
    assert norm.passthrough_count == 4
    norm.save(tmp_path / "m")
    assert load_normalizer(tmp_path / "m").passthrough_count == 0
    norm.fit(data, seed=1)
    assert norm.passthrough_count == 0
    norm.transform(mixed)
    assert norm.passthrough_count == 1


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_save_load_round_trip(method, tmp_path):
    data = systems(4)
    norm = create_normalizer(method, n_reference=3).fit(data, seed=1)
    norm.save(tmp_path / method)
    again = load_normalizer(tmp_path / method)
    assert torch.equal(norm.transform(data.x.images), again.transform(data.x.images))
