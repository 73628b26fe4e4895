"""CPU inference engines of the generators: fp32 engines agree with eager PyTorch to 1e-3."""

from __future__ import annotations

import argparse

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


@pytest.mark.parametrize("name", ["folded", "channels_last", "subpixel", "onnxruntime"])
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
    bf16_sub = build_engine(generator, "bf16_subpixel")(images)
    assert bf16_sub.dtype == torch.float32 and (bf16_sub - want).abs().mean() < 0.02
    int8 = build_engine(generator, "int8", calibration=images, size=64)(images)
    assert (int8 - want).abs().mean() < 0.05


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_subpixel_conv_equals_convolution_of_the_nearest_upsampled_input(k):
    """pixel_shuffle(subpixel_conv(conv)(x), 2) == conv(upsample_nearest_x2(x)), the reference computed
    by torch's own interpolate and conv2d, including the zero padding at every border."""
    from cellbench.nets.engines import subpixel_conv

    g = torch.Generator().manual_seed(k)
    conv = torch.nn.Conv2d(6, 5, k, padding=k // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(5, generator=g))
    x = torch.randn(2, 6, 7, 9, generator=g)  # odd sides: no symmetry hides an off-by-one
    sub = subpixel_conv(conv)
    side = {1: 1, 3: 3, 5: 3, 7: 5}[k]  # 2 ceil(p / 2) + 1 low-resolution taps, p = k // 2
    assert sub.kernel_size == (side, side) and sub.out_channels == 4 * 5
    with torch.no_grad():
        want = conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        got = torch.nn.functional.pixel_shuffle(sub(x), 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    with pytest.raises(ConfigError, match="odd square kernel"):
        subpixel_conv(torch.nn.Conv2d(3, 3, 4, padding=2))


def test_subpixel_engine_on_the_paper_generator_shape():
    """The paper's generator layout (5x5 transposed decoders, a transposed-convolution head with a bias
    over cat[up(h), x]; here 4 narrow levels) through the sub-pixel rewrite: fp32 within 1e-5 of the
    module; a bilinear generator is refused, as is an unfolded one."""
    from cellbench.nets.engines import SubpixelUNet

    torch.manual_seed(3)
    gen = UNetGenerator([8, 16, 16, 16], kernel_size=5, up_kernel_size=5).eval()
    for m in gen.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = gen(x)
        folded = fold_batch_norm(gen)
        torch.testing.assert_close(SubpixelUNet(folded)(x), want, atol=1e-5, rtol=0)
    assert (build_engine(gen, "subpixel")(x) - want).abs().max() < 1e-5
    with pytest.raises(ConfigError, match="nearest"):
        SubpixelUNet(fold_batch_norm(UNetGenerator([4, 4], upsample="bilinear").eval()))
    with pytest.raises(ConfigError, match="fold the batch norm"):
        SubpixelUNet(gen)


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


def test_cli_engine_options_offer_every_engine():
    """`transform --engine` offers every engine but int8 (which needs calibration images: Python API),
    `profile --engine` every engine, so a new engine cannot be missing from one command line."""
    from cellbench.cli import build_parser

    def choices(command: str) -> set[str]:
        sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        return set(next(a for a in sub.choices[command]._actions if a.dest == "engine").choices)

    assert choices("transform") == set(ENGINES) - {"int8"}
    assert choices("profile") == set(ENGINES)


def test_engine_errors():
    with pytest.raises(ConfigError, match="choose one of"):
        with_engine(create_normalizer("poly"), "tensorrt")
    with pytest.raises(ConfigError, match="engines apply to the networks"):
        with_engine(create_normalizer("poly"), "bf16")
    assert with_engine(create_normalizer("poly"), "eager").name == "poly"
    with pytest.raises(ConfigError, match="int8"):
        build_engine(UNetGenerator([4, 4]), "int8")
    assert set(ENGINES) >= {"eager", "folded", "channels_last", "subpixel", "onnxruntime", "compile", "bf16",
                            "bf16_subpixel", "int8"}


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
