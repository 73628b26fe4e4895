"""The CLI's one error boundary (issue #13, items 6 and 7), as a property over a table of bad input.

Every row runs ``cellbench.cli.main`` in-process and must give exit status 2, exactly one non-empty
line on stderr starting with ``cellbench: error:`` (naming the option or file), no traceback, and
nothing written where the command should have stopped first. A few rows also run as a real
subprocess, where Python would print an uncaught exception's traceback.

Rows whose ids start with ``run-all:`` are checks that live in the benchmark package
(engineer A's typed run options); they are in this table so that every command keeps the same
contract.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cellbench.cli import main
from cellbench.io import write_image

from .test_data import make_paired


@dataclass
class Case:
    """A command line built in ``tmp`` (``{tmp}`` is replaced), and what must not exist afterwards."""

    argv: list[str]
    match: str                      # a regular expression the error line must contain
    setup: Callable[[Path], None] | None = None
    untouched: list[str] = field(default_factory=list)  # paths (under tmp) that must not exist afterwards


def _dataset(tmp: Path) -> None:
    make_paired(tmp / "ds", classes=("neutrophil",), n=4, size=(32, 32), masks=False)


def _model(tmp: Path) -> None:
    from cellbench.methods import create_normalizer

    _dataset(tmp)
    write_image(tmp / "in" / "a.png", np.full((16, 16, 3), 100, np.uint8))
    create_normalizer("affine").save(tmp / "model")  # a valid (identity) affine state to damage


def _damaged(kind: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _model(tmp)
        path = tmp / "model" / "state.safetensors"
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:60])
        elif kind == "random":
            path.write_bytes(np.random.default_rng(0).bytes(256))
        elif kind == "wrong_method":
            save_file({"weights": torch.zeros(20, 3)}, str(path))  # a poly state in an affine folder
        elif kind == "nan":
            save_file({"matrix": torch.full((3, 4), float("nan"))}, str(path))
    return setup


def _file(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _dataset(tmp)
        (tmp / name).write_text("I am a file")
    return setup


def _dup_split(tmp: Path) -> None:
    _dataset(tmp)
    (tmp / "ds" / "splits.csv").write_text("class,id,split\nneutrophil,c000,train\nneutrophil,c000,test\n")


def _real(tmp: Path) -> None:
    write_image(tmp / "real" / "neutrophil" / "a.png", np.full((16, 16, 3), 200, np.uint8))


def _broken_archive(tmp: Path) -> None:
    (tmp / "dl").mkdir()
    (tmp / "dl" / "PBC_dataset_normal_DIB.zip").write_bytes(b"PK\x03\x04" + b"\0" * 40)


FIT = ["fit", "affine", "--data", "{tmp}/ds", "--out", "{tmp}/m"]
SIM = ["simulate", "--n", "2", "--size", "32", "--out", "{tmp}/sim", "--no-progress"]
TRANSFORM = ["transform", "--model", "{tmp}/model", "{tmp}/in", "{tmp}/out", "-q"]
RUN_ALL = ["run-all", "--out", "{tmp}/run", "--no-report", "-q", "--methods", "identity,affine"]

CASES: dict[str, Case] = {
    # -- bad options (item 6): refused before any work ------------------------------------------------
    "fit --size 0": Case(FIT + ["--size", "0"], r"--size=0: must be an integer", _dataset, ["m"]),
    "fit --seed -1": Case(FIT + ["--seed", "-1"], r"--seed=-1", _dataset, ["m"]),
    "fit --device bogus": Case(FIT + ["--device", "bogus"], r"--device 'bogus': unknown device", _dataset, ["m"]),
    "fit --iterations 0": Case(FIT + ["--iterations", "0"], r"--iterations=0", _dataset, ["m"]),
    "fit --out FILE": Case(FIT[:-1] + ["{tmp}/afile"], r"--out .*afile is an existing file", _file("afile")),
    "fit unknown method": Case(["fit", "affinee", "--data", "{tmp}/ds", "--out", "{tmp}/m"],
                               r"affinee.*(?i:did you mean) 'affine'", _dataset, ["m"]),
    "fit --set unknown": Case(FIT + ["--set", "bogus=1"], r"unknown option", _dataset, ["m"]),
    "fit duplicate split row": Case(FIT + ["--size", "32"], r"splits.csv:3: duplicate row", _dup_split, ["m"]),
    "simulate --max-shift nan": Case(SIM + ["--max-shift", "nan"], r"--max-shift=nan: must be a finite",
                                     None, ["sim"]),
    "simulate --max-shift -1": Case(SIM + ["--max-shift", "-1"], r"--max-shift=-1", None, ["sim"]),
    "simulate --max-rotation inf": Case(SIM + ["--max-rotation", "inf"], r"--max-rotation", None, ["sim"]),
    "simulate --size 100000": Case(["simulate", "--n", "2", "--size", "100000", "--out", "{tmp}/sim"],
                                   r"--size=100000: must be an integer in \[32, 4096\]", None, ["sim"]),
    "simulate --n 0": Case(["simulate", "--n", "0", "--out", "{tmp}/sim"], r"--n=0", None, ["sim"]),
    "simulate --n 10**9": Case(["simulate", "--n", "1000000000", "--out", "{tmp}/sim"], r"--n=1000000000",
                               None, ["sim"]),
    "simulate --seed -1": Case(SIM + ["--seed", "-1"], r"--seed=-1: must be an integer", None, ["sim"]),
    "simulate --workers 0": Case(SIM + ["--workers", "0"], r"--workers=0", None, ["sim"]),
    "simulate --out FILE": Case(["simulate", "--n", "2", "--size", "32", "--out", "{tmp}/afile"],
                                r"afile is an existing file", _file("afile")),
    "simulate without --out": Case(["simulate", "--n", "2"], r"--out ROOT is required"),
    "simulate unknown system": Case(SIM + ["--x-system", "nosuch-like"], r"nosuch-like", None, ["sim"]),
    "calibrate --n-per-class 0": Case(["simulate", "calibrate", "--real", "{tmp}/real", "--n-per-class", "0"],
                                      r"--n-per-class=0", _real),
    "calibrate --real missing": Case(["simulate", "calibrate", "--real", "{tmp}/nope"], r"--real .*not found"),
    "calibrate --json DIR": Case(["simulate", "calibrate", "--real", "{tmp}/real", "--json", "{tmp}/real"],
                                 r"--json .* existing folder", _real),
    "resim --size 5": Case(["simulate", "resim", "--real", "{tmp}/real", "--out", "{tmp}/rs", "--size", "5"],
                           r"--size=5", _real, ["rs"]),
    "transform --device bogus": Case(TRANSFORM + ["--device", "bogus"], r"--device 'bogus'", _model, ["out"]),
    "transform --batch-size 0": Case(TRANSFORM + ["--batch-size", "0"], r"--batch-size=0", _model, ["out"]),
    "transform --png-level 12": Case(TRANSFORM + ["--png-level", "12"], r"--png-level=12", _model, ["out"]),
    "transform --jpeg-quality 0": Case(TRANSFORM + ["--jpeg-quality", "0"], r"--jpeg-quality=0", _model, ["out"]),
    "transform output is a file": Case(["transform", "--model", "{tmp}/model", "{tmp}/in", "{tmp}/afile", "-q"],
                                       r"afile is an existing file", lambda t: (_model(t), _file("afile")(t))),
    "transform input is a file": Case(["transform", "--model", "{tmp}/model", "{tmp}/afile", "{tmp}/out", "-q"],
                                      r"input .*afile: is a file", lambda t: (_model(t), _file("afile")(t)),
                                      ["out"]),
    "transform model missing": Case(["transform", "--model", "{tmp}/nomodel", "{tmp}/in", "{tmp}/out"],
                                    r"--model .*nomodel: folder not found", _model, ["out"]),
    "export --opset 99": Case(["export", "{tmp}/model", "--onnx", "{tmp}/g.onnx", "--opset", "99"],
                              r"--opset=99: must be an integer in \[7, \d+\]", _model, ["g.onnx"]),
    "export --onnx DIR": Case(["export", "{tmp}/model", "--onnx", "{tmp}/in"], r"--onnx .* existing folder",
                              _model),
    "export closed-form model": Case(["export", "{tmp}/model", "--onnx", "{tmp}/g.onnx"], r"no generator",
                                     _model, ["g.onnx"]),
    "data check on a file": Case(["data", "check", "{tmp}/afile"], r"ROOT .*afile: is a file", _file("afile")),
    "data check --workers 0": Case(["data", "check", "{tmp}/ds", "--workers", "0"], r"--workers=0", _dataset),
    "download --timeout nan": Case(["data", "download", "pbc", "--to", "{tmp}/dl", "--timeout", "nan"],
                                   r"--timeout=nan", None, ["dl"]),
    "download --to FILE": Case(["data", "download", "pbc", "--to", "{tmp}/afile"], r"afile is an existing file",
                               _file("afile")),
    "download unknown dataset": Case(["data", "download", "pbcc", "--to", "{tmp}/dl"], r"(?i:did you mean) 'pbc'"),
    # -- broken input files (item 7) -----------------------------------------------------------------
    "state truncated": Case(TRANSFORM, r"state.safetensors: cannot read .*re-fit", _damaged("truncated"), ["out"]),
    "state random bytes": Case(TRANSFORM, r"state.safetensors: cannot read", _damaged("random"), ["out"]),
    "state of another method": Case(TRANSFORM, r"not the state of a 'affine' model", _damaged("wrong_method"),
                                    ["out"]),
    "state with NaN matrix": Case(TRANSFORM, r"'matrix' holds NaN", _damaged("nan"), ["out/a.png"]),
    "broken archive": Case(["data", "download", "pbc", "--to", "{tmp}/dl", "-q", "--url",
                            "http://127.0.0.1:9/PBC_dataset_normal_DIB.zip"],
                           r"not a zip or tar archive; the archive was deleted",
                           _broken_archive, ["dl/PBC_dataset_normal_DIB.zip"]),
    # -- usage errors: one line too, not argparse's usage block ----------------------------------------
    "unknown option": Case(["fit", "affine", "--bogus"], r"unrecognized arguments|required"),
    "--size not a number": Case(FIT + ["--size", "x"], r"argument --size: invalid int value: 'x'", _dataset, ["m"]),
    # -- run-all rows: typed run options in the benchmark package (engineer A) ---------------------------
    "run-all: --set realism=maybe": Case(RUN_ALL + ["--set", "realism=maybe"], r"realism", None, ["run"]),
    "run-all: --methods ,": Case(["run-all", "--out", "{tmp}/run", "--no-report", "-q", "--methods", ","],
                                 r"--methods", None, ["run"]),
    "run-all: --set size=0": Case(RUN_ALL + ["--set", "size=0"], r"size", None, ["run"]),
    "run-all: --set method_preset=quik": Case(RUN_ALL + ["--set", "method_preset=quik"], r"quik", None, ["run"]),
    "run-all: --set profile_repeats=0": Case(RUN_ALL + ["--set", "profile_repeats=0"], r"profile_repeats",
                                             None, ["run"]),
    "run-all: --seed -1": Case(RUN_ALL + ["--seed", "-1"], r"seed", None, ["run"]),
    "run-all: --device bogus": Case(RUN_ALL + ["--device", "bogus"], r"bogus", None, ["run"]),
}

if not torch.cuda.is_available():
    CASES["fit --device cuda (no GPU)"] = Case(FIT + ["--device", "cuda"], r"no CUDA device is available",
                                               _dataset, ["m"])
    CASES["transform --device cuda (no GPU)"] = Case(TRANSFORM + ["--device", "cuda"],
                                                     r"no CUDA device is available", _model, ["out"])


def _argv(case: Case, tmp: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)) for a in case.argv]


def _check_error(code: int, err: str, case: Case, tmp: Path) -> None:
    import re

    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("cellbench: error: "), err
    assert re.search(case.match, lines[0]), (case.match, lines[0])
    for rel in case.untouched:
        assert not (tmp / rel).exists(), f"{rel} was written before the error"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name, tmp_path, capsys):
    case = CASES[name]
    if case.setup:
        case.setup(tmp_path)
    capsys.readouterr()
    code = main(_argv(case, tmp_path))
    captured = capsys.readouterr()
    _check_error(code, captured.err, case, tmp_path)


@pytest.mark.parametrize("name", ["simulate --size 100000", "state truncated", "unknown option",
                                  "transform --device bogus"])
def test_bad_input_in_a_real_process(name, tmp_path):
    """As a user runs it: an uncaught exception would print a traceback to stderr here."""
    case = CASES[name]
    if case.setup:
        case.setup(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "cellbench", *_argv(case, tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    _check_error(proc.returncode, proc.stderr, case, tmp_path)
