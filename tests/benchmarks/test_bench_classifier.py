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

from cellbench.eval.classifier import WBCClassifier, classifier_config

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
    benchmark.extra_info.update(
        images_per_call=BATCH, input_size=quick_classifier.input_size, arch=quick_classifier.arch,
        threads=torch.get_num_threads(), machine=platform.machine(), torch=torch.__version__)
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:  # absent with --benchmark-disable
        benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.median
