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


def test_choose_engine_picks_a_passing_engine_and_rejects_a_bad_one(images, monkeypatch):
    """The speed stage's engine choice: every candidate is checked against eager's output; an engine
    that changes the output beyond the bound is rejected whatever its speed."""
    from cellbench.eval import profiling
    from cellbench.nets import engines

    norm = create_normalizer("ccgan", "quick", device="cpu")
    norm.fitted = True
    with torch.no_grad():
        want = norm.transform(images)
    real_build = engines.build_engine

    def build(generator, name, **kw):  # "folded" made wrong (and instant): must be rejected
        if name == "folded":
            return lambda x: torch.zeros(x.shape[0], 3, *x.shape[-2:])
        return real_build(generator, name, **kw)

    monkeypatch.setattr(engines, "build_engine", build)
    masks = torch.full((2, 64, 64), 4, dtype=torch.uint8)  # all nucleus: the WBC region is the image
    best, rows = profiling.choose_engine(norm, images, candidates=["folded", "channels_last", "bf16"], masks=masks,
                                         rounds=2)
    by = {r["engine"]: r for r in rows}
    assert set(by) == {"eager", "folded", "channels_last", "bf16"}
    assert not by["folded"]["ok"] and "fp32 engine" in by["folded"]["reason"]
    assert by["channels_last"]["ok"] and by["channels_last"]["max_abs_diff"] < 1e-3
    assert by["eager"]["ok"] and by["eager"]["max_abs_diff"] == 0.0
    assert by["bf16"]["ok"] == (by["bf16"]["ciede2000_mean"] <= profiling.ENGINE_MAX_DE)
    assert best in {n for n, r in by.items() if r["ok"]} and best != "folded"
    assert by[best]["latency_ms"] == min(r["latency_ms"] for r in rows if r["ok"])
    # the chosen engine is switched on, and its output is the one checked
    out = norm.transform(images)
    assert (out - want).abs().max() <= max(by[best]["max_abs_diff"], 1e-6) + 1e-6


def test_choose_engine_leaves_classical_methods_alone(images):
    from cellbench.eval.profiling import choose_engine

    assert choose_engine(create_normalizer("poly"), images, candidates=["bf16"]) == ("eager", [])
