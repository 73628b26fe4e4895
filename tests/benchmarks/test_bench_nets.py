"""Speed of the generators (pytest-benchmark; run with --benchmark-enable). No timed asserts; each
benchmark checks what it timed (a deterministic finite forward pass, finite training losses)."""

from __future__ import annotations

import math

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
        again = gen(x)
    # the timed call is the real forward pass: deterministic, finite, and a function of its input
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    with torch.inference_mode():
        assert not torch.allclose(gen(x.flip(-1)), out)


def test_bench_quick_training_iteration(benchmark):
    """One ccGAN iteration of the quick preset (discriminators, then each generator)."""
    from cellbench.data.sets import PairedSet

    torch.set_num_threads(2)
    x = torch.rand(8, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    norm = create_normalizer("ccgan", "quick", progress=False)
    source, paired = norm.batch_source(PairedSet(x=x, y=x.flip(1), labels=["a"] * 8), 0)
    trainer = norm.build_trainer(paired, 0)
    before = {k: v.detach().clone() for k, v in trainer.nets["G_xy"].state_dict().items()}
    benchmark(lambda: trainer.train_step(*source.next_batch()))
    # every loss of the timed iterations is finite, and the step trained the generator
    losses = trainer.losses.values
    assert {"D_x", "D_y", "G_total", "F_total"} <= set(losses), losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    after = trainer.nets["G_xy"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
