"""The thread policy (cellbench.threads) and parallel stages (run-all --jobs): policy values under a
fake affinity and cgroup quota, the context manager restores, and --jobs 1 and --jobs 2 give
bit-identical results on a tiny run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from cellbench.errors import ConfigError
from cellbench.threads import (
    LARGE_CROP,
    OVERRIDE_ENV,
    configure_process,
    limit_threads,
    thread_policy,
    threads_for_crop,
    usable_cores,
    worker_environment,
)


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)


def test_usable_cores_from_affinity_and_cgroup_quota(tmp_path):
    # no cgroup files: the affinity counts
    assert usable_cores(affinity={0, 1, 2, 3}, cgroup_root=tmp_path) == 4
    # cgroup v2: "150000 100000" = 1.5 CPUs -> 1 (rounded down); "max" = unlimited
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cores(affinity={0, 1, 2, 3}, cgroup_root=tmp_path) == 1
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert usable_cores(affinity={0, 1, 2, 3}, cgroup_root=tmp_path) == 3
    assert usable_cores(affinity={0, 1}, cgroup_root=tmp_path) == 2  # the affinity is the tighter bound
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(affinity={0, 1, 2, 3}, cgroup_root=tmp_path) == 4
    # cgroup v1: cpu/cpu.cfs_quota_us over cpu.cfs_period_us; -1 = unlimited
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    assert usable_cores(affinity=set(range(8)), cgroup_root=v1) == 2
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cores(affinity=set(range(8)), cgroup_root=v1) == 8
    assert usable_cores(affinity=set(), cgroup_root=tmp_path / "none") == 1  # never 0


def test_policy_values(monkeypatch):
    for cores in (1, 2, 16):
        assert thread_policy("small_net", cores=cores) == 1
        assert thread_policy("classifier", cores=cores) == 1
        assert thread_policy("eval", cores=cores) == 1
        assert thread_policy("large_net", cores=cores) == cores
        assert thread_policy("speed", cores=cores) == cores
    assert threads_for_crop(32, cores=4) == 1  # the quick presets' crops
    assert threads_for_crop(LARGE_CROP, cores=4) == 4 and threads_for_crop(256, cores=4) == 4
    with pytest.raises(ConfigError, match="unknown kind 'gpu'"):
        thread_policy("gpu")
    monkeypatch.setenv(OVERRIDE_ENV, "3")
    assert thread_policy("small_net", cores=2) == 3 and thread_policy("speed", cores=16) == 3
    monkeypatch.setenv(OVERRIDE_ENV, "0")
    with pytest.raises(ConfigError, match="CELLBENCH_THREADS"):
        thread_policy("small_net")
    assert worker_environment(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def test_limit_threads_restores():
    old = torch.get_num_threads()
    with limit_threads(old + 1) as n:
        assert n == old + 1 and torch.get_num_threads() == old + 1
    assert torch.get_num_threads() == old
    with pytest.raises(RuntimeError), limit_threads(old + 2):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == old  # restored after an error too
    with limit_threads(None) as n:
        assert n == old
    configure_process()  # inter-op threads: set once or left as they are, never an error
    assert torch.get_num_threads() == old


def test_trainer_trains_under_the_policy(monkeypatch):
    """The training loop runs with the policy's threads (1 for 32x32 crops) and restores the count."""
    from cellbench.data.sets import PairedSet
    from cellbench.methods import create_normalizer

    seen = []
    from cellbench.train import loop

    real = loop.Trainer._fit

    def spy(self, *a, **k):
        seen.append(torch.get_num_threads())
        return real(self, *a, **k)

    monkeypatch.setattr(loop.Trainer, "_fit", spy)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        norm = create_normalizer("ccgan", "quick", iterations=2, progress=False, checkpoint_every=10**6,
                                 sample_every=0)
        norm.fit(PairedSet(x=x, y=x.flip(1), labels=["a"] * 4), seed=0)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def _tiny_models(tmp_path: Path, monkeypatch) -> None:
    """A copy of models/ with the quick ccGAN and pcNet cut to 20 iterations (a seconds-long run)."""
    from cellbench.presets import models_dir

    models = tmp_path / "models"
    shutil.copytree(models_dir(), models)
    for name, its in (("ccgan", "iterations = 3000"), ("pcnet", "iterations = 2500")):
        text = (models / f"{name}.toml").read_text()
        assert its in text
        quick = text.index("[quick]")
        head, tail = text[:quick], text[quick:]
        tail = tail.replace(its, "iterations = 20").replace("checkpoint_every = 500", "checkpoint_every = 10")
        tail = tail.replace("sample_every = 500", "sample_every = 10")
        (models / f"{name}.toml").write_text(head + tail)
    monkeypatch.setenv("CELLBENCH_MODELS_DIR", str(models))


#: Values that differ between any two runs: timings, and the classifier folder a method's settings name.
VOLATILE = {"wall_s", "cpu_s", "seconds", "classifier_dir"}


def _steady(obj):
    """``obj`` without :data:`VOLATILE` keys and ``fit_seconds`` records (recursively)."""
    if isinstance(obj, dict):
        return {k: _steady(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_steady(v) for v in obj if not (isinstance(v, dict) and v.get("metric") == "fit_seconds")]
    return obj


def _stage_files(run: Path) -> dict[str, dict[str, object]]:
    """Every recorded file of every stage: SHA-256, or the JSON content without timings (speed stages
    and fit.json, which hold nothing but timings, left out)."""
    out = {}
    for rec in sorted(run.glob("stages/*/stage.json")):
        d = json.loads(rec.read_text())
        if d["name"].startswith("speed-"):
            continue
        out[d["name"]] = {k: (_steady(json.loads((rec.parent / k).read_text())) if k.endswith(".json") else v["sha256"])
                          for k, v in d["files"].items() if k != "fit.json"}
    return out


def _results(run: Path) -> list[dict]:
    recs = json.loads((run / "results.json").read_text())["records"]
    return [r for r in recs if r["split"] != "speed" and r["metric"] != "fit_seconds"]


def test_stage_tasks_order_dependencies_and_threads(tmp_path, monkeypatch):
    """The parallel stage graph: classifier first, a student after its teacher, pcNet (classifier features)
    after the classifier, evaluations after their fit and the references; thread counts from the policy."""
    from cellbench.bench import open_benchmark
    from cellbench.bench.runner import StageTask
    from cellbench.errors import MissingWeightsError
    from cellbench.nets import features

    def no_vgg(*a, **k):
        raise MissingWeightsError("no VGG-16 weights in tests")

    monkeypatch.setattr(features, "resolve_vgg16_weights", no_vgg)
    bench = open_benchmark(tmp_path / "run", methods=["identity", "hm", "ccgan", "pcnet", "lut3d:ccgan"],
                           progress=False).configure(jobs=2)
    assert bench.jobs == 2
    tasks = {t.id: t for t in bench.stage_tasks()}
    order = list(tasks)
    assert order[0] == "classifier" and tasks["classifier"].threads == 1
    assert tasks["fit:pcnet"].deps == ("classifier",) and tasks["fit:ccgan"].deps == ()
    assert tasks["fit:lut3d:ccgan"].deps == ("fit:ccgan",)
    assert order.index("fit:ccgan") < order.index("fit:hm") < order.index("fit:lut3d:ccgan")  # trained first
    assert tasks["eval:ccgan"].deps == ("references", "classifier", "fit:ccgan")
    assert tasks["eval:ceiling"].deps == ("references", "classifier")
    assert all(t.threads == 1 for t in tasks.values())  # quick presets: 32x32 crops -> small networks
    assert not (tmp_path / "run").exists()  # computing the graph touches nothing
    assert StageTask("fit", "hm").id == "fit:hm"
    with pytest.raises(ConfigError, match="--jobs"):
        bench.configure(jobs=0)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_jobs_1_and_2_give_identical_results(tmp_path, monkeypatch):
    """A tiny run-all (a trained GAN, a trained perceptual net on the classifier's features) with --jobs 1
    and with --jobs 2 (spawned workers): identical records and stages; --redo-speed redoes speed only."""
    from cellbench.cli import main

    monkeypatch.delenv("CELLBENCH_THREADS", raising=False)
    _tiny_models(tmp_path, monkeypatch)
    args = ["--methods", "identity,ccgan,pcnet", "--set", "synthetic_n=80", "--set", "size=64",
            "--set", 'classifier_preset="tiny"', "--set", "speed_seconds=0.5", "--set", "speed_batch_sizes=[1]",
            "--set", "speed_repeats=2", "--set", "samples_per_class=1", "--set", "realism=false", "-q",
            "--no-report"]
    a, b = tmp_path / "jobs1" / "run", tmp_path / "jobs2" / "run"  # one run name: records name their run
    assert main(["run-all", "--out", str(a), "--jobs", "1", *args]) == 0
    assert main(["run-all", "--out", str(b), "--jobs", "2", *args]) == 0
    fa, fb = _stage_files(a), _stage_files(b)
    assert set(fa) == set(fb)
    assert {"fit-ccgan", "fit-pcnet", "eval-ccgan", "eval-pcnet", "classifier"} <= set(fa)
    for name in fa:
        assert fa[name] == fb[name], f"stage {name} differs between --jobs 1 and --jobs 2"
    assert _results(a) == _results(b)
    # the networks' evaluations ran on the run profile's fp32 eval_engine, and say so in their stage key
    for method in ("ccgan", "pcnet"):
        (cfg,) = [json.loads(p.read_text())["config"] for p in b.glob(f"stages/eval-{method}-*/stage.json")]
        assert cfg["engine"] == "channels_last"
    # --redo-speed re-measures the speed stages only
    before = {p.parent.name: p.stat().st_mtime_ns for p in b.glob("stages/*/DONE")}
    assert main(["run-all", "--out", str(b), "--jobs", "2", "--redo-speed", *args]) == 0
    after = {p.parent.name: p.stat().st_mtime_ns for p in b.glob("stages/*/DONE")}
    assert set(after) == set(before)
    redone = {n for n in after if after[n] != before[n]}
    assert redone and all(n.startswith("speed-") for n in redone)
    assert len(redone) == len([n for n in after if n.startswith("speed-")])
    speed = [r for r in json.loads((b / "results.json").read_text())["records"] if r["split"] == "speed"]
    assert speed and all({"rounds", "spread_p90_median", "cpu_per_wall", "load_avg_1min", "disturbed",
                          "disturbed_reasons"} <= set(r["extra"]) for r in speed)


def test_cpu_bf16_native_reads_the_cpu_flags(tmp_path, monkeypatch):
    import torch

    from cellbench.threads import cpu_bf16_native
    from cellbench.train.loop import Trainer

    with_units, without = tmp_path / "bf16", tmp_path / "plain"
    with_units.write_text("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_bf16_native(cpuinfo=without) is False
    assert cpu_bf16_native(cpuinfo=tmp_path / "missing") is False
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert cpu_bf16_native(cpuinfo=with_units) is True
    # the trainer's autocast dtype on the CPU: bf16 only when asked for and the units are there
    import cellbench.train.loop as loop

    monkeypatch.setattr(loop, "cpu_bf16_native", lambda: True)
    cpu = torch.device("cpu")
    assert Trainer._amp_dtype("bf16", cpu) == torch.bfloat16
    assert Trainer._amp_dtype("auto", cpu) is None and Trainer._amp_dtype("off", cpu) is None
    monkeypatch.setattr(loop, "cpu_bf16_native", lambda: False)
    assert Trainer._amp_dtype("bf16", cpu) is None


def test_a_worker_dies_with_its_parent(tmp_path):
    """run-all's stage workers get SIGTERM when the run is killed (PR_SET_PDEATHSIG), not left training."""
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    pid_file = tmp_path / "child.pid"
    child = tmp_path / "child.py"
    child.write_text("import os, sys, time\n"
                     "from cellbench.threads import die_with_parent\n"
                     "die_with_parent()\n"
                     "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
                     "time.sleep(60)\n")
    parent = tmp_path / "parent.py"
    parent.write_text("import subprocess, sys, time\n"
                      "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])\n"
                      "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, str(parent), str(child), str(pid_file)])
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    p.kill()
    p.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:  # a zombie (reaped by init later) has exited too
                if f.read().split(")")[-1].split()[0] == "Z":
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the worker outlived its parent")
