"""``cellbench simulate validate`` (cellbench.eval.validate) and the ``simulate measure`` wiring.

The "real" folder is built here from simulated images at 64 px (4 classes x 20 images), so the
check runs end to end in seconds with the ``tiny`` classifier preset; what is asserted are the
report's internal consistency (accuracy = trace / n of the reported confusion, per-class counts,
the targets and pass flags), the cache of the real-trained classifier, and the error boundary.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from cellbench.cli import main
from cellbench.eval.validate import TARGETS, sim_test_seed, validate_simulator
from cellbench.io import write_image
from cellbench.sim import simulate_pairs

CLASSES = ["basophil", "lymphocyte", "neutrophil", "platelet"]
PER_CLASS = 20
SIZE = 64
SMALL = dict(n_per_class=10, n_test_per_class=3, preset="tiny", size=SIZE, threads=1)
CLI_SMALL = ["--classifier-preset", "tiny", "--n-per-class", "10", "--n-test-per-class", "3", "--size", str(SIZE),
             "--threads", "1", "-q"]


def write_folder(root: Path, n: int = PER_CLASS * len(CLASSES), classes=CLASSES, seed: int = 123,
                 size: int = SIZE) -> Path:
    s = simulate_pairs(n, size=size, seed=seed, classes=classes)
    y = (s.y.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for img, label, ident in zip(y, s.labels, s.ids, strict=True):
        (root / label).mkdir(parents=True, exist_ok=True)
        write_image(root / label / f"{ident}.png", img)
    return root


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("validate-cache")


@pytest.fixture(scope="module")
def result(real_dir, work_dir) -> dict:
    return validate_simulator(real_dir, work_dir=work_dir, **SMALL)


def check_scores(r: dict, classes: list[str], n: int) -> None:
    conf = np.asarray(r["confusion"])
    assert r["classes"] == classes
    assert conf.shape == (len(classes), len(classes))
    assert r["n"] == n == conf.sum()
    assert sum(r["per_class_n"].values()) == n
    assert r["per_class_n"] == {c: int(conf[i].sum()) for i, c in enumerate(classes)}
    assert r["correct"] == int(np.trace(conf))
    assert r["accuracy"] == pytest.approx(np.trace(conf) / conf.sum())
    for i, c in enumerate(classes):
        expected = conf[i, i] / conf[i].sum() if conf[i].sum() else None
        assert r["per_class"][c] == (pytest.approx(expected) if expected is not None else None)
    lo, hi = r["ci95"]
    assert 0.0 <= lo <= r["accuracy"] <= hi <= 1.0


def test_report_is_consistent(result):
    classes = result["classes"]
    assert classes == CLASSES  # the folder's classes, in the simulator's order
    # sim -> real on every real image (real_eval="all"); real -> sim on the fresh simulated test set
    check_scores(result["sim_to_real"], classes, PER_CLASS * len(classes))
    check_scores(result["real_to_sim"], classes, 3 * len(classes))
    check_scores(result["sim_to_sim"], classes, 3 * len(classes))
    check_scores(result["real_to_real"], classes, result["settings"]["n_real_test"])
    assert result["real_to_sim"]["per_class_n"] == {c: 3 for c in classes}  # simulated test set is balanced
    s = result["settings"]
    assert (s["n_sim_train"], s["n_sim_val"]) == (9 * len(classes), 1 * len(classes))  # 90/10 per class
    assert s["n_real_train"] + s["n_real_val"] + s["n_real_test"] == PER_CLASS * len(classes)
    assert s["sim_test_seed"] == sim_test_seed(0) != 0
    assert result["targets"] == TARGETS == {"sim_to_real": 0.60, "real_to_sim": 0.85}
    for name in ("sim_to_real", "real_to_sim"):
        assert result["passed"][name] == (result[name]["accuracy"] >= TARGETS[name])
    assert result["passed"]["all"] == (result["passed"]["sim_to_real"] and result["passed"]["real_to_sim"])
    assert result["fid"] >= 0 and np.isfinite(result["fid"])
    assert set(result["kid"]) == {"mean", "std", "subset_size"} and result["kid"]["std"] >= 0
    assert result["fid_n"] == min(s["n_sim_test"], s["n_real_test"])
    assert result["kid"]["subset_size"] == max(2, result["fid_n"] // 2)  # subsets smaller than the set
    assert result["real_floor"]["fid"] >= 0
    assert len(result["simulator"]["source_sha256"]) == 16
    assert result["cache"]["reused"] is False
    json.dumps(result)  # JSON-serialisable as is


def test_sim_test_seed_differs_per_seed():
    seeds = [sim_test_seed(s) for s in range(50)]
    assert len(set(seeds)) == 50 and not set(seeds) & set(range(50))


def test_second_run_reuses_the_real_classifier(result, real_dir, work_dir):
    entry = Path(result["cache"]["dir"])
    assert entry.parent == work_dir
    weights = entry / "train" / "best" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = validate_simulator(real_dir, work_dir=work_dir, real_eval="test", **SMALL)
    assert again["cache"]["reused"] is True and again["cache"]["dir"] == str(entry)
    assert weights.stat().st_mtime_ns == before
    assert again["real_to_real"] == result["real_to_real"]
    assert again["real_to_sim"] == result["real_to_sim"]  # same real classifier, same simulated test set
    assert again["sim_to_real"]["n"] == again["settings"]["n_real_test"]  # real_eval="test"
    # another seed is another real classifier (another cache entry)
    other = validate_simulator(real_dir, work_dir=work_dir, **dict(SMALL, seed=1, n_per_class=10))
    assert other["cache"]["dir"] != str(entry) and other["cache"]["reused"] is False


def test_several_simulated_side_classifiers(result, real_dir, work_dir, capsys):
    """``sim_seeds=3``: the first classifier is the one-seed run's (same seed, same images: identical records),
    the summary holds every classifier's accuracy on the same images, and the target is judged on the mean."""
    many = validate_simulator(real_dir, work_dir=work_dir, sim_seeds=3, **SMALL)
    assert many["sim_to_real"] == result["sim_to_real"] and many["sim_to_sim"] == result["sim_to_sim"]
    assert many["real_to_sim"] == result["real_to_sim"]  # the real side does not depend on it
    assert "sim_to_real_seeds" not in result
    for name in ("sim_to_real", "sim_to_sim"):
        m = many[f"{name}_seeds"]
        assert m["seeds"] == [0, 1, 2] and len(m["accuracy"]) == 3
        assert m["accuracy"][0] == many[name]["accuracy"]
        assert m["mean"] == pytest.approx(np.mean(m["accuracy"]))
        assert m["sd"] == pytest.approx(np.std(m["accuracy"], ddof=1))
        assert set(m["per_class_mean"]) == set(many[name]["per_class"])
    assert many["passed"]["sim_to_real"] == (many["sim_to_real_seeds"]["mean"] >= TARGETS["sim_to_real"])
    assert many["settings"]["sim_seeds"] == 3
    rc = main(["simulate", "validate", "--real", str(real_dir), "--work", str(work_dir), "--sim-seeds", "2",
               *CLI_SMALL])
    text = capsys.readouterr().out
    assert "2 classifiers (seeds 0-1)" in text and "the figure the target is judged on" in text
    assert rc == (0 if "PASS:" in text.splitlines()[-1] else 1)
    assert "--sim-seeds" in _one_line_error(capsys, ["simulate", "validate", "--real", str(real_dir),
                                                     "--sim-seeds", "0", *CLI_SMALL])


def test_cli_json(real_dir, work_dir, capsys):
    rc = main(["simulate", "validate", "--real", str(real_dir), "--work", str(work_dir), "--json", *CLI_SMALL])
    out = json.loads(capsys.readouterr().out)
    assert rc == (0 if out["passed"]["all"] else 1)
    for name in ("sim_to_real", "real_to_sim"):
        assert {"accuracy", "n", "per_class", "confusion", "classes", "ci95"} <= set(out[name])
    assert {"fid", "kid", "targets", "passed", "settings", "simulator", "cache"} <= set(out)
    assert out["cache"]["reused"] is True  # the module's first run trained it
    rc = main(["simulate", "validate", "--real", str(real_dir), "--work", str(work_dir), *CLI_SMALL])
    text = capsys.readouterr().out
    assert "sim -> real" in text and "real -> sim" in text and "confusion" in text and "FID" in text


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert err.startswith("cellbench: error:") and "\n" not in err, err
    return err


def test_cli_bad_inputs(tmp_path, real_dir, capsys):
    base = ["simulate", "validate", "--work", str(tmp_path / "w"), *CLI_SMALL]
    err = _one_line_error(capsys, [*base, "--real", str(tmp_path / "missing")])
    assert "missing" in err and "not found" in err
    assert "--n-per-class" in _one_line_error(capsys, [*base, "--real", str(real_dir), "--n-per-class", "5"])
    assert "--size" in _one_line_error(capsys, [*base, "--real", str(real_dir), "--size", "8"])
    assert "--seed" in _one_line_error(capsys, [*base, "--real", str(real_dir), "--seed", "-1"])
    assert "nosuch" in _one_line_error(capsys, [*base, "--real", str(real_dir), "--system", "nosuch"])
    inside = ["simulate", "validate", "--real", str(real_dir), "--work", str(real_dir / "cache"), *CLI_SMALL]
    assert "inside the real folder" in _one_line_error(capsys, inside)
    assert not (real_dir / "cache").exists()
    # no class the simulator knows
    odd = tmp_path / "odd"
    (odd / "mystery").mkdir(parents=True)
    write_image(odd / "mystery" / "a.png", np.zeros((40, 40, 3), np.uint8))
    assert str(odd) in _one_line_error(capsys, [*base, "--real", str(odd)])
    # an unreadable image is named
    bad = write_folder(tmp_path / "bad", n=2 * 20, classes=["lymphocyte", "platelet"])
    victim = sorted((bad / "platelet").iterdir())[0]
    victim.write_bytes(b"not an image")
    assert victim.name in _one_line_error(capsys, ["simulate", "validate", "--real", str(bad),
                                                   "--work", str(tmp_path / "w2"), *CLI_SMALL])


def test_unknown_preset_is_a_config_error(real_dir, tmp_path, capsys):
    err = _one_line_error(capsys, ["simulate", "validate", "--real", str(real_dir), "--work", str(tmp_path),
                                   "--classifier-preset", "huge", "-q"])
    assert "huge" in err


@pytest.mark.skipif(importlib.util.find_spec("cellbench.sim.morphology") is None,
                    reason="cellbench.sim.morphology (issue #14 item 1) not present yet")
def test_cli_measure(tmp_path, capsys):
    from cellbench.sim.morphology import load_morphology

    real = write_folder(tmp_path / "real256", n=6, classes=["lymphocyte", "neutrophil"], size=256)
    out = tmp_path / "morphology.json"
    assert main(["simulate", "measure", "--real", str(real), "--out", str(out), "--limit-per-class", "2",
                 "-q"]) == 0
    params = load_morphology(out)
    assert params["source"]["images_per_class"] == {"lymphocyte": 2, "neutrophil": 2}
    assert str(out) in capsys.readouterr().out
    assert "--limit-per-class" in _one_line_error(
        capsys, ["simulate", "measure", "--real", str(real), "--out", str(out), "--limit-per-class", "0"])


def test_the_simulator_fingerprint_is_read_once_per_process(monkeypatch):
    """A run's later stages get the key its first ones got, even if cellbench/sim changes on disk
    meanwhile (a docstring edited during `run-all` once made it retrain its distillation teachers)."""
    from cellbench.eval import validate as V

    first = V.simulator_fingerprint()
    first["source_sha256"] = "changed by the caller"

    def no_rehash(*_a, **_k):
        raise AssertionError("the simulator's files were hashed again")

    monkeypatch.setattr(V.hashlib, "sha256", no_rehash)
    again = V.simulator_fingerprint()
    assert again["source_sha256"] != "changed by the caller" and len(again["source_sha256"]) == 16
