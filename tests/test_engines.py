"""CPU inference engines of the generators: fp32 engines agree with eager PyTorch to 1e-3."""

from __future__ import annotations

import pytest
import torch

from cellbench.errors import ConfigError
from cellbench.methods import create_normalizer
from cellbench.nets import UNetGenerator
from cellbench.nets.engines import ENGINES, build_engine, engine_available, fold_batch_norm, with_engine


@pytest.fixture(scope="module")
def generator() -> UNetGenerator:
    """The quick preset's architecture with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    g = UNetGenerator([16, 32, 32], kernel_size=5, up_kernel_size=3, head_channels=32)
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return g.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_fold_batch_norm_removes_bn_and_keeps_output(generator, images):
    folded = fold_batch_norm(generator)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in generator.modules())  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(images), generator(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["folded", "channels_last", "onnxruntime"])
def test_fp32_engines_within_1e3_of_eager(name, generator, images):
    with torch.no_grad():
        want = generator(images)
    got = build_engine(generator, name, threads=2, size=64)(images)
    assert (got - want).abs().max() < 1e-3


@pytest.mark.slow
def test_compile_engine_within_1e3(generator, images):
    reason = engine_available("compile")
    if reason:
        pytest.skip(reason)
    with torch.no_grad():
        want = generator(images)
    got = build_engine(generator, "compile")(images)
    assert (got - want).abs().max() < 1e-3


def test_reduced_precision_engines_close(generator, images):
    """bf16 and int8 are approximations: mean absolute difference a few 1/255 at most on random weights."""
    with torch.no_grad():
        want = generator(images)
    bf16 = build_engine(generator, "bf16")(images)
    assert bf16.dtype == torch.float32 and (bf16 - want).abs().mean() < 0.02
    int8 = build_engine(generator, "int8", calibration=images, size=64)(images)
    assert (int8 - want).abs().mean() < 0.05


def test_with_engine_routes_normalizer_transform(images):
    norm = create_normalizer("ccgan", "quick", device="cpu")
    norm.fitted = True
    with torch.no_grad():
        want = norm.transform(images)
    with_engine(norm, "onnxruntime")
    assert norm.inference_engine is not None
    assert (norm.transform(images) - want).abs().max() < 1e-3
    with_engine(norm, "eager")
    assert norm.inference_engine is None


def test_engine_errors():
    with pytest.raises(ConfigError, match="choose one of"):
        with_engine(create_normalizer("poly"), "tensorrt")
    with pytest.raises(ConfigError, match="engines apply to the networks"):
        with_engine(create_normalizer("poly"), "bf16")
    assert with_engine(create_normalizer("poly"), "eager").name == "poly"
    with pytest.raises(ConfigError, match="int8"):
        build_engine(UNetGenerator([4, 4]), "int8")
    assert set(ENGINES) >= {"eager", "folded", "channels_last", "onnxruntime", "compile", "bf16", "int8"}
