"""Data-parallel training: two CPU processes (gloo) started as torchrun would start them stay identical."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

# argv: output folder, device, amp (tests/test_gpu.py runs it on two GPUs with NCCL)
WORKER = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    from cellbench.data.sets import PairedSet
    from cellbench.methods import create_normalizer
    from cellbench.train import setup_distributed, shutdown
    out, device, amp = sys.argv[1:4]
    dist = setup_distributed(device)  # explicit, as `cellbench fit` does
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    data = PairedSet(x=x, y=(x * 0.8 + 0.1) ** 1.2, labels=["a"] * 8)
    norm = create_normalizer("ccgan", None, gen_widths=[4, 8], disc_widths=[4, 4, 4, 4], crop_size=32,
                             batch_size=2, iterations=3, checkpoint_every=2, sample_every=0, progress=False,
                             device=device, amp=amp)
    norm.bind_run_dir(out + "/run")
    norm.bind_distributed(dist)
    norm.fit(data, seed=0)
    rank = norm.rank
    assert rank == dist.rank and dist.world_size == 2
    save_file({k: v.contiguous().cpu() for k, v in norm.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    norm.save(out + f"/model_from_rank{rank}")
    shutdown(dist)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_ranks(argv: list[str], *, cwd, timeout: float = 110) -> list[str]:
    """Run ``argv`` as ranks 0 and 1 of a torchrun-style group (the environment torchrun sets)."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed workers timed out")
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


def run_two_ranks(tmp_path, device: str, amp: str = "off", timeout: float = 110):
    """Run WORKER as ranks 0 and 1 of a torchrun-style group; the weights each rank saved."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launch_two_ranks([sys.executable, str(script), str(tmp_path), device, amp], cwd=tmp_path, timeout=timeout)
    return load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))


@pytest.mark.timeout(120)
def test_two_gloo_ranks_stay_identical(tmp_path):
    w0, w1 = run_two_ranks(tmp_path, "cpu")
    assert set(w0) == set(w1)
    for k in w0:  # parameters and batch-norm statistics identical on both ranks
        assert (w0[k].float() - w1[k].float()).abs().max() <= 1e-6, k
    ck = tmp_path / "run" / "checkpoints" / "iter_0000003"
    assert (ck / "rng_rank0.pt").exists() and (ck / "rng_rank1.pt").exists()
    import torch

    s0 = torch.load(ck / "rng_rank0.pt", weights_only=True)["source"]["generator"]
    s1 = torch.load(ck / "rng_rank1.pt", weights_only=True)["source"]["generator"]
    assert not torch.equal(s0, s1)  # each rank drew its own batches
    assert (tmp_path / "model_from_rank0" / "normalizer.json").exists()
    assert not (tmp_path / "model_from_rank1").exists()  # only rank 0 writes the model folder


@pytest.mark.timeout(180)
def test_cli_fit_under_torchrun_sets_up_the_group_explicitly(tmp_path):
    """`cellbench fit` as two ranks: one model folder, written (and locked) by rank 0 only."""
    out = tmp_path / "model"
    argv = [sys.executable, "-m", "cellbench", "fit", "ccgan", "--data", "synthetic:n=10,size=32", "--size", "32",
            "--out", str(out), "--device", "cpu", "-q", "--set", "gen_widths=[4, 8]",
            "--set", "disc_widths=[4, 4, 4, 4]", "--set", "crop_size=32", "--set", "batch_size=2",
            "--set", "iterations=2", "--set", "checkpoint_every=2", "--set", "sample_every=0"]
    outs = launch_two_ranks(argv, cwd=tmp_path, timeout=170)
    assert "fitted ccgan" in outs[0] and "fitted ccgan" not in outs[1]  # only rank 0 reports
    assert (out / "normalizer.json").is_file() and (out / "state.safetensors").is_file()
    ck = out / "checkpoints" / "iter_0000002"
    assert (ck / "rng_rank0.pt").exists() and (ck / "rng_rank1.pt").exists()  # both ranks trained
