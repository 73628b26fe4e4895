"""Transform throughput at 256x256 for every closed-form normalizer, and HM's fit on 1,000 pairs.

Run (CPU, 2 threads)::

    .venv/bin/pytest tests/benchmarks/test_bench_methods.py --benchmark-only

images/s = batch size / mean time per round. Targets (issue 4): HM >= 200 images/s at 256x256 on
2 CPU cores; HM fit on 1,000 pairs < 60 s. Methods with ``sweep_fit_cost == "heavy"`` (networks)
have their own benchmarks.
"""

from __future__ import annotations

import pytest
import torch

from cellbench.data.sets import PairedSet
from cellbench.methods import NORMALIZERS, create_normalizer

from ..smears import toy_smears

BATCH = 32


@pytest.fixture(scope="module")
def batch256():
    x, _ = toy_smears(BATCH, 256, seed=0, noise=0.02, texture=0.1)
    return x


@pytest.fixture(scope="module")
def train():
    x, _ = toy_smears(8, 128, seed=1, noise=0.02, texture=0.1)
    return PairedSet(x=x, y=(0.9 * x**1.1 + 0.03).clamp(0, 1), labels=["a"] * 8)


LIGHT = [n for n in NORMALIZERS.names() if getattr(NORMALIZERS.get(n), "sweep_fit_cost", "light") != "heavy"]


@pytest.mark.parametrize("name", LIGHT)
def test_transform_throughput_256(benchmark, name, batch256, train):
    torch.set_num_threads(2)  # this test only (tests/conftest.py restores the count)
    norm = create_normalizer(name).fit(train, seed=0)
    benchmark.extra_info["batch"] = BATCH
    out = benchmark.pedantic(norm.transform, args=(batch256,), rounds=3, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (the plain test run)
        benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.median
    assert out.shape == batch256.shape and torch.isfinite(out).all()
    # what was timed is the method's per-image map: the batch gives each image what it gets alone
    torch.testing.assert_close(out[3:4], norm.transform(batch256[3:4]), rtol=0, atol=1e-5)
    if name == "identity":
        assert torch.equal(out, batch256)
    elif name in ("affine", "poly", "hm"):  # paired regressions of y = 0.9 x^1.1 + 0.03
        target = (0.9 * batch256**1.1 + 0.03).clamp(0, 1)
        assert (out - target).abs().mean() < 0.5 * (batch256 - target).abs().mean()
    else:
        assert not torch.equal(out, batch256) and norm.passthrough_count == 0


def test_hm_fit_1000_pairs(benchmark):
    torch.set_num_threads(2)
    x, _ = toy_smears(1000, 256, seed=2, noise=0.02, texture=0.1)
    data = PairedSet(x=x, y=(0.9 * x**1.1 + 0.03).clamp(0, 1), labels=["a"] * 1000)
    norm = benchmark.pedantic(lambda: create_normalizer("hm").fit(data, seed=0), rounds=1, iterations=1)
    assert norm.fitted
    # the fitted transform learned y = 0.9 x^1.1 + 0.03: far closer to y than x is (held-out images)
    x_test, _ = toy_smears(4, 128, seed=3, noise=0.02, texture=0.1)
    y_test = (0.9 * x_test**1.1 + 0.03).clamp(0, 1)
    assert (norm.transform(x_test) - y_test).abs().mean() < 0.3 * (x_test - y_test).abs().mean()
