"""Checks of command-line values shared by the commands, run before any work starts.

Each raises :class:`~cellbench.errors.ConfigError` with one line naming the option, so
``cellbench.cli.main`` prints it and exits 2 before anything is read, trained or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..options import MAX_IMAGE_SIDE, check_float, check_int, check_seed

#: Largest number of simulated pairs (a run of the paper's size is 800).
MAX_PAIRS = 1_000_000


def seed(value: int, name: str = "--seed") -> int:
    return check_seed(value, name)


def size(value: int, name: str = "--size", *, min: int = 1) -> int:
    return check_int(value, name, min=min, max=MAX_IMAGE_SIDE)


def count(value: int, name: str, *, min: int = 1, max: int | None = None) -> int:
    return check_int(value, name, min=min, max=max)


def finite(value: float, name: str, *, min: float | None = None, max: float | None = None) -> float:
    return check_float(value, name, min=min, max=max)


def output_dir(path: str | os.PathLike, name: str = "--out") -> Path:
    """A folder to write into: refused when it is an existing file (or lies under one)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            raise ConfigError(f"{name} {p}: {q} is an existing file, not a folder; choose a folder")
    return p


def output_file(path: str | os.PathLike, name: str) -> Path:
    """A file to write: refused when it is an existing folder (or its parent is a file)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{name} {p}: is an existing folder; give a file name")
    output_dir(p.parent, name=name)
    return p


def input_dir(path: str | os.PathLike, name: str) -> Path:
    """An existing folder to read."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{name} {p}: folder not found; check the path")
    if not p.is_dir():
        raise ConfigError(f"{name} {p}: is a file; a folder is needed")
    return p
