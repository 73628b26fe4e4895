"""Train/val/test splits: read from ``splits.csv`` or computed once (seeded, class-stratified).

Ids are taken exactly as written (no stripping): a file named ``" p0.png"`` has the id ``" p0"``,
and a ``splits.csv`` row must spell it the same way. Duplicate rows are refused with the file and
line, since "last row wins" silently moves items between splits.

A computed split is never written into a user's dataset folder. It is a pure function of the
dataset's items and the seed (:func:`stratified_split`); a copy is kept in a cache keyed by them
(:func:`split_cache_path`, ``$XDG_CACHE_HOME/cellbench/splits/<hash>.csv``, or
``$CELLBENCH_CACHE/splits/``) so a run can record
which split it used, or the caller passes a file of its own (stored with the run).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DatasetError

log = logging.getLogger(__name__)

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


def read_split_rows(path: Path) -> list[tuple[int, str, str, str]]:
    """``(line, class, id, split)`` for every row of a ``class,id,split`` file, ids exactly as written.

    Raises :class:`DatasetError` naming the file and line for a missing header, an unknown split,
    an empty id and a duplicate ``(class, id)`` row (conflicting or not).
    """
    rows: list[tuple[int, str, str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"class", "id", "split"} <= set(reader.fieldnames):
                raise DatasetError(f"{path}: needs a header 'class,id,split'; fix or delete the file")
            for row in reader:
                lineno = reader.line_num
                cls, ident, split = row["class"], row["id"], (row["split"] or "").strip()
                if cls is None or ident is None:
                    raise DatasetError(f"{path}:{lineno}: expected 3 fields class,id,split; fix the row")
                if split not in SPLITS:
                    raise DatasetError(f"{path}:{lineno}: split {split!r} is not one of {SPLITS}; fix the row")
                if not ident:
                    raise DatasetError(f"{path}:{lineno}: empty id; fix or delete the row")
                key = (cls.strip(), ident)
                if key in seen:
                    raise DatasetError(f"{path}:{lineno}: duplicate row for class {key[0]!r} id {ident!r} "
                                       f"(first at line {seen[key]}); keep one row per item")
                seen[key] = lineno
                rows.append((lineno, key[0], ident, split))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read splits ({exc}); fix or delete the file") from None
    return rows


def read_splits(path: Path) -> dict[tuple[str, str], str]:
    """Read ``class,id,split`` rows (see :func:`read_split_rows`); classes are canonicalized by the caller."""
    return {(cls, ident): split for _, cls, ident, split in read_split_rows(path)}


def format_splits(splits: dict[tuple[str, str], str]) -> str:
    """The CSV text of a split, sorted by class then id.

    Raises :class:`DatasetError` for an id that cannot be written as UTF-8 (a file name with
    undecodable bytes); rename the file.
    """
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["class", "id", "split"])
    for (cls, ident), split in sorted(splits.items()):
        for text in (cls, ident):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                shown = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
                raise DatasetError(f"class {cls!r}: the file name {shown!r} is not valid UTF-8 and cannot be "
                                   "written to a splits file; rename the file") from None
        w.writerow([cls, ident, split])
    return buf.getvalue()


def write_splits(path: Path, splits: dict[tuple[str, str], str]) -> None:
    """Write splits atomically with the process umask, sorted by class then id.

    The text is built (and checked) before anything is written, so a bad id leaves no file behind.
    """
    from ..fs import atomic_write

    atomic_write(path, format_splits(splits))


def split_key(keys: Iterable[tuple[str, str]], seed: int) -> str:
    """A content key of a split: SHA-256 of the sorted ``(class, id)`` items and the seed."""
    h = hashlib.sha256(f"cellbench-split-v1 seed={seed}\n".encode())
    for cls, ident in sorted(keys):
        h.update(cls.encode("utf-8", "surrogateescape") + b"\0" + ident.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def cache_dir() -> Path:
    """``$CELLBENCH_CACHE``, else ``$XDG_CACHE_HOME/cellbench`` (``~/.cache/cellbench`` by default)."""
    if os.environ.get("CELLBENCH_CACHE"):
        return Path(os.environ["CELLBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cellbench"


def split_cache_path(keys: Iterable[tuple[str, str]], seed: int) -> Path:
    """Where the computed split of these items and seed is kept: ``cache_dir()/splits/<key>.csv``."""
    return cache_dir() / "splits" / f"{split_key(keys, seed)}.csv"


def cache_split(keys: list[tuple[str, str]], splits: dict[tuple[str, str], str], seed: int) -> Path | None:
    """Record a computed split in the cache (best effort: a read-only cache only logs); returns its path."""
    path = split_cache_path(keys, seed)
    if path.exists():
        return path
    try:
        write_splits(path, splits)
    except (OSError, DatasetError) as exc:
        log.info("split not cached (%s); it is recomputed identically each time", exc)
        return None
    return path
