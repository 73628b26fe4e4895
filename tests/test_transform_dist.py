"""Sharded ``cellbench transform`` on torch.distributed (issue #16 item 4): two gloo processes on the
CPU, started as ``torchrun`` starts them, write byte-identical outputs to a one-process run, each
output once; a rerun skips every finished file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellbench.cli import main
from cellbench.io import write_image
from cellbench.transform import MANIFEST

from .test_data import make_paired

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "cellbench", "transform", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(120)
def test_two_gloo_processes_write_what_one_process_writes(tmp_path, capsys):
    root = make_paired(tmp_path / "ds", n=5, size=(32, 32), masks=False)
    model = tmp_path / "poly"
    assert main(["fit", "poly", "--data", str(root), "--out", str(model), "--size", "32"]) == 0
    rng = np.random.default_rng(3)
    src = tmp_path / "in"
    for i in range(27):  # JPEG and PNG, two sizes, two sub-folders: 7 batches of 4 dealt to 2 ranks
        ext = "png" if i % 3 else "jpg"
        shape = (30, 34, 3) if i % 5 else (26, 26, 3)
        write_image(src / ("s" if i % 2 else "t") / f"{i:03d}.{ext}", rng.integers(0, 256, shape, dtype=np.uint8))
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["transform", "--model", str(model), str(src), str(one), "-q", "--batch-size", "4",
                 "--workers", "0"]) == 0
    capsys.readouterr()
    r = _torchrun(2, "--model", str(model), str(src), str(two), "-q", "--batch-size", "4", "--workers", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    # rank 0 alone reports, with the total of both ranks
    assert r.stdout.count("transformed 27 image(s), skipped 0 already done") == 1, r.stdout
    assert "by 2 processes" in r.stdout

    def files(d: Path) -> dict[str, bytes]:
        return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
                if p.is_file() and not p.name.startswith(".")}

    a, b = files(one), files(two)
    assert len(a) == 27 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []  # byte-identical outputs
    assert not [p for p in two.rglob("*") if p.name.endswith(".tmp")]
    manifest = json.loads((two / MANIFEST).read_text())
    assert manifest["method"] == "poly"
    assert {k: manifest[k] for k in ("params_sha256", "state_sha256")} == \
        {k: json.loads((one / MANIFEST).read_text())[k] for k in ("params_sha256", "state_sha256")}

    # a rerun skips every finished file (none rewritten), and redoes a missing one exactly once
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in two.rglob("*.png")}
    missing = sorted(stamps)[5]
    missing.unlink()
    r = _torchrun(2, "--model", str(model), str(src), str(two), "-q", "--batch-size", "4", "--workers", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "transformed 1 image(s), skipped 26 already done" in r.stdout, r.stdout
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in two.rglob("*.png") if p != missing} == \
        {p: v for p, v in stamps.items() if p != missing}
    assert missing.read_bytes() == (one / missing.relative_to(two)).read_bytes()


@pytest.mark.timeout(120)
def test_a_refusal_on_rank_0_stops_every_rank(tmp_path):
    root = make_paired(tmp_path / "ds", n=5, size=(32, 32), masks=False)
    for m in ("poly", "affine"):
        assert main(["fit", m, "--data", str(root), "--out", str(tmp_path / m), "--size", "32"]) == 0
    src = tmp_path / "in"
    for i in range(6):
        write_image(src / f"{i}.png", np.full((16, 16, 3), 20 * i, np.uint8))
    out = tmp_path / "out"
    assert main(["transform", "--model", str(tmp_path / "affine"), str(src), str(out), "-q"]) == 0
    # another model into the same folder: rank 0 refuses, and rank 1 does not hang or write
    r = _torchrun(2, "--model", str(tmp_path / "poly"), str(src), str(out), "-q", "--workers", "0")
    assert r.returncode != 0
    assert "another model" in r.stderr
    assert json.loads((out / MANIFEST).read_text())["method"] == "affine"
