"""The unsupervised colour segmentation: constructed images with known regions, real PBC images."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from cellbench.data.masks import BACKGROUND, CYTOPLASM, NUCLEUS, RED_CELL
from cellbench.errors import ConfigError
from cellbench.segmentation import REGIONS, ColourSegmenter, segment

from .smears import toy_smears


def test_recovers_constructed_regions():
    images, masks = toy_smears(12, 96, seed=1)
    seg = ColourSegmenter().fit(images, seed=0)
    pred = seg.predict(images)
    assert pred.dtype == torch.uint8 and pred.shape == masks.shape
    agree = (pred == masks).float().mean().item()
    assert agree >= 0.9, agree
    for lab in (BACKGROUND, RED_CELL, CYTOPLASM, NUCLEUS):  # every region is mostly right
        sel = masks == lab
        assert (pred[sel] == lab).float().mean() >= 0.75, lab


def test_generalises_to_unseen_images_of_the_same_system():
    train, _ = toy_smears(10, 96, seed=2)
    test, masks = toy_smears(4, 96, seed=3)
    pred = ColourSegmenter().fit(train, seed=0).predict(test)
    assert (pred == masks).float().mean() >= 0.9


def test_soft_memberships_sum_to_one_and_are_finite():
    images, _ = toy_smears(3, 64, seed=4)
    p = ColourSegmenter().fit(images).predict_proba(images)
    assert p.shape == (3, len(REGIONS), 64, 64)
    assert torch.isfinite(p).all() and p.min() >= 0
    torch.testing.assert_close(p.sum(1), torch.ones(3, 64, 64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["blank", "black", "saturated", "no_wbc", "tiny"])
def test_degenerate_images_do_not_crash(kind):
    seg = ColourSegmenter().fit(toy_smears(4, 64, seed=5)[0])
    if kind == "blank":
        x = torch.full((2, 3, 64, 64), 0.9)
    elif kind == "black":
        x = torch.zeros(2, 3, 64, 64)
    elif kind == "saturated":
        x = torch.ones(2, 3, 64, 64)
    elif kind == "no_wbc":
        x = toy_smears(2, 64, seed=6, wbc=False)[0]
    else:
        x = torch.rand(2, 3, 5, 7)
    p = seg.predict_proba(x)
    assert torch.isfinite(p).all()
    labels = seg.predict(x)
    if kind == "no_wbc":
        assert (labels == NUCLEUS).float().mean() < 0.01
    # fitting on degenerate data falls back to defaults instead of failing
    assert torch.isfinite(ColourSegmenter().fit(x).thresholds).all()


def test_state_round_trip_and_determinism():
    images, _ = toy_smears(4, 64, seed=7)
    a = ColourSegmenter(wbc_radius=0.2).fit(images, seed=3)
    b = ColourSegmenter()
    b.load_state_dict(a.state_dict())
    assert b.wbc_radius == 0.2
    assert torch.equal(a.predict(images), b.predict(images))
    assert torch.equal(a.thresholds, ColourSegmenter(wbc_radius=0.2).fit(images, seed=3).thresholds)
    assert torch.equal(segment(images), segment(images))


def test_unfitted_raises():
    with pytest.raises(ConfigError, match="fitted"):
        ColourSegmenter().predict(torch.rand(1, 3, 16, 16))


def _load_pbc(pbc_dir, n, size=256, seed=0):
    from cellbench.io import read_image
    from cellbench.tensors import center_crop_or_pad, to_tensor

    files = sorted(pbc_dir.glob("*/*.jpg"))
    files = random.Random(seed).sample(files, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = [center_crop_or_pad(read_image(f), size) for f in files]
    return torch.cat([to_tensor(a) for a in arr]), files


@pytest.mark.realdata
def test_real_pbc_centre_white_cell_nucleus_is_found(pbc_dir):
    train, _ = _load_pbc(pbc_dir, 40, seed=0)
    test, files = _load_pbc(pbc_dir, 24, seed=1)
    seg = ColourSegmenter().fit(train, seed=0)
    labels = seg.predict(test)
    nuc_frac = (labels == NUCLEUS).float().mean((1, 2))
    # PBC crops are centred on one WBC (or a platelet); its nucleus covers roughly 1-40 %
    assert ((nuc_frac > 0.003) & (nuc_frac < 0.5)).float().mean() >= 0.9, nuc_frac
    # the nucleus sits in the centre: its centroid lies within 15 % of the side from the centre,
    # and the centre pixel area (central 10 % box) is mostly WBC
    nuc = (labels == NUCLEUS).float()
    grid = torch.arange(256, dtype=torch.float32)
    cy = (nuc.sum(2) * grid).sum(1) / nuc.sum((1, 2)).clamp(min=1)
    cx = (nuc.sum(1) * grid).sum(1) / nuc.sum((1, 2)).clamp(min=1)
    off = torch.hypot(cy - 127.5, cx - 127.5) / 256
    assert (off < 0.15).float().mean() >= 0.85, off
    centre = labels[:, 115:141, 115:141]
    wbc_centre = ((centre == NUCLEUS) | (centre == CYTOPLASM)).float().mean((1, 2))
    assert (wbc_centre > 0.5).float().mean() >= 0.85, wbc_centre
    # background is most common and brightest; nucleus is darkest
    bright = test.sum(1)
    for i in range(len(test)):
        nuc, bg = labels[i] == NUCLEUS, labels[i] == BACKGROUND
        if nuc.any() and bg.any():
            assert bright[i][nuc].mean() < bright[i][labels[i] == RED_CELL].mean() < bright[i][bg].mean(), files[i]
    assert (labels == BACKGROUND).float().mean() > 0.2
    assert (labels == RED_CELL).float().mean() > 0.1


def test_uint8_images_fit_and_segment_as_their_float_copies():
    """The paired track keeps test images 8-bit: the segmenter reads uint8 a batch at a time (the same
    thresholds as the float copy k / 255), and the region masks of a split are predicted in chunks."""
    from cellbench.data.sets import PairedSet
    from cellbench.eval.evaluate import region_masks

    images, _ = toy_smears(n=6, seed=3)
    u8 = images.clamp(0, 1).mul(255).round().to(torch.uint8)
    f = u8.float().div_(255.0)
    a = ColourSegmenter().fit(u8, seed=1, batch_size=4)
    b = ColourSegmenter().fit(f, seed=1, batch_size=4)
    assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.widths, b.widths)
    masks = region_masks(PairedSet(u8, u8, ["a"] * 6, [str(i) for i in range(6)]), seed=1)
    assert torch.equal(masks, ColourSegmenter().fit(f, seed=1).predict(f))
