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
TOL = 1e-4  # as tests/test_eval_image.py
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


@pytest.fixture(scope="module")
def ref(pairs):
    """scikit-image's values per image (tests/test_eval_image.py), whole image and inside the WBC."""
    from tests.test_eval_image import reference

    _, _, masks, on, yn = pairs
    r = reference(yn, on, masks.numpy())
    return {region: {k: np.asarray(v) for k, v in d.items()} for region, d in r.items()}


def _per_image(benchmark, n=N):
    benchmark.extra_info["images"] = n
    benchmark.extra_info["image_size"] = SIZE


def test_bench_psnr(benchmark, pairs, ref):
    out, y, *_ = pairs
    _per_image(benchmark)
    res = benchmark(im.psnr, out, y)
    np.testing.assert_allclose(res, ref["image"]["psnr"], rtol=0, atol=TOL)


def test_bench_psnr_skimage(benchmark, pairs):
    out, y, _, on, yn = pairs
    _per_image(benchmark)
    res = benchmark(lambda: [peak_signal_noise_ratio(yn[i], on[i], data_range=1.0) for i in range(N)])
    np.testing.assert_allclose(res, im.psnr(out, y), rtol=0, atol=TOL)


def test_bench_ssim(benchmark, pairs, ref):
    out, y, *_ = pairs
    _per_image(benchmark)
    res = benchmark(im.ssim, out, y)
    np.testing.assert_allclose(res, ref["image"]["ssim"], rtol=0, atol=TOL)


def test_bench_ssim_skimage(benchmark, pairs):
    out, y, _, on, yn = pairs
    _per_image(benchmark)
    kw = dict(data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    res = benchmark(lambda: [structural_similarity(yn[i], on[i], **kw) for i in range(N)])
    np.testing.assert_allclose(res, im.ssim(out, y), rtol=0, atol=TOL)


def test_bench_ciede2000(benchmark, pairs, ref):
    out, y, *_ = pairs
    _per_image(benchmark)
    res = benchmark(im.ciede2000_stats, out, y)
    np.testing.assert_allclose(res["mean"], ref["image"]["ciede2000_mean"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res["p95"], ref["image"]["ciede2000_p95"], rtol=0, atol=TOL)


def test_bench_ciede2000_skimage(benchmark, pairs):
    out, y, _, on, yn = pairs
    _per_image(benchmark)

    def run():
        res = []
        for i in range(N):
            de = deltaE_ciede2000(rgb2lab(yn[i]), rgb2lab(on[i]))
            res.append((de.mean(), np.percentile(de, 95)))
        return res

    res = np.array(benchmark(run))
    ours = im.ciede2000_stats(out, y)
    np.testing.assert_allclose(res[:, 0], ours["mean"], rtol=0, atol=TOL)
    np.testing.assert_allclose(res[:, 1], ours["p95"], rtol=0, atol=TOL)


def test_bench_image_metrics_with_wbc(benchmark, pairs, ref):
    """PSNR, SSIM, CIEDE2000 mean/p95 over the image and inside the WBC, in one pass."""
    out, y, masks, *_ = pairs
    _per_image(benchmark)
    res = benchmark(im.image_metrics, out, y, masks=masks)
    assert set(res) == {"image", "wbc"}
    for region in res:
        for k, v in ref[region].items():
            np.testing.assert_allclose(res[region][k], v, rtol=0, atol=TOL, err_msg=f"{region} {k}")


def test_bench_colour_stats(benchmark, pairs):
    out, y, masks, on, yn = pairs
    _per_image(benchmark)
    stats = benchmark(colour_stats, out, y, masks, LABELS)
    # the WBC's mean CIELAB colour over all images, computed directly with scikit-image
    wbc = np.isin(masks.numpy(), (3, 4, 5))
    (s,) = [s for s in stats if s.cell_type == "all" and s.region == "wbc"]
    # CIELAB in float32 (cellbench.eval.image.METRIC_DTYPE), sums in float64: 1e-4 of skimage's float64
    np.testing.assert_allclose(s.mean, rgb2lab(on)[wbc].mean(0), atol=1e-4)
    np.testing.assert_allclose(s.target_mean, rgb2lab(yn)[wbc].mean(0), atol=1e-4)
    assert s.delta_e == pytest.approx(deltaE_ciede2000(rgb2lab(yn)[wbc].mean(0), rgb2lab(on)[wbc].mean(0)), abs=1e-4)


def test_bench_evaluate_paired(benchmark, pairs, ref):
    out, y, masks, *_ = pairs
    data = PairedSet(x=out, y=y, labels=LABELS, masks=masks)
    _per_image(benchmark)
    recs = benchmark.pedantic(evaluate_paired, args=("identity", out, data), kwargs={"run": "bench"},
                              rounds=3, iterations=1)
    got = {(r.metric, r.region): r.value for r in recs if r.cell_type == "all"}
    for region in ("image", "wbc"):
        for k, v in ref[region].items():
            assert got[(k, region)] == pytest.approx(v.mean(), abs=TOL), (k, region)
