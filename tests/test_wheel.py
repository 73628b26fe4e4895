"""The built package works outside the repository: presets ship in the wheel and are found.

The wheel is built from a copy of the source tree (so the build leaves nothing in the checkout),
installed with ``--no-deps`` into a fresh virtual environment in a temporary folder, and run from
another temporary folder with ``CELLBENCH_MODELS_DIR`` unset. Nothing is downloaded: the build
runs without isolation, the install without an index, and the new environment sees this
interpreter's site-packages (torch, timm, ...) through a ``.pth`` file placed *after* its own
site-packages, so ``import cellbench`` there must resolve to the installed wheel (asserted).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from cellbench import presets

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "cellbench", "models")
PRESETS = sorted(p.name for p in (REPO / "models").glob("*.toml"))


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv, work)``: a fresh virtual environment with the built wheel, and a folder outside the repo."""
    try:
        import setuptools  # noqa: F401  (the build backend, used without isolation: nothing is downloaded)
    except ImportError:
        pytest.fail("the wheel test builds without isolation and needs setuptools: pip install -e .[test]")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "_presets")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], cwd=root)
    (wheel,) = dist.glob("cellbench-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=root)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz-cellbench-test-deps.pth").write_text("".join(p + "\n" for p in deps), encoding="utf-8")
    work = root / "elsewhere"
    work.mkdir()
    return venv, work, wheel


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CELLBENCH_MODELS_DIR", "PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_wheel_ships_presets_systems_and_templates(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"cellbench/_presets/{p}" for p in PRESETS} <= names
    assert PRESETS and "ccgan.toml" in PRESETS and "run-all.toml" in PRESETS
    assert {"cellbench/sim/systems/dm96-like.toml", "cellbench/sim/systems/dm1200-like.toml"} <= names
    assert "cellbench/report/templates/report.html.j2" in names
    # the shipped copy is the repository's, byte for byte
    with zipfile.ZipFile(wheel) as z:
        assert z.read("cellbench/_presets/pcnet.toml") == (REPO / "models" / "pcnet.toml").read_bytes()
    # one copy in git: the build wrote nothing into the checkout
    assert not (REPO / "cellbench" / "_presets").exists()


def test_installed_package_is_the_one_imported_and_finds_its_presets(installed):
    venv, work, _ = installed
    out = _run([str(venv / "bin" / "python"), "-c",
                "import json, cellbench, cellbench.presets as p; "
                "print(json.dumps([cellbench.__file__, str(p.models_dir())]))"], cwd=work, env=_env()).stdout
    module, models = json.loads(out)
    assert Path(module).is_relative_to(venv) and not Path(module).is_relative_to(REPO)
    assert Path(models) == Path(module).parent / "_presets"


def test_installed_cli_methods_and_describe(installed):
    venv, work, _ = installed
    cli = str(venv / "bin" / "cellbench")
    out = _run([cli, "methods"], cwd=work, env=_env()).stdout
    assert "ccgan" in out and "[presets: paper, quick]" in out
    out = _run([cli, "describe", "ccgan", "--preset", "paper", "--json"], cwd=work, env=_env()).stdout
    info = json.loads(out)
    assert info["generator"]["params"] == 21_114_404  # the paper preset's generator (docs/networks.md)


def test_installed_run_all_from_another_folder(installed):
    venv, work, _ = installed
    run = work / "run"
    _run([str(venv / "bin" / "cellbench"), "run-all", "--out", str(run), "--methods", "identity,affine",
          "--set", "synthetic_n=40", "--set", "size=64", "--set", 'classifier_preset="tiny"',
          "--set", "realism=false", "--set", "speed_seconds=0.2", "--set", "speed_batch_sizes=[1]",
          "--set", "speed_repeats=1", "-q"], cwd=work, env=_env())
    results = json.loads((run / "results.json").read_text())
    assert {"identity", "affine"} <= {r["method"] for r in results["records"]}
    assert (run / "report.html").is_file()


def test_models_dir_order(monkeypatch, tmp_path):
    """$CELLBENCH_MODELS_DIR, else the checkout's models/, else the presets shipped in the package."""
    monkeypatch.setenv("CELLBENCH_MODELS_DIR", str(tmp_path))
    assert presets.models_dir() == tmp_path
    monkeypatch.delenv("CELLBENCH_MODELS_DIR")
    assert presets.models_dir() == REPO / "models"  # tests run from a checkout
