"""Train/val/test splits: read from ``splits.csv`` or computed once (seeded, class-stratified)."""

from __future__ import annotations

import csv
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DatasetError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # the paper's split (sec. 5.1)


def stratified_split(
    keys: Iterable[tuple[str, str]], *, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> dict[tuple[str, str], str]:
    """Assign each ``(class, id)`` key to train/val/test, stratified by class.

    Keys are sorted before a seeded permutation, so the result depends only on the set of keys
    and the seed. Per class, ``round(n * f_val)`` and ``round(n * f_test)`` items go to val and
    test (at least one each when the class has 3 or more items); the rest go to train.
    """
    by_class: dict[str, list[str]] = defaultdict(list)
    for cls, ident in keys:
        by_class[cls].append(ident)
    out: dict[tuple[str, str], str] = {}
    for cls in sorted(by_class):
        ids = sorted(by_class[cls])
        rng = np.random.default_rng([seed, sum(ord(c) for c in cls), len(cls)])
        order = rng.permutation(len(ids))
        n = len(ids)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        for rank, idx in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out[(cls, ids[idx])] = split
    return out


def read_splits(path: Path) -> dict[tuple[str, str], str]:
    """Read ``class,id,split`` rows; classes are canonicalized by the caller."""
    out: dict[tuple[str, str], str] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"class", "id", "split"} <= set(reader.fieldnames):
                raise DatasetError(f"{path}: needs a header 'class,id,split'; fix or delete the file")
            for lineno, row in enumerate(reader, start=2):
                split = (row["split"] or "").strip()
                if split not in SPLITS:
                    raise DatasetError(f"{path}:{lineno}: split {split!r} is not one of {SPLITS}")
                out[(row["class"].strip(), row["id"].strip())] = split
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read splits ({exc}); fix or delete the file") from None
    return out


def write_splits(path: Path, splits: dict[tuple[str, str], str]) -> None:
    """Write splits atomically, sorted by class then id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".splits-", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["class", "id", "split"])
        for (cls, ident), split in sorted(splits.items()):
            w.writerow([cls, ident, split])
    os.replace(tmp, path)
