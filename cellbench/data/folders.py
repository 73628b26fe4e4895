"""Dataset folders on disk: the paired two-system layout and the labelled single-system layout.

Paired::

    ROOT/X/<class>/<id>.<ext>       source system
    ROOT/Y/<class>/<id>.<ext>       target system; a pair is matched by class and id (file stem)
    ROOT/masks/<class>/<id>.png     optional 8-bit label maps (see cellbench.data.masks)
    ROOT/splits.csv                 optional class,id,split

Labelled (the PBC layout)::

    ROOT/<class>/<file>

Without ``splits.csv`` a seeded, class-stratified 80/10/10 split is computed (a pure function of
the items and the seed). It is never written into the dataset folder: a caller may pass its own
``splits_file`` (a run keeps its split there), otherwise a copy goes to the split cache
(:func:`cellbench.data.splits.split_cache_path`). Ids are file names without extension, exactly
as written; a split file with duplicate rows, unknown ids or unknown classes is refused.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError, ImageReadError
from ..io import is_image_file, read_image, read_mask
from ..tensors import center_crop_or_pad, rotate90, to_tensor
from .classes import canonical_class
from .sets import LabelledSet, PairedSet
from .splits import SPLITS, cache_split, read_split_rows, stratified_split, write_splits

log = logging.getLogger(__name__)
SPLITS_FILE = "splits.csv"


@dataclass(frozen=True)
class PairItem:
    cls: str
    id: str
    x: Path
    y: Path
    mask: Path | None
    split: str


@dataclass(frozen=True)
class ImageItem:
    cls: str
    id: str
    path: Path
    split: str


@dataclass
class Problem:
    """One thing wrong with a dataset; ``severity`` is ``"error"`` or ``"warning"``."""

    path: str
    kind: str
    message: str
    severity: str = "error"


def is_paired_root(root: Path) -> bool:
    return (root / "X").is_dir() and (root / "Y").is_dir()


def _class_dirs(root: Path, problems: list[Problem]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            cls = canonical_class(d.name)
        except DatasetError as exc:
            problems.append(Problem(str(d), "unknown_class", str(exc)))
            continue
        out.setdefault(cls, []).append(d)
    return out


def _link_problem(link: Path) -> str:
    """Why a symbolic link does not lead to a file: a loop, a dangling target, or something else."""
    import errno

    try:
        link.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno == errno.ENOENT:
            return f"dangling symbolic link (target {os.readlink(link)!r} does not exist)"
        return f"symbolic link cannot be followed ({exc.strerror})"
    return "symbolic link to something that is not a file"


def _images_by_id(dirs: list[Path], problems: list[Problem]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        for f in sorted(d.iterdir()):
            if f.name.startswith("."):
                continue
            if not f.is_file():
                if f.is_symlink():
                    problems.append(Problem(str(f), "broken_link", f"{f}: {_link_problem(f)}; fix or remove the link"))
                elif f.is_dir() and is_image_file(f):
                    problems.append(Problem(str(f), "not_image", f"{f}: a folder named like an image (ignored); "
                                            "rename or remove it", "warning"))
                continue
            if not is_image_file(f):
                problems.append(Problem(str(f), "not_image", f"{f}: not an image file (ignored)", "warning"))
                continue
            if f.stem in found:
                problems.append(Problem(str(f), "duplicate_id",
                                        f"{f}: id {f.stem!r} also at {found[f.stem]}; rename one"))
                continue
            found[f.stem] = f
    return found


def _assign_splits(root: Path, keys: list[tuple[str, str]], seed: int, problems: list[Problem], *,
                   splits_file: Path | None = None, cache: bool = True) -> dict[tuple[str, str], str]:
    """The split of every key: from ``splits_file`` (when given and present), else ``ROOT/splits.csv``
    (when present), else computed (:func:`stratified_split`).

    A computed split goes to ``splits_file`` when one is given (a run's own copy), otherwise into the
    split cache keyed by the items and seed (``cache``); never into the dataset folder. Rows of a
    split file that name no item, duplicate rows and unknown classes are problems of kind ``splits``
    (errors): the folders refuse to load such a dataset; ``data check`` lists them.
    """
    path = splits_file if splits_file is not None and Path(splits_file).exists() else root / SPLITS_FILE
    if path.exists():
        try:
            rows = read_split_rows(path)
        except DatasetError as exc:
            problems.append(Problem(str(path), "splits", str(exc)))
            return stratified_split(keys, seed=seed)
        known = set(keys)
        splits: dict[tuple[str, str], str] = {}
        for lineno, cls, ident, split in rows:
            try:
                key = (canonical_class(cls, source=f"{path}:{lineno}"), ident)
            except DatasetError as exc:
                problems.append(Problem(str(path), "splits", str(exc)))
                continue
            if key not in known:
                problems.append(Problem(str(path), "splits", f"{path}:{lineno}: no image with class {key[0]!r} "
                                        f"and id {ident!r} (ids are file names without extension, exactly as "
                                        "written); fix or delete the row"))
                continue
            if key in splits:
                problems.append(Problem(str(path), "splits", f"{path}:{lineno}: a second row for class "
                                        f"{key[0]!r} id {ident!r}; keep one row per item"))
                continue
            splits[key] = split
        missing = [k for k in keys if k not in splits]
        if missing:
            problems.append(Problem(str(path), "split_missing",
                                    f"{path}: {len(missing)} item(s) have no split (e.g. {missing[0]}); "
                                    "they are put in train", "warning"))
            for k in missing:
                splits[k] = "train"
        return splits
    splits = stratified_split(keys, seed=seed)
    if keys and splits_file is not None:
        write_splits(Path(splits_file), splits)
        log.info("wrote the split to %s", splits_file)
    elif keys and cache:
        cache_split(keys, splits, seed)
    return splits


def _raise_split_problems(root: Path, problems: list[Problem]) -> None:
    """A bad split file is always fatal when loading: a wrong split leaks test images into training."""
    bad = [p for p in problems if p.kind == "splits" and p.severity == "error"]
    if bad:
        more = f" (and {len(bad) - 1} more; run `cellbench data check {root}`)" if len(bad) > 1 else ""
        raise DatasetError(bad[0].message + more)


def index_paired(root: str | os.PathLike, *, seed: int = 0, splits_file: str | os.PathLike | None = None,
                 write_split: bool = True) -> tuple[list[PairItem], list[Problem]]:
    """Index a paired dataset; returns the matched pairs and every problem found (no decoding)."""
    root = Path(root)
    problems: list[Problem] = []
    if not is_paired_root(root):
        raise DatasetError(f"{root}: not a paired dataset (needs X/ and Y/ sub-folders); see README 'Data formats'")
    xs, ys = _class_dirs(root / "X", problems), _class_dirs(root / "Y", problems)
    ms = _class_dirs(root / "masks", problems) if (root / "masks").is_dir() else {}
    pairs: list[tuple[str, str, Path, Path, Path | None]] = []
    for cls in sorted(set(xs) | set(ys)):
        xi = _images_by_id(xs.get(cls, []), problems)
        yi = _images_by_id(ys.get(cls, []), problems)
        mi = _images_by_id(ms.get(cls, []), problems) if cls in ms else {}
        for ident in sorted(set(xi) - set(yi)):
            problems.append(Problem(str(xi[ident]), "unmatched",
                                    f"{xi[ident]}: no Y image with class {cls!r} and id {ident!r}"))
        for ident in sorted(set(yi) - set(xi)):
            problems.append(Problem(str(yi[ident]), "unmatched",
                                    f"{yi[ident]}: no X image with class {cls!r} and id {ident!r}"))
        for ident in sorted(set(xi) & set(yi)):
            pairs.append((cls, ident, xi[ident], yi[ident], mi.get(ident)))
    splits = _assign_splits(root, [(c, i) for c, i, *_ in pairs], seed, problems,
                            splits_file=Path(splits_file) if splits_file else None, cache=write_split)
    items = [PairItem(c, i, x, y, m, splits[(c, i)]) for c, i, x, y, m in pairs]
    return items, problems


def index_labelled(root: str | os.PathLike, *, seed: int = 0, splits_file: str | os.PathLike | None = None,
                   write_split: bool = True) -> tuple[list[ImageItem], list[Problem]]:
    """Index a labelled single-system folder ``ROOT/<class>/<file>``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    problems: list[Problem] = []
    classes = _class_dirs(root, problems)
    found = [(cls, ident, path) for cls, dirs in classes.items()
             for ident, path in _images_by_id(dirs, problems).items()]
    if not found:
        raise DatasetError(f"{root}: no images found in class sub-folders ROOT/<class>/<file>; "
                           "see README 'Data formats'")
    splits = _assign_splits(root, [(c, i) for c, i, _ in found], seed, problems,
                            splits_file=Path(splits_file) if splits_file else None, cache=write_split)
    items = sorted((ImageItem(c, i, p, splits[(c, i)]) for c, i, p in found), key=lambda t: (t.cls, t.id))
    return items, problems


def _select(items: Sequence, split: str | None, classes: Sequence[str] | None,
            limit_per_class: int | None) -> list:
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {SPLITS}")
    chosen = [it for it in items if (split is None or it.split == split) and (classes is None or it.cls in classes)]
    if limit_per_class is not None:
        counts: Counter = Counter()
        kept = []
        for it in chosen:
            if counts[it.cls] < limit_per_class:
                kept.append(it)
                counts[it.cls] += 1
        chosen = kept
    return chosen


def _parallel_map(fn: Callable, items: Sequence, workers: int) -> list:
    if workers <= 1 or len(items) < 8:
        return [fn(it) for it in items]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, items, chunksize=16))


class PairedFolder:
    """A paired two-system dataset on disk.

    Parameters
    ----------
    root:
        Dataset folder (``X/``, ``Y/``, optional ``masks/`` and ``splits.csv``).
    seed:
        Seed of the split when no ``splits.csv`` exists.
    splits_file:
        The caller's own split file (e.g. in a run folder): read when it exists, else the computed
        split is written there. ``ROOT/splits.csv`` is read when ``splits_file`` does not exist yet.
    strict:
        Raise :class:`DatasetError` on unmatched pairs or unknown classes (otherwise they are logged
        and skipped). ``cellbench data check`` lists everything.
    """

    def __init__(self, root: str | os.PathLike, *, seed: int = 0, strict: bool = True,
                 splits_file: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.items, self.problems = index_paired(self.root, seed=seed, splits_file=splits_file)
        _raise_split_problems(self.root, self.problems)
        errors = [p for p in self.problems if p.severity == "error"]
        if errors and strict:
            shown = "; ".join(p.message for p in errors[:3])
            raise DatasetError(f"{self.root}: {len(errors)} problem(s): {shown}"
                               f"{' ...' if len(errors) > 3 else ''}. Run `cellbench data check {self.root}`")
        for p in errors:
            log.warning("skipping: %s", p.message)
        if not self.items:
            raise DatasetError(f"{self.root}: no matched X/Y pairs found")

    @property
    def has_masks(self) -> bool:
        return any(it.mask is not None for it in self.items)

    def classes(self) -> list[str]:
        return sorted({it.cls for it in self.items})

    def select(self, split: str | None = None, *, classes: Sequence[str] | None = None,
               limit_per_class: int | None = None) -> list[PairItem]:
        return _select(self.items, split, classes, limit_per_class)

    def load(self, split: str | None = "train", *, size: int = 256, limit_per_class: int | None = None,
             classes: Sequence[str] | None = None, rotations: bool = False, workers: int = 2,
             uint8: bool = False) -> PairedSet:
        """Decode the selected pairs into a :class:`PairedSet` (centre crop/pad to ``size``).

        ``rotations=True`` adds the 90/180/270 degree copies (the paper's augmentation, sec. 5.1).
        Masks are loaded only when every selected pair has one. ``uint8=True`` keeps the decoded 8-bit
        images (``(N, 3, H, W)`` uint8: a quarter of the float32 memory; ``k / 255`` gives the float set).
        """
        items = self.select(split, classes=classes, limit_per_class=limit_per_class)
        if not items:
            raise DatasetError(f"{self.root}: split {split!r} is empty")
        use_masks = all(it.mask is not None for it in items)

        def load_one(it: PairItem):
            x = center_crop_or_pad(read_image(it.x), size)
            y = center_crop_or_pad(read_image(it.y), size)
            m = center_crop_or_pad(read_mask(it.mask), size) if use_masks else None
            return x, y, m

        loaded = _parallel_map(load_one, items, workers)
        ks = (0, 1, 2, 3) if rotations else (0,)
        xs = [rotate90(x, k) for x, _, _ in loaded for k in ks]
        ys = [rotate90(y, k) for _, y, _ in loaded for k in ks]
        labels = [it.cls for it in items for _ in ks]
        ids = [it.id if k == 0 else f"{it.id}_rot{90 * k}" for it in items for k in ks]
        masks = (torch.from_numpy(np.stack([rotate90(m, k) for _, _, m in loaded for k in ks]))
                 if use_masks else None)
        if uint8:
            def stack(a: list[np.ndarray]) -> torch.Tensor:
                return torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).contiguous()
            return PairedSet(stack(xs), stack(ys), labels, ids, masks)
        return PairedSet(to_tensor(np.stack(xs)), to_tensor(np.stack(ys)), labels, ids, masks)


class LabelledFolder:
    """A labelled single-system folder ``ROOT/<class>/<file>`` (for example PBC)."""

    def __init__(self, root: str | os.PathLike, *, seed: int = 0, strict: bool = False,
                 splits_file: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.items, self.problems = index_labelled(self.root, seed=seed, splits_file=splits_file)
        _raise_split_problems(self.root, self.problems)
        errors = [p for p in self.problems if p.severity == "error"]
        if errors and strict:
            raise DatasetError(f"{self.root}: {len(errors)} problem(s): {errors[0].message}. "
                               f"Run `cellbench data check {self.root}`")
        for p in errors:
            log.warning("skipping: %s", p.message)

    def classes(self) -> list[str]:
        return sorted({it.cls for it in self.items})

    def select(self, split: str | None = None, *, classes: Sequence[str] | None = None,
               limit_per_class: int | None = None) -> list[ImageItem]:
        return _select(self.items, split, classes, limit_per_class)

    def load(self, split: str | None = "train", *, size: int = 256, limit_per_class: int | None = None,
             classes: Sequence[str] | None = None, rotations: bool = False, workers: int = 2,
             skip_unreadable: bool = True) -> LabelledSet:
        """Decode the selected images (centre crop/pad to ``size``); unreadable files are logged and skipped."""
        items = self.select(split, classes=classes, limit_per_class=limit_per_class)
        if not items:
            raise DatasetError(f"{self.root}: split {split!r} is empty")

        def load_one(it: ImageItem):
            try:
                return center_crop_or_pad(read_image(it.path), size)
            except ImageReadError as exc:
                if not skip_unreadable:
                    raise
                log.warning("skipping unreadable image: %s", exc)
                return None

        loaded = _parallel_map(load_one, items, workers)
        keep = [(it, im) for it, im in zip(items, loaded, strict=True) if im is not None]
        if not keep:
            raise DatasetError(f"{self.root}: no readable images in split {split!r}")
        ks = (0, 1, 2, 3) if rotations else (0,)
        imgs = np.stack([rotate90(im, k) for _, im in keep for k in ks])
        labels = [it.cls for it, _ in keep for _ in ks]
        ids = [it.id if k == 0 else f"{it.id}_rot{90 * k}" for it, _ in keep for k in ks]
        return LabelledSet(to_tensor(imgs), labels, ids)
