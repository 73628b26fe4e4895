"""Speed of the generators (pytest-benchmark; run with --benchmark-enable). No timed asserts."""

from __future__ import annotations

import pytest
import torch

from cellbench.methods import create_normalizer


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_bench_generator_256(benchmark, preset):
    """One 256x256 image through G_xy (the paper: ~300 ms on a CPU, 10-20 ms on a GPU)."""
    torch.set_num_threads(2)
    gen = create_normalizer("ccgan", preset).G_xy.eval()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = benchmark(gen, x)
    assert out.shape == x.shape


def test_bench_quick_training_iteration(benchmark):
    """One ccGAN iteration of the quick preset (discriminators, then each generator)."""
    from cellbench.data.sets import PairedSet

    torch.set_num_threads(2)
    x = torch.rand(8, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    norm = create_normalizer("ccgan", "quick", progress=False)
    source, paired = norm._source(PairedSet(x=x, y=x.flip(1), labels=["a"] * 8), 0)
    trainer = norm._build_trainer(paired, 0)
    benchmark(lambda: trainer.train_step(*source.next_batch()))
