"""Scale normalization: constructed images of known cell sizes, and the real folders when present."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellbench.data.folders import LabelledFolder
from cellbench.data.scale import ScaleEstimate, estimate_scale, measure_image, rescale_images, scale_factor

BG = (0.95, 0.90, 0.85)
RBC = (0.85, 0.55, 0.60)
PALLOR = (0.92, 0.75, 0.75)
NUCLEUS = (0.35, 0.20, 0.55)


def smear(size: int, rbc_d: float, wbc_d: float, rng: np.random.Generator) -> np.ndarray:
    """A white cell (violet disc of diameter ``wbc_d``) at the centre, red cells (pink discs of
    diameter ``rbc_d`` with a pale centre) on a jittered grid around it; float (H, W, 3)."""
    img = np.empty((size, size, 3))
    img[:] = BG
    yy, xx = np.mgrid[:size, :size].astype(float)
    c = (size - 1) / 2
    step = rbc_d * 1.35
    for cy in np.arange(step / 2, size, step):
        for cx in np.arange(step / 2, size, step):
            y, x = cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2)
            if math.hypot(y - c, x - c) < wbc_d / 2 + rbc_d * 0.75:
                continue
            r2 = (yy - y) ** 2 + (xx - x) ** 2
            img[r2 <= (rbc_d / 2) ** 2] = RBC
            img[r2 <= (rbc_d / 5) ** 2] = PALLOR
    img[(yy - c) ** 2 + (xx - c) ** 2 <= (wbc_d / 2) ** 2] = NUCLEUS
    img += rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1)


def batch(n: int, size: int, rbc_d: float, wbc_d: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    arr = np.stack([smear(size, rbc_d, wbc_d, rng) for _ in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize(("rbc_d", "wbc_d"), [(20, 36), (30, 50), (44, 70)])
def test_known_sizes(rbc_d, wbc_d):
    est = estimate_scale(batch(4, 192, rbc_d, wbc_d))
    assert est.n_used == 4
    assert est.wbc_diameter_px == pytest.approx(wbc_d, rel=0.10)
    assert est.rbc_diameter_px == pytest.approx(rbc_d, rel=0.10)


def test_colour_cast_and_vignetting_do_not_change_the_size():
    im = smear(192, 30, 50, np.random.default_rng(1))
    yy, xx = np.mgrid[:192, :192]
    vignette = 1 - 0.3 * (((yy - 96) ** 2 + (xx - 96) ** 2) / 96**2)
    cast = np.clip(im * np.array([0.6, 0.75, 0.9]) * vignette[..., None], 0, 1)
    w0, r0 = measure_image(im)
    w1, r1 = measure_image(cast)
    assert w1 == pytest.approx(w0, rel=0.05) and r1 == pytest.approx(r0, rel=0.10)


def test_blank_image_gives_nan():
    w, r = measure_image(np.full((64, 64, 3), 0.9))
    assert math.isnan(w) and math.isnan(r)


def test_factor_and_rescale_match_sizes():
    src, tgt = batch(3, 192, 20, 36, seed=2), batch(3, 192, 30, 54, seed=3)
    es, et = estimate_scale(src), estimate_scale(tgt)
    f = scale_factor(es, et, by="rbc")
    assert f == pytest.approx(1.5, rel=0.12)
    out = rescale_images(src, f, 192)
    assert out.shape == (3, 3, 192, 192) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert estimate_scale(out).rbc_diameter_px == pytest.approx(et.rbc_diameter_px, rel=0.12)
    assert estimate_scale(out).wbc_diameter_px == pytest.approx(et.wbc_diameter_px, rel=0.12)


def test_rescale_geometry():
    x = torch.rand(2, 3, 40, 50)
    assert torch.equal(rescale_images(x, 1.0, (40, 50)), x)
    assert rescale_images(x, 0.5, 32).shape == (2, 3, 32, 32)        # shrunk then reflect-padded
    assert rescale_images(x, 2.0, 16).shape == (2, 3, 16, 16)
    # The centre stays the centre: a bright centre pixel block stays at the centre.
    y = torch.zeros(1, 3, 41, 41)
    y[..., 18:23, 18:23] = 1
    z = rescale_images(y, 2.0, 41)
    assert float(z[0, 0, 20, 20]) == 1.0 and float(z[0, 0, 0, 0]) == 0.0
    with pytest.raises(ValueError):
        rescale_images(x, 0.0, 32)


def test_scale_factor_errors():
    a = ScaleEstimate(50.0, float("nan"), 3)
    with pytest.raises(ValueError, match="RBC"):
        scale_factor(a, a, by="rbc")
    with pytest.raises(ValueError, match="by must be"):
        scale_factor(a, a, by="size")
    assert scale_factor(ScaleEstimate(50.0, 1, 1), ScaleEstimate(100.0, 1, 1)) == 2.0


@pytest.mark.realdata
def test_real_estimates_plausible(pbc_dir, rpi_dir):
    torch.set_num_threads(2)
    classes = ["lymphocyte", "neutrophil"]
    pbc = LabelledFolder(pbc_dir).load("train", size=360, limit_per_class=6, classes=classes)
    rpi = LabelledFolder(rpi_dir).load("train", size=360, limit_per_class=6, classes=classes)
    ep, er = estimate_scale(pbc.images), estimate_scale(rpi.images)
    # Red cells are ~7.5 um; both systems image them at roughly 50-90 px in these 360 px crops
    # (by eye on a few images; see docs/realdata.md for the full-set figures).
    for e in (ep, er):
        assert e.n_used >= 10
        assert 40 < e.rbc_diameter_px < 100
        assert 40 < e.wbc_diameter_px < 200
    assert 0.6 < scale_factor(er, ep, by="rbc") < 1.6
