"""Colour statistics against a direct numpy/scikit-image/scipy computation on pooled pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from skimage.color import deltaE_ciede2000, rgb2lab

from cellbench.eval.colour import REGIONS, colour_stats

#: CIELAB is computed in float32 (cellbench.eval.image.METRIC_DTYPE), sums in float64: within 1e-4 of
#: skimage's float64 rgb2lab on the scale of L* in [0, 100]
LAB_TOL = 1e-4


def make(n=6, h=20, w=24, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random((n, h, w, 3))
    g = np.clip(y * [0.9, 1.0, 1.1] + 0.03, 0, 1)
    masks = rng.integers(0, 6, (n, h, w)).astype(np.uint8)
    labels = ["eosinophil", "lymphocyte", "eosinophil", "monocyte", "lymphocyte", "eosinophil"][:n]
    return y, g, masks, labels


def t(a):
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def test_matches_direct_computation_with_all_pixels_sampled():
    y, g, masks, labels = make()
    stats = colour_stats(t(g), t(y), masks, labels, samples_per_image=20 * 24, chunk=4)
    ly, lg = rgb2lab(y), rgb2lab(g)
    seen = set()
    for s in stats:
        seen.add((s.cell_type, s.region))
        sel = np.ones(len(y), bool) if s.cell_type == "all" else np.array(labels) == s.cell_type
        m = np.isin(masks, REGIONS[s.region]) & sel[:, None, None]
        pg, py = lg[m], ly[m]
        np.testing.assert_allclose(s.mean, pg.mean(0), atol=LAB_TOL)
        np.testing.assert_allclose(s.std, pg.std(0), atol=LAB_TOL)
        np.testing.assert_allclose(s.target_mean, py.mean(0), atol=LAB_TOL)
        np.testing.assert_allclose(s.target_std, py.std(0), atol=LAB_TOL)
        assert s.delta_e == pytest.approx(deltaE_ciede2000(py.mean(0), pg.mean(0)), abs=LAB_TOL)
        w1 = [wasserstein_distance(pg[:, c], py[:, c]) for c in range(3)]
        np.testing.assert_allclose(s.w1, w1, atol=LAB_TOL)
        assert s.n_pixels == m.sum() and s.n_images == sel.sum()
    regions = ("nucleus", "cytoplasm", "red_cell", "background", "wbc")
    assert seen == {(c, r) for c in ("all", "eosinophil", "lymphocyte", "monocyte") for r in regions}


def test_granules_count_as_cytoplasm_and_platelets_in_no_region():
    y, g, _, labels = make(n=2)
    masks = np.full((2, 20, 24), 2, np.uint8)  # platelet everywhere ...
    masks[:, :5] = 5  # ... but granules on top
    stats = colour_stats(t(g), t(y), masks, labels)
    regions = {s.region for s in stats if s.cell_type == "all"}
    assert regions == {"cytoplasm", "wbc"}
    cyto = next(s for s in stats if s.cell_type == "all" and s.region == "cytoplasm")
    assert cyto.n_pixels == 2 * 5 * 24


def test_identical_images_give_zero_distances_and_seeded_subsample():
    y, _, masks, labels = make(seed=3)
    stats = colour_stats(t(y), t(y), masks, labels, samples_per_image=50)
    assert all(s.delta_e == pytest.approx(0, abs=1e-9) and np.allclose(s.w1, 0) for s in stats)
    _, g, _, _ = make(seed=3)
    a = colour_stats(t(g), t(y), masks, labels, samples_per_image=50, seed=1)
    b = colour_stats(t(g), t(y), masks, labels, samples_per_image=50, seed=1)
    c = colour_stats(t(g), t(y), masks, labels, samples_per_image=50, seed=2)
    assert [s.w1.tolist() for s in a] == [s.w1.tolist() for s in b]
    assert [s.w1.tolist() for s in a] != [s.w1.tolist() for s in c]


def test_needs_masks_and_labels():
    y, g, masks, labels = make(n=2)
    with pytest.raises(ValueError, match="masks"):
        colour_stats(t(g), t(y), None, labels)
    with pytest.raises(ValueError, match="labels"):
        colour_stats(t(g), t(y), masks, labels[:1])


def test_streaming_through_image_metrics_equals_colour_stats():
    from cellbench.eval.colour import ColourAccumulator
    from cellbench.eval.image import image_metrics

    y, g, masks, labels = make(n=5)
    direct = colour_stats(t(g), t(y), masks, labels, seed=3, samples_per_image=64, chunk=2)
    acc = ColourAccumulator(masks, labels, (5, 20, 24), seed=3, samples_per_image=64)
    image_metrics(t(g), t(y), masks=masks, chunk=3, lab_hook=acc.update)
    streamed = acc.result()
    assert len(direct) == len(streamed)
    for a, b in zip(direct, streamed, strict=True):
        assert (a.cell_type, a.region, a.n_pixels) == (b.cell_type, b.region, b.n_pixels)
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-12)
        np.testing.assert_allclose(a.w1, b.w1, atol=1e-12)
    with pytest.raises(ValueError, match="in order"):
        ColourAccumulator(masks, labels, (5, 20, 24)).update(slice(2, 4), None, None)


def test_w1_sample_cap():
    y, g, masks, labels = make(n=4)
    capped = colour_stats(t(g), t(y), masks, labels, samples_per_image=400, max_samples=100)
    assert max(s.n_samples for s in capped) == 100


def test_uint8_images_give_the_metrics_of_their_float32_copies():
    """Run-all may keep images 8-bit (4x smaller); the metrics convert chunk by chunk to the same values."""
    import numpy as np

    from cellbench.eval.image import image_metrics

    g = torch.Generator().manual_seed(3)
    a8 = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8, generator=g)
    b8 = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, 6, (5, 24, 24), generator=g)
    want = image_metrics(a8.float() / 255, b8.float() / 255, masks=masks, workers=1)
    got = image_metrics(a8, b8, masks=masks, workers=1)
    for region in want:
        for k in want[region]:
            np.testing.assert_array_equal(got[region][k], want[region][k], err_msg=f"{region}/{k}")
