"""Classifier inference throughput at the ``quick`` preset (images per second, CPU).

Untrained weights cost exactly as much as trained ones, so no training is needed. Input: a batch
of 64 images at 256 x 256 (the data layer's usual crop), resized inside to the preset's input.
Run with ``tox -e bench`` (or ``pytest tests/benchmarks --benchmark-enable``); the machine may be
shared, so figures are noisy.
"""

from __future__ import annotations

import platform

import pytest
import torch

from cellbench.nets.classifier import WBCClassifier
from cellbench.train.classifier import classifier_config

BATCH = 64


@pytest.fixture(scope="module")
def quick_classifier() -> WBCClassifier:
    cfg = classifier_config("quick")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = WBCClassifier(cfg["arch"], [f"c{i}" for i in range(8)], cfg["input_size"],
                            model_kwargs=cfg["model_kwargs"], preset="quick")
    return clf.eval().requires_grad_(False)


@pytest.mark.parametrize("what", ["predict", "embed"])
def test_bench_classifier_inference(benchmark, quick_classifier, what):
    images = torch.rand(BATCH, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    fn = getattr(quick_classifier, what)
    out = benchmark(fn, images, batch_size=BATCH)
    assert len(out) == BATCH
    # the batched call equals the network applied directly to a few images (eval mode, no batching)
    with torch.no_grad():
        logits = quick_classifier.logits(images[:4])
        direct = logits.argmax(1) if what == "predict" else quick_classifier.features(images[:4])
    if what == "predict":
        assert torch.equal(out[:4], direct) and 0 <= int(out.min()) and int(out.max()) < 8
    else:
        assert out.shape == (BATCH, quick_classifier.feature_dim) and torch.isfinite(out).all()
        torch.testing.assert_close(out[:4], direct, rtol=1e-4, atol=1e-4)
    benchmark.extra_info.update(
        images_per_call=BATCH, input_size=quick_classifier.input_size, arch=quick_classifier.arch,
        threads=torch.get_num_threads(), machine=platform.machine(), torch=torch.__version__)
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:  # absent with --benchmark-disable
        benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.median
