"""``histmatch`` equals scikit-image's ``match_histograms`` on the same reference."""

from __future__ import annotations

import numpy as np
import torch
from skimage.exposure import match_histograms

from cellbench.data.sets import LabelledSet, PairedSet, UnpairedSet
from cellbench.methods import create_normalizer

from .smears import toy_smears


def on_grid(t):
    return (t * 255).round() / 255


def test_equals_skimage_match_histograms():
    x, _ = toy_smears(3, 48, seed=0, noise=0.03)
    ref, _ = toy_smears(2, 48, seed=1, noise=0.03, background=(0.85, 0.9, 0.95))
    x, ref = on_grid(x), on_grid(ref)
    # the reference of the normalizer: all target pixels pooled; skimage gets the same pixels
    norm = create_normalizer("histmatch").fit(UnpairedSet(LabelledSet(x, ["a"] * 3), LabelledSet(ref, ["a"] * 2)))
    ref_np = ref.permute(0, 2, 3, 1).reshape(-1, 1, 3).double().numpy()  # all pixels as one image
    for i in range(len(x)):
        img = x[i].permute(1, 2, 0).double().numpy()
        want = match_histograms(img, ref_np, channel_axis=-1)
        got = norm.transform(x[i:i + 1])[0].permute(1, 2, 0).double().numpy()
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_output_histogram_matches_target():
    x, _ = toy_smears(4, 64, seed=2, noise=0.05)
    y = on_grid((x * 0.7 + 0.2).clamp(0, 1))
    norm = create_normalizer("histmatch").fit(PairedSet(x=x, y=y, labels=["a"] * 4))
    out = norm.transform(on_grid(x))
    for c in range(3):
        assert abs(out[:, c].mean() - y[:, c].mean()) < 0.01
        assert abs(out[:, c].std() - y[:, c].std()) < 0.01


def test_constant_image_is_finite():
    x, _ = toy_smears(2, 32, seed=3)
    norm = create_normalizer("histmatch").fit(PairedSet(x=x, y=x, labels=["a"] * 2))
    for v in (0.0, 1.0, 0.5):
        out = norm.transform(torch.full((1, 3, 16, 16), v))
        assert torch.isfinite(out).all()
