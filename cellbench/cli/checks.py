"""Checks of command-line values shared by the commands, run before any work starts.

Each raises :class:`~cellbench.errors.ConfigError` with one line naming the option, so
``cellbench.cli.main`` prints it and exits 2 before anything is read, trained or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..options import check_float, check_int

#: Largest image side the commands accept: a 4096x4096x3 float32 batch of one is ~200 MB, and
#: the simulator renders spectra per pixel, so larger sides only end in a MemoryError.
MAX_SIZE = 4096
#: Largest number of simulated pairs (a run of the paper's size is 800).
MAX_PAIRS = 1_000_000
#: Seeds feed numpy.random.default_rng and torch.manual_seed: non-negative, below 2**32.
MAX_SEED = 2**32 - 1


def seed(value: int, name: str = "--seed") -> int:
    return check_int(value, name, min=0, max=MAX_SEED)


def size(value: int, name: str = "--size", *, min: int = 1) -> int:
    return check_int(value, name, min=min, max=MAX_SIZE)


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
