"""The stage cache: keys from content and configuration (never paths), no side effects on read,
atomic and checked files, the host in speed keys."""

from __future__ import annotations

import logging

import pytest
import torch

from cellbench.bench import StageCache, open_benchmark
from cellbench.bench.cache import config_hash, host_info, source_version
from cellbench.bench.store import load_records, save_records, save_tensors
from cellbench.errors import MissingWeightsError
from cellbench.eval.metrics import make_record


def test_reading_a_stage_creates_nothing(tmp_path):
    cache = StageCache(tmp_path / "run")
    st = cache.stage("fit-hm", {"a": 1})
    assert not st.done and not cache.ready(st)
    assert st.key == config_hash({"name": "fit-hm", "a": 1}) and st.dir.name == f"fit-hm-{st.key}"
    assert not (tmp_path / "run").exists()


def test_finished_stage_records_sizes_and_hashes_and_detects_corruption(tmp_path, caplog):
    cache = StageCache(tmp_path)
    st = cache.begin(cache.stage("eval-x", {"k": 2}))
    save_tensors(st, "outputs.safetensors", {"outputs": torch.arange(300, dtype=torch.uint8).view(3, 10, 10)})
    save_records(st, "records.json", [make_record("r", "x", "psnr", 30.0)])
    cache.finish(st)
    files = st.record()["files"]
    assert set(files) == {"outputs.safetensors", "records.json"}
    assert files["records.json"]["size"] == st.path("records.json").stat().st_size
    assert not list(st.dir.glob(".*.tmp"))  # no temporary file left
    fresh = StageCache(tmp_path)  # another process: checks the files once
    assert fresh.ready(fresh.stage("eval-x", {"k": 2}))
    assert load_records(st, "records.json")[0].unit == "dB"
    data = st.path("outputs.safetensors").read_bytes()
    st.path("outputs.safetensors").write_bytes(data[:-7])
    again = StageCache(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert not again.ready(again.stage("eval-x", {"k": 2}))
    assert "outputs.safetensors has" in caplog.text and not st.done  # to be redone
    # same size, other bytes: the checksum catches it
    cache2 = StageCache(tmp_path)
    st2 = cache2.begin(cache2.stage("eval-y", {}))
    save_records(st2, "records.json", [make_record("r", "x", "psnr", 30.0)])
    cache2.finish(st2)
    text = st2.path("records.json").read_text()
    st2.path("records.json").write_text(text.replace("30.0", "31.0"))
    assert StageCache(tmp_path).stage("eval-y", {}).problems() == ["records.json is corrupt (SHA-256 differs)"]


def test_fit_keys_do_not_depend_on_how_the_run_folder_is_named(tmp_path, monkeypatch):
    """pcNet on the classifier's features: its key holds the classifier stage's key, not its path."""
    import cellbench.nets.features as features

    def no_vgg(*a, **k):
        raise MissingWeightsError("no VGG-16 weights here")

    monkeypatch.setattr(features, "resolve_vgg16_weights", no_vgg)
    monkeypatch.chdir(tmp_path)
    rel = open_benchmark("run", methods=["pcnet", "hm"], progress=False)
    absolute = open_benchmark(tmp_path / "run", methods=["pcnet", "hm"], progress=False)
    other = open_benchmark(tmp_path / "elsewhere" / "run2", methods=["pcnet", "hm"], progress=False)
    assert rel.fits.method_params("pcnet")[1]["feature_net"] == "classifier"
    for m in ("pcnet", "hm"):
        assert rel.fits.fit_stage(m).key == absolute.fits.fit_stage(m).key == other.fits.fit_stage(m).key
        assert rel.eval_stage(m).key == other.eval_stage(m).key
    assert rel.fits.fit_stage("pcnet").config["classifier"] == rel.fits.classifier_stage().key
    assert not (tmp_path / "run").exists() and not (tmp_path / "elsewhere").exists()  # keys touch nothing


def test_speed_keys_carry_the_host(tmp_path, monkeypatch):
    bench = open_benchmark(tmp_path / "run", methods=["identity"], progress=False)
    st = bench.speed_stage("identity")
    host = st.config["host"]
    # the speed stage measures with the thread policy's count (cellbench.threads), which its key holds
    assert host == host_info("cpu", threads=bench.speed_threads())
    assert {"hostname", "cpu", "torch_threads", "device_name"} <= set(host)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert bench.speed_stage("identity").key == st.key  # the process's count does not matter ...
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("CELLBENCH_THREADS", str(bench.speed_threads() + 1))
    assert bench.speed_stage("identity").key != st.key  # ... the measurement's does: not reused
    monkeypatch.delenv("CELLBENCH_THREADS")
    import platform

    monkeypatch.setattr(platform, "node", lambda: "another-machine")
    assert bench.speed_stage("identity").key != st.key


def test_eval_version_is_derived_from_the_source():
    a = source_version("cellbench.eval.metrics")
    assert len(a) == 12 and a == source_version("cellbench.eval.metrics")
    assert a != source_version("cellbench.eval.metrics", "cellbench.eval.image")


@pytest.mark.parametrize("name", ["run", "./run"])
def test_run_name_is_the_folder_name(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert open_benchmark(name, methods=["identity"], progress=False).run_name == "run"
