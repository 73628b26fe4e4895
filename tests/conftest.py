"""Shared fixtures. Tests write only to ``tmp_path`` and never download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$CELLBENCH_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("CELLBENCH_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


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
