"""Shared fixtures. Tests write only to ``tmp_path`` and never download.

- ``pbc_dir`` / ``rpi_dir``: the real image folders in ``../shared/data`` (skipped when absent). Every
  test that uses them, directly or through another fixture, is marked ``realdata`` at collection
  (``-m "not realdata"`` deselects them all).
- Thread counts are per test: each test's ``torch.set_num_threads`` is undone after it, so a test
  (or a module's ``one_thread`` fixture) never changes what later tests and benchmarks time.
- Computed dataset splits go to a tmp cache (``$CELLBENCH_CACHE``), never into ``../shared/data``.
- ``benchmark_script(name)``: import ``benchmarks/<name>.py`` as a module (its functions are tested).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REAL_DATA_FIXTURES = ("pbc_dir", "rpi_dir")


def shared_data_dir() -> Path:
    """``$CELLBENCH_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("CELLBENCH_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Mark every test that reads the real data (via ``pbc_dir``/``rpi_dir``) ``realdata``."""
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in REAL_DATA_FIXTURES):
            if item.get_closest_marker("realdata") is None:
                item.add_marker(pytest.mark.realdata)


@pytest.fixture(autouse=True)
def _split_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Computed dataset splits are cached under ``$CELLBENCH_CACHE``: a tmp folder, never ``~/.cache``."""
    monkeypatch.setenv("CELLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cellbench-cache"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Undo any ``torch.set_num_threads`` a test makes, so thread counts never leak between tests."""
    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (tiny nets: avoids OpenMP barrier stalls on a busy machine)."""
    torch.set_num_threads(1)
    yield  # restored by _restore_torch_threads


@pytest.fixture(scope="session")
def pbc_dir() -> Path:
    d = shared_data_dir() / "pbc_dm96"
    if not d.is_dir():
        pytest.skip(f"real PBC images not present at {d}")
    return d


@pytest.fixture(scope="session")
def rpi_dir() -> Path:
    d = shared_data_dir() / "chula_rpi"
    if not d.is_dir():
        pytest.skip(f"real Raspberry Pi images not present at {d}")
    return d


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: the module ``benchmarks/<name>.py`` (loaded once per session)."""
    cache: dict[str, object] = {}

    def load(name: str):
        if name not in cache:
            path = REPO / "benchmarks" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"cellbench_benchmarks_{name}", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod  # dataclasses and pickling need the module registered
            spec.loader.exec_module(mod)
            cache[name] = mod
        return cache[name]

    return load
