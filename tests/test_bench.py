"""End-to-end: run-all on a tiny simulated set, caching/resume, compare, report, the cross track,
options checked before any work, the run-folder lock, atomic artifacts, distilled methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cellbench.cli import main
from cellbench.io import write_image
from cellbench.results import load_results

# synthetic_test_n: the quick profile's 400 test pairs (issue #14) would make every tiny run several minutes long
TINY = ["--set", "synthetic_n=80", "--set", "synthetic_test_n=24", "--set", 'classifier_preset="tiny"',
        "--set", "speed_seconds=1.0", "--set", "speed_batch_sizes=[1, 2]", "--set", "speed_repeats=2", "-q"]
METHODS = "identity,affine,hm"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench") / "run"
    assert main(["run-all", "--out", str(d), "--methods", METHODS, *TINY]) == 0
    return d


def test_run_all_writes_results_artifacts_and_report(run_dir):
    records, meta = load_results(run_dir)
    methods = {r.method for r in records}
    assert {"identity", "affine", "hm", "classifier", "ceiling"} <= methods
    roles = {r.method: r.role for r in records}
    assert roles["ceiling"] == roles["classifier"] == "reference" and roles["hm"] == "method"
    metrics = {(r.method, r.metric) for r in records}
    for m in ("identity", "affine", "hm"):
        for metric in ("agreement", "accuracy", "psnr", "ssim", "ciede2000_mean", "c2st_accuracy",
                       "latency_ms_b1", "throughput_ips", "fit_seconds", "passthrough_images"):
            assert (m, metric) in metrics, (m, metric)
    # every record came through the registry: unit and direction as registered
    from cellbench.eval.metrics import METRICS

    for r in records:
        spec = METRICS.get(r.metric)
        assert (r.unit, r.higher_is_better) == (spec.unit, spec.higher_is_better), r
    # closed-form methods never pass images through
    assert {r.value for r in records if r.metric == "passthrough_images"} == {0.0}
    # a fitted colour map is closer to Y than raw X (a property that can fail)
    de = {r.method: r.value for r in records
          if r.metric == "ciede2000_mean" and r.region == "wbc" and r.cell_type == "all"}
    assert de["affine"] < de["identity"] and de["ceiling"] < de["identity"]
    assert meta["config"]["profile"] == "quick" and meta["config"]["synthetic_n"] == 80
    assert meta["fingerprint"]["data"]["synthetic_n"] == 80 and set(meta["fingerprints"]) == methods
    manifest = json.loads((run_dir / "artifacts" / "samples" / "manifest.json").read_text())
    assert manifest["columns"] == ["X", "identity", "affine", "hm", "Y"]
    assert (run_dir / "artifacts" / "confusion" / "hm.json").exists()
    html = (run_dir / "report.html").read_text()
    assert "Leaderboard" in html and "hm" in html


def test_the_figures_follow_from_the_stored_8bit_outputs(run_dir):
    """Every evaluation measures the 8-bit images a method's outputs are saved as: recomputing the image
    metrics from the stage's outputs.safetensors and the test split gives the recorded per-image values."""
    import numpy as np

    from cellbench.bench import open_benchmark
    from cellbench.bench.store import load_tensors
    from cellbench.eval.image import image_metrics

    bench = open_benchmark(run_dir, methods=["affine"], progress=False,
                           overrides={"synthetic_n": 80, "synthetic_test_n": 24, "classifier_preset": "tiny"})
    st = bench.eval_stage("affine")
    assert st.done, "the fixture's affine evaluation stage"
    outputs = load_tensors(st, "outputs.safetensors")["outputs"]
    test = bench.track.split("test")
    assert outputs.dtype == torch.uint8 and test.y.dtype == torch.uint8 and test.x.dtype == torch.uint8
    got = image_metrics(outputs, test.y, masks=bench.track.test_masks())
    stored = bench.track.load_per_image(bench, "affine")
    for key in ("ciede2000_mean/wbc", "psnr/image", "ssim/image"):
        metric, region = key.split("/")
        np.testing.assert_allclose(got[region][metric], stored[key], rtol=0, atol=1e-12, err_msg=key)


def test_run_all_records_consistency_paired_differences_and_per_image_values(run_dir):
    """Issue #14: JS consistency per method, paired bootstrap differences, per-image values in the artifacts."""
    import csv

    records, _ = load_results(run_dir)
    overall = {(r.method, r.metric): r for r in records if r.cell_type == "all" and r.region == "all"}
    for m in ("identity", "affine", "hm", "ceiling"):
        js = overall[(m, "js_consistency")]
        assert 0.0 <= js.ci_low <= js.value <= js.ci_high <= 1.0 and js.unit == "bits"
    # the raw X moves the classifier's probabilities more than a fitted colour map, and than y2
    assert overall[("identity", "js_consistency")].value > overall[("affine", "js_consistency")].value
    assert overall[("ceiling", "js_consistency")].value < overall[("identity", "js_consistency")].value
    diffs = [r for r in records if r.metric == "paired_diff"]
    pairs = {(r.method, r.extra["vs"], r.extra["metric"], r.region) for r in diffs}
    for a in ("identity", "affine", "hm"):
        for b in ("identity", "affine", "hm"):
            if a != b:
                assert (a, b, "agreement", "all") in pairs and (a, b, "ciede2000_mean", "wbc") in pairs
    # the difference of the per-image means is the difference of the stored means
    d = next(r for r in diffs if (r.method, r.extra["vs"], r.extra["metric"], r.region)
             == ("affine", "identity", "ciede2000_mean", "wbc"))
    de = {r.method: r for r in records
          if r.metric == "ciede2000_mean" and r.region == "wbc" and r.cell_type == "all"}
    assert d.value == pytest.approx(de["affine"].value - de["identity"].value, abs=1e-9)
    assert d.ci_low <= d.value <= d.ci_high and d.extra["resamples"] == 2000
    with open(run_dir / "artifacts" / "per-image" / "hm.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n = overall[("hm", "agreement")].n
    assert len(rows) == n and {"index", "id", "label", "agreement/all", "js_consistency/all"} <= set(rows[0])
    assert sum(float(r["agreement/all"]) for r in rows) == overall[("hm", "agreement")].extra["k"]
    html = (run_dir / "report.html").read_text()
    assert 'data-table="paired-diff"' in html and "JS consistency" in html


def test_second_run_reuses_finished_stages_and_redoes_interrupted_ones(run_dir):
    stages = run_dir / "stages"
    interrupted = [next(stages.glob("fit-hm-*")), next(stages.glob("eval-hm-*")), next(stages.glob("speed-hm-*"))]
    for d in interrupted:
        (d / "DONE").unlink()  # as if killed while fitting hm: nothing after it finished either
    done = {p: p.stat().st_mtime_ns for p in stages.glob("*/DONE")}
    assert len(done) >= 10
    assert main(["run-all", "--out", str(run_dir), "--methods", METHODS, *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished stages untouched
    assert all((d / "DONE").exists() for d in interrupted)  # interrupted ones redone


def test_relative_and_absolute_run_folder_share_the_cache(run_dir, monkeypatch):
    before = {p.name for p in (run_dir / "stages").iterdir()}
    monkeypatch.chdir(run_dir.parent)
    assert main(["run-all", "--out", run_dir.name, "--methods", METHODS, *TINY, "--no-report"]) == 0
    assert {p.name for p in (run_dir / "stages").iterdir()} == before


def test_a_corrupt_cached_file_is_redone_with_a_warning(run_dir, caplog):
    outputs = next((run_dir / "stages").glob("eval-affine-*")) / "outputs.safetensors"
    good = outputs.read_bytes()
    outputs.write_bytes(good[: len(good) // 2])  # truncated
    with caplog.at_level("WARNING"):
        assert main(["run-all", "--out", str(run_dir), "--methods", METHODS, *TINY, "--no-report"]) == 0
    assert "outputs.safetensors has" in caplog.text and "redoing it" in caplog.text
    assert outputs.read_bytes() == good  # recomputed bit-identically


def test_compare_validates_first_keeps_other_artifacts_and_report_rebuilds(run_dir, capsys):
    results = run_dir / "results.json"
    stamp = results.stat().st_mtime_ns
    assert main(["compare", "identity", "--run", str(run_dir), *TINY]) == 2
    assert main(["compare", "affine", "hmm", "--run", str(run_dir), *TINY]) == 2
    err = capsys.readouterr().err
    assert "at least two methods" in err and "Did you mean 'hm'" in err
    assert results.stat().st_mtime_ns == stamp  # nothing written
    assert main(["compare", "affine", "hm", "--run", str(run_dir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "compare-affine-hm" in out
    assert "JS consistency" in out and "affine − hm" in out  # consistency and the paired differences printed
    records, _ = load_results(run_dir)
    pairs = {(r.method, r.extra.get("vs")) for r in records if r.metric == "mcnemar_p"}
    assert ("affine", "hm") in pairs and ("identity", "hm") in pairs
    assert "identity" in {r.method for r in records}  # run-all's other methods are kept
    assert (run_dir / "artifacts" / "confusion" / "identity.json").exists()
    manifest = json.loads((run_dir / "artifacts" / "samples" / "manifest.json").read_text())
    assert "identity" in manifest["columns"]
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").exists()


def test_compare_refuses_rows_of_another_test_set(run_dir, capsys):
    stamp = (run_dir / "results.json").stat().st_mtime_ns
    other = [*TINY, "--set", "synthetic_n=40"]
    assert main(["compare", "affine", "hm", "--run", str(run_dir), *other]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synthetic_n=80 vs 40" in err[0] and "re-run run-all" in err[0]
    assert (run_dir / "results.json").stat().st_mtime_ns == stamp


def test_report_refuses_rows_with_different_fingerprints(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "mixed"
    shutil.copytree(run_dir / "artifacts", copy / "artifacts")
    payload = json.loads((run_dir / "results.json").read_text())
    payload["metadata"]["fingerprints"]["hm"] = {**payload["metadata"]["fingerprints"]["hm"],
                                                 "data": {"synthetic_n": 200, "hash": "x"}}
    (copy / "results.json").write_text(json.dumps(payload))
    assert main(["report", str(copy)]) == 2
    assert "synthetic_n" in capsys.readouterr().err


def test_artifacts_survive_a_failed_rebuild(run_dir, monkeypatch):
    import cellbench.io

    samples = sorted(p.name for p in (run_dir / "artifacts" / "samples").iterdir())
    calls = {"n": 0}
    real = cellbench.io.write_image

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # killed mid-rebuild
        return real(*args, **kwargs)

    monkeypatch.setattr(cellbench.io, "write_image", dying)
    assert main(["run-all", "--out", str(run_dir), "--methods", METHODS, *TINY, "--no-report"]) == 130
    assert sorted(p.name for p in (run_dir / "artifacts" / "samples").iterdir()) == samples
    assert not list(run_dir.glob(".artifacts.*"))


@pytest.mark.parametrize("args,needle", [
    (["--set", "realism=maybe"], "realism='maybe'"),
    (["--methods", ","], "--methods: empty list"),
    (["--set", "size=0"], "size=0"),
    (["--set", "size=7"], "size=7"),
    (["--set", "size=5000"], "size=5000"),
    (["--set", "method_preset=quik"], "did you mean 'quick'"),
    (["--set", "classifier_preset=huge"], "classifier_preset='huge'"),
    (["--set", "profile_repeats=0"], "profile_repeats=0"),
    (["--set", "speed_seconds=nan"], "speed_seconds=nan"),
    (["--set", "speed_batch_sizes=[]"], "speed_batch_sizes=[]"),
    (["--set", 'speed_engines=["tensorrt"]'], "speed_engines='tensorrt'"),
    (["--set", "eval_engine=bf16"], "eval_engine='bf16'"),
    (["--set", "samples_per_class=-1"], "samples_per_class=-1"),
    (["--set", "cross_limit_per_class=-2"], "cross_limit_per_class=-2"),
    (["--set", "realsim=false"], "did you mean 'realism'"),
    (["--seed", "-1"], "--seed=-1"),
    (["--device", "bogus"], "unknown device"),
    (["--profile", "fast"], "no profile 'fast'"),
    (["--methods", "hmm"], "Did you mean 'hm'"),
    (["--methods", "poly:hmm"], "Did you mean 'hm'"),
])
def test_bad_options_fail_before_any_work(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    assert main(["run-all", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()  # nothing read, trained or written


def test_pcnet_size_below_its_network_multiple_is_refused(tmp_path, capsys):
    assert main(["run-all", "--out", str(tmp_path / "r"), "--methods", "pcnet", "--set", "size=16",
                 "--set", "method_preset=paper"]) == 2
    assert "pcnet's networks need images of at least" in capsys.readouterr().err


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    from cellbench.fs import FolderLock

    out = tmp_path / "run"
    with FolderLock(out, what="run folder"):
        assert main(["run-all", "--out", str(out), "--methods", "identity,affine", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another cellbench process" in err[0] and "pid" in err[0]


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
    acc = {r.method: r for r in records if r.metric == "accuracy" and r.cell_type == "all" and r.role == "method"}
    assert set(acc) == {"identity", "histmatch"}
    assert acc["identity"].extra["excluded_classes"] == ["basophil"]
    n_shared = sum(1 for r in records if r.metric == "accuracy" and r.method == "identity" and r.cell_type != "all")
    assert acc["identity"].n > 0 and n_shared >= 1
    gain = {r.method: r for r in records if r.metric == "accuracy_gain"}
    assert gain["identity"].value == 0.0 and (gain["identity"].unit, gain["identity"].higher_is_better) == ("pp", True)
    assert gain["histmatch"].value == pytest.approx(acc["histmatch"].value - acc["identity"].value)
    mc = [r for r in records if r.metric == "mcnemar_p"]
    assert mc and {r.extra["basis"] for r in mc} == {"accuracy"}
    assert {r.method for r in records if r.role == "reference"} == {"classifier"}
    manifest = json.loads((out / "artifacts" / "samples" / "manifest.json").read_text())
    assert manifest["columns"] == ["X", "identity", "histmatch", "Y (another cell)"]
    assert {row["cell_type"] for row in manifest["rows"]} == {"neutrophil", "lymphocyte"}


def test_editing_a_preset_invalidates_its_cached_stages(tmp_path, monkeypatch):
    """A fit (and the classifier) is cached under the preset's values, not only its name."""
    import shutil

    from cellbench.bench import open_benchmark
    from cellbench.presets import models_dir

    models = tmp_path / "models"
    shutil.copytree(models_dir(), models)
    monkeypatch.setenv("CELLBENCH_MODELS_DIR", str(models))
    bench = open_benchmark(tmp_path / "run", methods=["ccgan", "hm"], progress=False)
    before = {m: bench.fits.fit_stage(m).key for m in ("ccgan", "hm")}
    clf_before = bench.fits.classifier_stage().key
    text = (models / "ccgan.toml").read_text().replace("iterations = 3000", "iterations = 3001")
    assert "iterations = 3001" in text
    (models / "ccgan.toml").write_text(text)
    assert bench.fits.fit_stage("ccgan").key != before["ccgan"]
    assert bench.fits.fit_stage("hm").key == before["hm"]  # other methods keep their cache
    assert bench.fits.classifier_stage().key == clf_before
    clf = (models / "classifier.toml").read_text()
    assert "\nepochs = 30\n" in clf
    (models / "classifier.toml").write_text(clf.replace("\nepochs = 30\n", "\nepochs = 31\n", 1))
    assert bench.fits.classifier_stage().key != clf_before
    assert not (tmp_path / "run").exists()  # computing keys touches nothing


def test_eval_engine_keys_the_network_stages_only(tmp_path):
    """``eval_engine`` (an fp32 engine) runs the networks' own transforms of the run: it keys their evaluation
    and their students' fits, and no other method's stage."""
    from cellbench.bench import open_benchmark

    keys = {}
    for engine in ("eager", "channels_last"):
        bench = open_benchmark(tmp_path / "run", methods=["ccgan", "hm", "lut3d:ccgan", "lut3d:hm"], progress=False,
                               overrides={"eval_engine": engine})
        assert bench.fits.engine_for("ccgan") == (None if engine == "eager" else engine)
        assert bench.fits.engine_for("hm") is None and bench.fits.engine_for("lut3d:ccgan") is None
        keys[engine] = {m: (bench.eval_stage(m).key, bench.fits.fit_stage(m).key)
                        for m in ("ccgan", "hm", "lut3d:ccgan", "lut3d:hm")}
    e, c = keys["eager"], keys["channels_last"]
    assert e["ccgan"][0] != c["ccgan"][0] and e["ccgan"][1] == c["ccgan"][1]  # same training, other evaluation
    assert e["lut3d:ccgan"][1] != c["lut3d:ccgan"][1]  # the teacher's outputs come from the engine
    assert e["hm"] == c["hm"] and e["lut3d:hm"] == c["lut3d:hm"]
    assert not (tmp_path / "run").exists()


def test_distilled_method_hook(tmp_path, monkeypatch):
    """``KIND:TEACHER``: the student is fitted by cellbench.methods.distill.distill on the fitted teacher."""
    from cellbench.data.sets import PairedSet
    from cellbench.methods import create_normalizer

    calls = []

    def distill(teacher, data, kind, *, seed=0, **options):  # a stand-in: fit KIND on the teacher's outputs
        calls.append((teacher.name, kind, seed))
        student = create_normalizer(kind)
        return student.fit(PairedSet(data.x, teacher.transform(data.x), data.labels, data.ids), seed=seed)

    import cellbench.methods.distill

    monkeypatch.setattr(cellbench.methods.distill, "distill", distill)
    out = tmp_path / "run"
    # --jobs 1: the stand-in is patched in this process; spawned workers would not see it
    assert main(["run-all", "--out", str(out), "--jobs", "1", "--methods", "affine,poly:affine", "--set",
                 "synthetic_n=40", "--set", "size=64", "--set", "realism=false", *TINY[2:]]) == 0
    assert calls == [("affine", "poly", 0)]
    records, _ = load_results(out)
    assert {"affine", "poly:affine", "ceiling"} <= {r.method for r in records}
    assert {"fit_seconds", "latency_ms_b1", "psnr"} <= {r.metric for r in records if r.method == "poly:affine"}
    from cellbench.bench import open_benchmark

    bench = open_benchmark(out, methods=["affine", "poly:affine"], progress=False,
                           overrides={"synthetic_n": 40, "synthetic_test_n": 24, "size": 64, "realism": False,
                                      "classifier_preset": "tiny"})
    stage = bench.fits.fit_stage("poly:affine")
    assert stage.config["teacher"] == bench.fits.fit_stage("affine").key and stage.done
    html = (out / "report.html").read_text()
    assert "poly:affine" in html
