"""PSNR, SSIM and CIEDE2000 against scikit-image (the reference implementation), to 1e-4.

References: ``skimage.metrics.peak_signal_noise_ratio``, ``skimage.metrics.structural_similarity``
(Gaussian weights, sigma 1.5, population covariance), ``skimage.color.rgb2lab`` +
``deltaE_ciede2000``, and Sharma, Wu & Dalal (2005) Table 1 for CIEDE2000 itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cellbench.eval import image as im
from cellbench.io import read_image
from cellbench.tensors import center_crop_or_pad

TOL = 1e-4


def sk_ssim(y, g, data_range=1.0, full=False):
    return structural_similarity(y, g, data_range=data_range, channel_axis=-1, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, full=full)


def reference(y: np.ndarray, g: np.ndarray, masks: np.ndarray | None) -> dict:
    """skimage's values per image: y, g (N, H, W, 3) float in [0, 1]; masks (N, H, W) labels."""
    out = {"image": {k: [] for k in ("psnr", "ssim", "ciede2000_mean", "ciede2000_p95")}}
    if masks is not None:
        out["wbc"] = {k: [] for k in out["image"]}
    for i in range(len(y)):
        de = deltaE_ciede2000(rgb2lab(y[i]), rgb2lab(g[i]))
        out["image"]["psnr"].append(peak_signal_noise_ratio(y[i], g[i], data_range=1.0))
        out["image"]["ssim"].append(sk_ssim(y[i], g[i]))
        out["image"]["ciede2000_mean"].append(de.mean())
        out["image"]["ciede2000_p95"].append(np.percentile(de, 95))
        if masks is not None:
            wbc = np.isin(masks[i], (3, 4, 5))
            _, smap = sk_ssim(y[i], g[i], full=True)
            out["wbc"]["psnr"].append(peak_signal_noise_ratio(y[i][wbc], g[i][wbc], data_range=1.0))
            out["wbc"]["ssim"].append(smap[wbc].mean())
            out["wbc"]["ciede2000_mean"].append(de[wbc].mean())
            out["wbc"]["ciede2000_p95"].append(np.percentile(de[wbc], 95))
    return out


def disc_masks(n: int, h: int, w: int) -> np.ndarray:
    """Background 0, a red cell 1, a WBC with nucleus 4, cytoplasm 3 and granules 5."""
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((n, h, w), np.uint8)
    r = np.hypot(yy - h / 2, xx - w / 2)
    m[:, r < 0.35 * min(h, w)] = 3
    m[:, r < 0.2 * min(h, w)] = 4
    m[:, (r < 0.3 * min(h, w)) & (r > 0.25 * min(h, w)) & (xx % 3 == 0)] = 5
    m[:, np.hypot(yy - 6, xx - 6) < 5] = 1
    return m


def to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


def assert_close(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref)
    for region in ref:
        for k, v in ref[region].items():
            np.testing.assert_allclose(ours[region][k], np.asarray(v), rtol=0, atol=TOL,
                                       err_msg=f"{region} {k}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_synthetic_matches_skimage(dtype):
    rng = np.random.default_rng(0)
    y = rng.random((3, 48, 56, 3))
    g = np.clip(y * 0.9 + 0.07 + rng.normal(0, 0.04, y.shape), 0, 1)
    y, g = y.astype(dtype), g.astype(dtype)
    masks = disc_masks(3, 48, 56)
    ours = im.image_metrics(to_t(g), to_t(y), masks=masks)
    assert_close(ours, reference(y.astype(np.float64), g.astype(np.float64), masks))


def test_uint8_inputs_equal_skimage_with_data_range_255():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    g = np.clip(y.astype(int) + rng.integers(-20, 21, y.shape), 0, 255).astype(np.uint8)
    p = im.psnr(g, y)  # uint8 stacks are scaled to [0, 1]
    s = im.ssim(g, y)
    c = im.ciede2000_stats(g, y)
    for i in range(2):
        assert p[i] == pytest.approx(peak_signal_noise_ratio(y[i], g[i], data_range=255), abs=TOL)
        assert s[i] == pytest.approx(sk_ssim(y[i], g[i], data_range=255), abs=TOL)
        de = deltaE_ciede2000(rgb2lab(y[i]), rgb2lab(g[i]))
        assert c["mean"][i] == pytest.approx(de.mean(), abs=TOL)
        assert c["p95"][i] == pytest.approx(np.percentile(de, 95), abs=TOL)


@pytest.mark.realdata
def test_real_pbc_images_match_skimage(pbc_dir):
    files = [sorted((pbc_dir / c).glob("*.jpg"))[0] for c in ("neutrophil", "eosinophil", "lymphocyte")]
    y = np.stack([center_crop_or_pad(read_image(f), 128) for f in files]).astype(np.float64) / 255.0
    # a plausible "normalized" output: per-channel gamma and gain, slight blur, clipped
    g = np.clip(np.power(y, [1.1, 0.95, 1.0]) * [0.97, 1.02, 0.99], 0, 1)
    g[:, 1:-1, 1:-1] = 0.5 * g[:, 1:-1, 1:-1] + 0.125 * (g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2]
                                                          + g[:, 1:-1, 2:])
    masks = disc_masks(3, 128, 128)
    ours = im.image_metrics(to_t(g), to_t(y), masks=masks, chunk=2)  # chunking must not matter
    assert_close(ours, reference(y, g, masks))


def test_ssim_map_is_skimage_full_map():
    rng = np.random.default_rng(2)
    y = rng.random((1, 30, 33, 3))
    g = np.clip(y + rng.normal(0, 0.1, y.shape), 0, 1)
    _, smap = sk_ssim(y[0], g[0], full=True)
    np.testing.assert_allclose(im.ssim_map(to_t(g), to_t(y))[0], smap.mean(-1), atol=1e-10)


def test_rgb_to_lab_matches_skimage_including_out_of_gamut_values():
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.05, 1.05, (2, 17, 19, 3))
    np.testing.assert_allclose(im.rgb_to_lab(to_t(x)).permute(0, 2, 3, 1).numpy(), rgb2lab(x), atol=1e-9)


# Sharma, Wu & Dalal (2005), Table 1: (L1, a1, b1), (L2, a2, b2), dE00
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 2.8361, -74.0200), (50.0, 0.0, -82.7485), 3.4412),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


def test_ciede2000_published_pairs_and_skimage():
    lab1 = np.array([p[0] for p in SHARMA])
    lab2 = np.array([p[1] for p in SHARMA])
    ours = im.ciede2000(lab1, lab2, dim=-1).numpy()
    np.testing.assert_allclose(ours, [p[2] for p in SHARMA], atol=1e-4)
    rng = np.random.default_rng(4)
    a = np.stack([rng.uniform(0, 100, 5000), rng.uniform(-90, 90, 5000), rng.uniform(-90, 90, 5000)], -1)
    b = np.stack([rng.uniform(0, 100, 5000), rng.uniform(-90, 90, 5000), rng.uniform(-90, 90, 5000)], -1)
    a[:50, 1:] = 0.0  # achromatic colours take the zero-chroma branches
    np.testing.assert_allclose(im.ciede2000(a, b, dim=-1).numpy(), deltaE_ciede2000(a, b), atol=1e-9)


def test_identical_images_and_empty_masks():
    rng = np.random.default_rng(5)
    y = to_t(rng.random((2, 24, 24, 3)))
    masks = np.zeros((2, 24, 24), np.uint8)
    masks[0, 5:10, 5:10] = 4
    r = im.image_metrics(y, y.clone(), masks=masks)
    assert np.all(np.isinf(r["image"]["psnr"]))
    np.testing.assert_allclose(r["image"]["ssim"], 1.0, atol=1e-12)
    np.testing.assert_allclose(r["image"]["ciede2000_mean"], 0.0, atol=1e-12)
    assert all(np.isnan(r["wbc"][k][1]) for k in ("psnr", "ssim", "ciede2000_mean", "ciede2000_p95"))
    assert np.isfinite(r["wbc"]["ssim"][0])


def test_float32_metrics_match_the_float64_building_blocks():
    """The per-image metrics run in float32 (METRIC_DTYPE) with float64 sums: within 1e-5 of the float64
    SSIM map and CIEDE2000 (themselves skimage's to 1e-10) on 64x64 images with small and large errors."""
    g = torch.Generator().manual_seed(5)
    y = torch.rand(3, 3, 64, 64, generator=g, dtype=torch.float64)
    pred = (y + 0.02 * torch.randn(y.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    pred[2] = torch.rand(3, 64, 64, generator=g, dtype=torch.float64)
    r = im.image_metrics(pred, y, workers=1)["image"]
    r5 = im._ssim_radius()
    want_ssim = im.ssim_map(pred, y)[:, r5:-r5, r5:-r5].mean((1, 2))
    de = im.ciede2000(im.rgb_to_lab(y), im.rgb_to_lab(pred), dim=1).flatten(1)
    np.testing.assert_allclose(r["ssim"], want_ssim, atol=1e-5)
    np.testing.assert_allclose(r["ciede2000_mean"], de.mean(1).numpy(), atol=1e-5)
    np.testing.assert_allclose(r["ciede2000_p95"], np.percentile(de.numpy(), 95, axis=1), atol=1e-4)


def test_bad_inputs_raise_value_errors():
    a = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="differ in shape"):
        im.psnr(a, torch.rand(2, 3, 16, 17))
    with pytest.raises(ValueError, match="at least 11x11"):
        im.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="at least 11x11"):
        im.ssim_map(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40))
    with pytest.raises(ValueError, match="masks"):
        im.image_metrics(a, a, masks=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        im.psnr(torch.rand(2, 4, 16, 16), torch.rand(2, 4, 16, 16))


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_percentile_matches_numpy(n):
    v = torch.from_numpy(np.random.default_rng(n).random((3, n)))
    for q in (0.0, 50.0, 95.0, 99.9, 100.0):
        ref = np.percentile(v.numpy(), q, axis=1)
        np.testing.assert_allclose(im._percentile(v, q).numpy(), ref, atol=1e-12)
