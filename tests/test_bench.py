"""End-to-end: run-all on a tiny simulated set, caching/resume, compare, report, the cross track."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellbench.cli import main
from cellbench.io import write_image
from cellbench.results import load_results

TINY = ["--set", "synthetic_n=80", "--set", 'classifier_preset="tiny"', "--set", "profile_seconds=1.0",
        "--set", "profile_batch_sizes=[1, 2]", "--set", "profile_repeats=2", "-q"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench") / "run"
    assert main(["run-all", "--out", str(d), "--methods", "identity,affine,hm", *TINY]) == 0
    return d


def test_run_all_writes_results_artifacts_and_report(run_dir):
    records, meta = load_results(run_dir)
    methods = {r.method for r in records}
    assert {"identity", "affine", "hm", "classifier", "ceiling"} <= methods
    metrics = {(r.method, r.metric) for r in records}
    for m in ("identity", "affine", "hm"):
        for metric in ("agreement", "accuracy", "psnr", "ssim", "ciede2000_mean", "c2st_accuracy",
                       "latency_ms_b1", "throughput_ips"):
            assert (m, metric) in metrics, (m, metric)
    # a fitted colour map is closer to Y than raw X (a property that can fail)
    de = {r.method: r.value for r in records
          if r.metric == "ciede2000_mean" and r.region == "wbc" and r.cell_type == "all"}
    assert de["affine"] < de["identity"] and de["ceiling"] < de["identity"]
    assert meta["config"]["profile"] == "quick" and meta["config"]["synthetic_n"] == 80
    manifest = json.loads((run_dir / "artifacts" / "samples" / "manifest.json").read_text())
    assert manifest["columns"] == ["X", "identity", "affine", "hm", "Y"]
    assert (run_dir / "artifacts" / "confusion" / "hm.json").exists()
    html = (run_dir / "report.html").read_text()
    assert "Leaderboard" in html and "hm" in html


def test_second_run_reuses_finished_stages_and_redoes_interrupted_ones(run_dir):
    stages = run_dir / "stages"
    interrupted = [next(stages.glob("fit-hm-*")), next(stages.glob("eval-hm-*")), next(stages.glob("speed-hm-*"))]
    for d in interrupted:
        (d / "DONE").unlink()  # as if killed while fitting hm: nothing after it finished either
    done = {p: p.stat().st_mtime_ns for p in stages.glob("*/DONE")}
    assert len(done) >= 8
    assert main(["run-all", "--out", str(run_dir), "--methods", "identity,affine,hm", *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished stages untouched
    assert all((d / "DONE").exists() for d in interrupted)  # interrupted ones redone


def test_compare_and_report_rebuild(run_dir, capsys):
    assert main(["compare", "affine", "hm", "--run", str(run_dir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "compare-affine-hm" in out
    records, _ = load_results(run_dir)
    pairs = {(r.method, r.extra.get("vs")) for r in records if r.metric == "mcnemar_p"}
    assert ("affine", "hm") in pairs
    assert "identity" in {r.method for r in records}  # run-all's other methods are kept
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").exists()


def test_bad_profile_and_method(tmp_path, capsys):
    assert main(["run-all", "--out", str(tmp_path), "--profile", "fast"]) == 2
    assert main(["run-all", "--out", str(tmp_path), "--methods", "hmm"]) == 2
    err = capsys.readouterr().err
    assert "no profile 'fast'" in err and "Did you mean 'hm'" in err


def _labelled(root, classes, n, colour, seed):
    rng = np.random.default_rng(seed)
    for ci, cls in enumerate(classes):
        for i in range(n):
            img = np.full((64, 64, 3), colour, np.uint8)
            img[20:44, 20:44] = (40 + 30 * ci, 20, 120)  # a "cell" whose colour depends on the class
            img = np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
            write_image(root / cls / f"{cls}{i:03d}.png", img)


def test_cross_track_on_unpaired_folders(tmp_path):
    _labelled(tmp_path / "x", ["neutrophil", "lymphocyte", "basophil"], 10, (200, 180, 230), 0)
    _labelled(tmp_path / "y", ["neutrophil", "lymphocyte", "monocyte"], 10, (235, 215, 200), 1)
    out = tmp_path / "run"
    assert main(["run-all", "--data", f"cross:x={tmp_path / 'x'},y={tmp_path / 'y'}", "--out", str(out),
                 "--methods", "histmatch", "--set", "size=64", "--set", "realism=false", *TINY[2:]]) == 0
    records, meta = load_results(out)
    assert meta["config"]["x_only_classes"] == ["basophil"] and meta["config"]["y_only_classes"] == ["monocyte"]
    acc = {r.method: r for r in records if r.metric == "accuracy" and r.cell_type == "all" and r.method != "classifier"}
    assert set(acc) == {"identity", "histmatch"}
    assert acc["identity"].extra["excluded_classes"] == ["basophil"]
    gain = {r.method: r.value for r in records if r.metric == "accuracy_gain"}
    assert gain["identity"] == 0.0
    assert gain["histmatch"] == pytest.approx(acc["histmatch"].value - acc["identity"].value)


def test_editing_a_preset_invalidates_its_cached_stages(tmp_path, monkeypatch):
    """A fit (and the classifier) is cached under the preset's values, not only its name."""
    import shutil

    from cellbench.bench import Benchmark
    from cellbench.presets import models_dir

    models = tmp_path / "models"
    shutil.copytree(models_dir(), models)
    monkeypatch.setenv("CELLBENCH_MODELS_DIR", str(models))
    bench = Benchmark(tmp_path / "run", methods=["ccgan", "hm"], progress=False)
    before = {m: bench.fit_stage(m).key for m in ("ccgan", "hm")}
    clf_before = bench.classifier_stage().key
    text = (models / "ccgan.toml").read_text().replace("iterations = 3000", "iterations = 3001")
    assert "iterations = 3001" in text
    (models / "ccgan.toml").write_text(text)
    assert bench.fit_stage("ccgan").key != before["ccgan"]
    assert bench.fit_stage("hm").key == before["hm"]  # other methods keep their cache
    assert bench.classifier_stage().key == clf_before
    clf = (models / "classifier.toml").read_text()
    assert "\nepochs = 30\n" in clf
    (models / "classifier.toml").write_text(clf.replace("\nepochs = 30\n", "\nepochs = 31\n", 1))
    assert bench.classifier_stage().key != clf_before
