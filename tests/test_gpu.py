"""CUDA: both trainers learn under mixed precision (bf16; fp16 with loss scaling) and channels-last,
resume, infer in tiles and export; NCCL data parallel on two GPUs. Skipped without CUDA (CI has
none): run them on a GPU machine with ``python -m pytest tests/test_gpu.py``."""

from __future__ import annotations

import json

import pytest
import torch

from cellbench.methods import create_normalizer
from cellbench.train import CCGANTrainer

from .test_train import make, paired_data, vgg_cache, weights_of  # noqa: F401  (vgg_cache: fixture)
from .test_train_ddp import run_two_ranks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def deterministic_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
@pytest.mark.parametrize("method", ["ccgan", "pcnet"])
def test_trains_on_cuda_with_amp_and_channels_last(tmp_path, method, amp, vgg_cache):  # noqa: F811
    data = paired_data()
    norm = make(method, device="cuda", amp=amp, iterations=40, checkpoint_every=40, sample_every=40, lr=3e-3)
    trainer = norm.build_trainer(True, 0)
    assert trainer.device.type == "cuda" and trainer.channels_last
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    conv = next(m for m in trainer.nets["G_xy"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)

    before = (norm.G_xy.eval()(data.x) - data.y).abs().mean()
    norm.bind_run_dir(tmp_path / "run")
    norm.fit(data, seed=0)
    log = [json.loads(s) for s in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 40
    assert all(torch.isfinite(torch.tensor(v)) for r in log for k, v in r.items() if k != "iteration")
    assert next(norm.G_xy.parameters()).is_cuda
    out = norm.transform(data.x)  # CPU in, CPU out, computed on the GPU
    assert out.device.type == "cpu" and out.dtype == torch.float32
    assert (out - data.y).abs().mean() < 0.8 * before  # it learned the paired mapping
    state = torch.load(
        tmp_path / "run" / "checkpoints" / "iter_0000040" / "state.pt", weights_only=True
    )
    assert bool(state["scaler"]) == (amp == "fp16")  # fp16's loss scale is part of the resumable state


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_resume_on_cuda(tmp_path, monkeypatch, amp):
    data = paired_data()
    full = make("ccgan", device="cuda", amp=amp, iterations=5)
    full.bind_run_dir(tmp_path / "full")
    want = weights_of(full.fit(data, seed=0))
    real_step = CCGANTrainer.train_step

    def crash_at_4(self, x, y):
        if self.iteration == 3:
            raise KeyboardInterrupt
        return real_step(self, x, y)

    monkeypatch.setattr(CCGANTrainer, "train_step", crash_at_4)
    first = make("ccgan", device="cuda", amp=amp, iterations=5)
    first.bind_run_dir(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        first.fit(data, seed=0)
    monkeypatch.setattr(CCGANTrainer, "train_step", real_step)
    resumed = make("ccgan", device="cuda", amp=amp, iterations=5)
    resumed.bind_run_dir(tmp_path / "cut", resume=True)
    got = weights_of(resumed.fit(data, seed=0))
    # deterministic cuDNN: equal up to float rounding (a lost optimizer or RNG state moves weights ~1e-3)
    for k in want:
        assert torch.allclose(got[k].float().cpu(), want[k].float().cpu(), atol=1e-4, rtol=0), k


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_cuda_inference_matches_cpu_in_tiles(preset):
    cpu = create_normalizer("ccgan", preset, device="cpu")
    cpu.fitted = True  # randomly initialised generators: the test compares devices, not quality
    x = torch.rand(2, 3, 300, 420, generator=torch.Generator().manual_seed(0))  # larger than a tile
    want = cpu.transform(x)
    for amp, max_tol, mean_tol in (("off", 0.03, 3e-3), ("bf16", 0.1, 0.01), ("fp16", 0.03, 3e-3)):
        gpu = create_normalizer("ccgan", preset, device="cuda", amp=amp)
        gpu.load_state_dict(cpu.state_dict())
        gpu.fitted = True
        gpu.to("cuda")
        got = gpu.transform(x)
        assert got.shape == x.shape and got.device.type == "cpu"
        diff = (got - want).abs()  # off: TF32 convolutions (fp16-like mantissa); bf16/fp16: autocast
        print(preset, amp, float(diff.max()), float(diff.mean()))
        assert diff.max() < max_tol and diff.mean() < mean_tol, (amp, float(diff.max()), float(diff.mean()))


def test_profile_on_cuda():
    from cellbench.eval.profiling import profile_normalizer

    norm = create_normalizer("ccgan", "quick", device="cuda")
    norm.fitted = True
    res = profile_normalizer(norm, size=256, device="cuda", batch_sizes=(1, 4), repeats=3, max_seconds=30)
    assert res["device"] == "cuda" and res["device_name"] == torch.cuda.get_device_name(0)
    assert res["latency_ms_b1"] > 0 and res["peak_mem_mb"] > 0


def test_onnx_export_of_a_cuda_trained_model(tmp_path):
    from cellbench.nets.export import export_onnx

    norm = make("ccgan", device="cuda", amp="bf16", iterations=3).fit(paired_data(), seed=0)
    err = export_onnx(norm.G_xy, tmp_path / "g.onnx", size=64)
    assert err < 1e-3


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallel needs two GPUs")
@pytest.mark.timeout(180)
def test_two_nccl_ranks_stay_identical(tmp_path):
    w0, w1 = run_two_ranks(tmp_path, "cuda", "bf16", timeout=170)
    for k in w0:
        assert (w0[k].float() - w1[k].float()).abs().max() <= 1e-6, k


# -- issue #17: fast transforms on CUDA -------------------------------------------------------------
@pytest.mark.parametrize("interp", ["tetrahedral", "trilinear"])
def test_lut3d_cuda_matches_cpu_kernel(interp):
    """A lut3d moved to CUDA (torch reference path) gives the CPU kernel's output."""
    from cellbench.methods.distill import normalizer_from_cube
    from cellbench.nets.lut import identity_lut

    norm = normalizer_from_cube(identity_lut(33) ** 1.2 * 0.9, interpolation=interp)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cpu = norm.transform(x)
    gpu = norm.to("cuda").transform(x.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["pixelnet", "ctx"])
def test_students_cuda_match_cpu(kind):
    from cellbench.data.sets import PairedSet
    from cellbench.methods.distill import distill

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    data = PairedSet(x=x, y=(x * 0.9 + 0.05), labels=["a"] * 4)
    student = distill(create_normalizer("identity"), data, kind, iterations=20)
    cpu = student.transform(x)
    gpu = student.to("cuda").transform(x.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_profile_normalizer_cuda_records_conditions():
    from cellbench.eval.profiling import profile_normalizer
    from cellbench.methods.distill import normalizer_from_cube
    from cellbench.nets.lut import identity_lut

    p = profile_normalizer(normalizer_from_cube(identity_lut(17)), device="cuda", size=64, batch_sizes=(1, 8),
                           repeats=3, max_seconds=30)
    assert p["device"] == "cuda" and p["latency_by_batch"][8]["rounds"] == 3 and p["throughput_ips"] > 0
