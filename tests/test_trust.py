"""Trustworthy files and models (issue #13): simulate never merges datasets, files get the umask,
transform never touches its inputs and ties outputs to their model, saved models are validated."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cellbench.cli import main
from cellbench.data import PairedFolder
from cellbench.errors import CheckpointError
from cellbench.fs import FolderLock
from cellbench.io import read_image, write_image
from cellbench.methods import NORMALIZERS, create_normalizer, load_normalizer
from cellbench.transform import MANIFEST

from .test_data import make_paired


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _simulate(out, *extra, n=8):
    return main(["simulate", "--n", str(n), "--size", "32", "--out", str(out), "--no-progress", *extra])


# -- item 1: simulate into a non-empty folder ------------------------------------------------------


def test_simulate_refuses_non_empty_out_and_replace_removes_the_old_dataset(tmp_path, capsys):
    out = tmp_path / "sim"
    assert _simulate(out, n=8) == 0
    old = {p.relative_to(out) for p in out.rglob("*.png")}
    assert len(old) == 3 * 8
    # a second simulation with another seed would have merged with the old pairs
    assert _simulate(out, "--seed", "1", n=8) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--replace" in err
    assert {p.relative_to(out) for p in out.rglob("*.png")} == old  # untouched
    assert _simulate(out, "--seed", "1", "--replace", n=8) == 0
    new = {p.relative_to(out) for p in out.rglob("*.png")}
    assert len(new) == 3 * 8 and not (new & old)  # no pair of the old dataset is left
    ids = {(it.cls, it.id) for it in PairedFolder(out).items}
    assert ids == {(p.parts[1], p.stem) for p in new if p.parts[0] == "X"}


def test_simulate_replace_keeps_foreign_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert _simulate(out, "--replace") == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "precious" and not (out / "X").exists()


# -- item 2: files with the process umask ----------------------------------------------------------


def test_simulate_fit_transform_files_get_the_umask(tmp_path, umask022, capsys):
    sim, model, out = tmp_path / "sim", tmp_path / "model", tmp_path / "out"
    assert _simulate(sim) == 0
    assert main(["fit", "affine", "--data", str(sim), "--out", str(model), "--size", "32"]) == 0
    assert main(["transform", "--model", str(model), str(sim / "X"), str(out), "-q"]) == 0
    files = [p for root in (sim, model, out) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 3 * 8 + 8
    kinds = {p.suffix or p.name for p in files}
    assert {".png", ".csv", ".json", ".safetensors"} <= kinds
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, {k: v for k, v in modes.items() if v != "0o644"}


def test_umask_027_is_respected(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
        create_normalizer("affine").save(tmp_path / "m")
    finally:
        os.umask(old)
    for p in (tmp_path / "a.png", tmp_path / "m" / "state.safetensors", tmp_path / "m" / "normalizer.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640


# -- item 3: transform safety ----------------------------------------------------------------------


@pytest.fixture
def two_models(tmp_path):
    root = make_paired(tmp_path / "ds", n=5, size=(32, 32), masks=False)
    for method in ("affine", "poly"):
        assert main(["fit", method, "--data", str(root), "--out", str(tmp_path / method), "--size", "32"]) == 0
    return tmp_path / "affine", tmp_path / "poly"


def test_transform_never_maps_an_output_onto_an_input(tmp_path, two_models, capsys):
    affine, _ = two_models
    tin = tmp_path / "tin"
    write_image(tin / "a" / "x.png", np.full((16, 16, 3), 30, np.uint8))
    write_image(tin / "a" / "a" / "x.png", np.full((16, 16, 3), 90, np.uint8))
    before = {p: p.read_bytes() for p in tin.rglob("*.png")}
    for extra in ([], ["--overwrite"]):
        # input tin/a, output tin: tin/a/a/x.png would be written to tin/a/x.png, an input
        assert main(["transform", "--model", str(affine), str(tin / "a"), str(tin), "-q", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cellbench: error:") and "inside the input folder" in err and "\n" not in err
    assert {p: p.read_bytes() for p in tin.rglob("*.png")} == before  # nothing written, nothing counted done
    assert not (tin / MANIFEST).exists()
    # output inside the input tree
    assert main(["transform", "--model", str(affine), str(tin), str(tin / "a" / "out"), "-q"]) == 2
    assert {p: p.read_bytes() for p in tin.rglob("*.png")} == before


def test_transform_manifest_resume_and_other_model(tmp_path, two_models, capsys):
    affine, poly = two_models
    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "one.png", np.full((16, 16, 3), 10, np.uint8))
    write_image(src / "s" / "two.png", np.full((16, 16, 3), 200, np.uint8))
    assert main(["transform", "--model", str(affine), str(src), str(out), "-q"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["method"] == "affine" and len(manifest["state_sha256"]) == 64
    first = read_image(out / "one.png")
    # the same model resumes: finished outputs are skipped
    (out / "s" / "two.png").unlink()
    assert main(["transform", "--model", str(affine), str(src), str(out), "-q"]) == 0
    assert "transformed 1 image(s), skipped 1 already done" in capsys.readouterr().out
    # another model into the same folder is refused (it used to write nothing and report success)
    assert main(["transform", "--model", str(poly), str(src), str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "--overwrite" in err
    assert (read_image(out / "one.png") == first).all()
    # ... unless --overwrite: every image is redone with the new model, the manifest records it
    assert main(["transform", "--model", str(poly), str(src), str(out), "-q", "--overwrite"]) == 0
    assert "transformed 2 image(s), skipped 0" in capsys.readouterr().out
    assert json.loads((out / MANIFEST).read_text())["method"] == "poly"
    # outputs of unknown origin (no manifest) are not taken as done
    (out / MANIFEST).unlink()
    assert main(["transform", "--model", str(poly), str(src), str(out), "-q"]) == 2
    assert MANIFEST in capsys.readouterr().err


def test_fit_holds_a_lock_on_its_out_folder(tmp_path, capsys):
    root = make_paired(tmp_path / "ds", n=3, size=(32, 32), masks=False)
    with FolderLock(tmp_path / "model"):
        assert main(["fit", "affine", "--data", str(root), "--out", str(tmp_path / "model"), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "in use by another cellbench process" in err and f"pid {os.getpid()}" in err
    assert not (tmp_path / "model" / "normalizer.json").exists()


# -- item 7: saved states are validated before use -------------------------------------------------


#: The closed-form methods with fitted arrays (fast to fit); the networks share the same base-class check.
CLOSED_FORM = [n for n in ("affine", "poly", "hm", "histmatch", "reinhard", "macenko") if n in NORMALIZERS.names()]


@pytest.fixture(scope="module")
def fitted_dirs(tmp_path_factory):
    from cellbench.sim import load_training_data

    data = load_training_data("synthetic:n=20,size=48", size=48)
    base = tmp_path_factory.mktemp("models")
    return {n: create_normalizer(n).fit(data, seed=0).save(base / n) for n in CLOSED_FORM}


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("name", CLOSED_FORM)
@pytest.mark.parametrize("damage", ["truncated", "random", "nan", "wrong_shape", "other_method"])
def test_damaged_state_is_refused_with_a_checkpoint_error(tmp_path, fitted_dirs, name, damage):
    d = _copy(fitted_dirs[name], tmp_path / "m")
    path = d / "state.safetensors"
    good = load_normalizer(fitted_dirs[name]).state_dict()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif damage == "nan":
        key = next(k for k, v in good.items() if v.is_floating_point())
        save_file({**{k: v.contiguous() for k, v in good.items()}, key: torch.full_like(good[key], float("nan"))},
                  str(path))
    elif damage == "wrong_shape":
        key = next(iter(good))
        save_file({**{k: v.contiguous() for k, v in good.items()}, key: torch.zeros(2, 2)}, str(path))
    else:
        other = "poly" if name != "poly" else "affine"
        path.write_bytes((fitted_dirs[other] / "state.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"state\.safetensors: .*re-fit the model"):
        load_normalizer(d)


def test_nan_matrix_is_refused_by_transform_not_written_black(tmp_path, fitted_dirs, capsys):
    d = _copy(fitted_dirs["affine"], tmp_path / "m")
    save_file({"matrix": torch.full((3, 4), float("nan"))}, str(d / "state.safetensors"))
    write_image(tmp_path / "in" / "a.png", np.full((16, 16, 3), 100, np.uint8))
    assert main(["transform", "--model", str(d), str(tmp_path / "in"), str(tmp_path / "out"), "-q"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "out" / "a.png").exists()
