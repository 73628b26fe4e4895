"""Metric speed: cellbench's implementations vs scikit-image's reference loop, and evaluate_paired.

Inputs: 16 random image pairs of 256 x 256 (the evaluated size), float in [0, 1], with a WBC mask.
The ``skimage`` rows run the reference functions image by image (what a naive evaluation would do)
so the speed-up is visible in one table. Run with ``tox -e bench`` (or
``pytest tests/benchmarks/test_bench_metrics.py --benchmark-enable``); the development machine is
shared, so absolute figures are noisy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cellbench.data.sets import PairedSet
from cellbench.eval import image as im
from cellbench.eval.colour import colour_stats
from cellbench.eval.evaluate import evaluate_paired

N, SIZE = 16, 256
LABELS = [("eosinophil", "lymphocyte", "neutrophil", "monocyte")[i % 4] for i in range(N)]


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(N, 3, SIZE, SIZE, generator=g) * 0.6 + 0.2
    out = (y * 0.9 + 0.05 + 0.02 * torch.randn(y.shape, generator=g)).clamp(0, 1)
    masks = torch.zeros(N, SIZE, SIZE, dtype=torch.uint8)
    masks[:, 70:190, 70:190] = 3
    masks[:, 100:160, 100:160] = 4
    masks[:, :50, :50] = 1
    yn = y.permute(0, 2, 3, 1).double().numpy()
    on = out.permute(0, 2, 3, 1).double().numpy()
    return out, y, masks, on, yn


def _per_image(benchmark, n=N):
    benchmark.extra_info["images"] = n
    benchmark.extra_info["image_size"] = SIZE


def test_bench_psnr(benchmark, pairs):
    out, y, *_ = pairs
    _per_image(benchmark)
    benchmark(im.psnr, out, y)


def test_bench_psnr_skimage(benchmark, pairs):
    *_, on, yn = pairs
    _per_image(benchmark)
    benchmark(lambda: [peak_signal_noise_ratio(yn[i], on[i], data_range=1.0) for i in range(N)])


def test_bench_ssim(benchmark, pairs):
    out, y, *_ = pairs
    _per_image(benchmark)
    benchmark(im.ssim, out, y)


def test_bench_ssim_skimage(benchmark, pairs):
    *_, on, yn = pairs
    _per_image(benchmark)
    kw = dict(data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    benchmark(lambda: [structural_similarity(yn[i], on[i], **kw) for i in range(N)])


def test_bench_ciede2000(benchmark, pairs):
    out, y, *_ = pairs
    _per_image(benchmark)
    benchmark(im.ciede2000_stats, out, y)


def test_bench_ciede2000_skimage(benchmark, pairs):
    *_, on, yn = pairs
    _per_image(benchmark)

    def run():
        res = []
        for i in range(N):
            de = deltaE_ciede2000(rgb2lab(yn[i]), rgb2lab(on[i]))
            res.append((de.mean(), np.percentile(de, 95)))
        return res

    benchmark(run)


def test_bench_image_metrics_with_wbc(benchmark, pairs):
    """PSNR, SSIM, CIEDE2000 mean/p95 over the image and inside the WBC, in one pass."""
    out, y, masks, *_ = pairs
    _per_image(benchmark)
    benchmark(im.image_metrics, out, y, masks=masks)


def test_bench_colour_stats(benchmark, pairs):
    out, y, masks, *_ = pairs
    _per_image(benchmark)
    benchmark(colour_stats, out, y, masks, LABELS)


def test_bench_evaluate_paired(benchmark, pairs):
    out, y, masks, *_ = pairs
    data = PairedSet(x=out, y=y, labels=LABELS, masks=masks)
    _per_image(benchmark)
    recs = benchmark.pedantic(evaluate_paired, args=("identity", out, data), kwargs={"run": "bench"},
                              rounds=3, iterations=1)
    assert recs
