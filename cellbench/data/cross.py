"""The cross-system (unpaired) track: two labelled single-system folders, no pairs.

``--data cross:x=DIR,y=DIR`` loads system X (source, e.g. ``chula_rpi``) and system Y (target,
e.g. ``pbc_dm96``) with :class:`~cellbench.data.folders.LabelledFolder` (each with its own seeded,
class-stratified 80/10/10 split, or its ``splits.csv``). Normalizers are fitted on
``CrossData.train`` (X and Y training splits, unpaired); the Y classifier is evaluated on
``CrossData.x_test`` transformed versus raw.

Classes present in only one system are kept in the sets (a normalizer may use their colours)
but reported in ``x_only`` / ``y_only`` and logged; accuracy is computed on ``shared_classes``
only. Classes with fewer than 10 images in either system are listed in ``tiny_classes``:
their split parts may be empty and their per-class figures are noisy.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .folders import LabelledFolder
from .scale import ScaleEstimate, estimate_scale, rescale_images, scale_factor
from .sets import LabelledSet, UnpairedSet
from .stream import lazy_labelled

log = logging.getLogger(__name__)

#: Classes with fewer images than this in either system are reported as tiny.
TINY_CLASS = 10
#: Crop size and images per class used to estimate the cell scale of each system.
ESTIMATE_SIZE = 360
ESTIMATE_PER_CLASS = 40


@dataclass
class CrossData:
    """Everything the cross-system track needs; images ``float32 (N, 3, size, size)`` in [0, 1]."""

    train: UnpairedSet
    val: UnpairedSet
    x_test: LabelledSet
    y_test: LabelledSet
    shared_classes: list[str]
    x_only: list[str]
    y_only: list[str]
    tiny_classes: dict[str, int]
    scale_factor: float | None
    x_scale: ScaleEstimate | None = None
    y_scale: ScaleEstimate | None = None


@dataclass(frozen=True)
class Streaming:
    """Read images on demand (:mod:`cellbench.data.stream`) instead of decoding every split into memory.

    ``cache_mb``: decoded images kept in all, 40 % for each training set (read at random by the
    trainers) and 5 % for each validation and test set (read in order); ``workers``: decoding
    processes of in-order passes (``None``: :func:`cellbench.data.stream.default_workers`).
    """

    cache_mb: float = 512.0
    workers: int | None = None

    def share(self, split: str | None) -> float:
        return self.cache_mb * (0.4 if split == "train" else 0.05)


def _load(folder: LabelledFolder, split: str | None, size: int, limit: int | None,
          stream: Streaming | None = None, rescale: tuple[float, int] | None = None) -> LabelledSet:
    if stream is None:
        return folder.load(split, size=size, limit_per_class=limit)
    items = folder.select(split, limit_per_class=limit)
    if not items:
        raise DatasetError(f"{folder.root}: split {split!r} is empty")
    return lazy_labelled([it.path for it in items], [it.cls for it in items], [it.id for it in items], size=size,
                         cache_mb=stream.share(split), workers=stream.workers, rescale=rescale)


def _empty_like(size: int) -> LabelledSet:
    import torch

    return LabelledSet(torch.zeros(0, 3, size, size), [], [])


def _load_or_empty(folder: LabelledFolder, split: str, size: int, limit: int | None,
                   stream: Streaming | None = None) -> LabelledSet:
    if not folder.select(split):
        log.warning("%s: the %s split is empty", folder.root, split)
        return _empty_like(size)
    return _load(folder, split, size, limit, stream)


def load_cross(x_dir: str | os.PathLike, y_dir: str | os.PathLike, *, size: int = 256, seed: int = 0,
               x_test_dir: str | os.PathLike | None = None, scale: str | None = None,
               limit_per_class: int | None = None, stream: Streaming | None = None) -> CrossData:
    """Load two labelled folders as the cross-system track.

    Parameters
    ----------
    x_dir, y_dir:
        Labelled folders ``ROOT/<class>/<file>`` of the source (X) and target (Y) system.
    size:
        Images are centre cropped / reflect-padded to ``size x size`` (mixed sizes are fine).
    seed:
        Seed of each folder's split when it has no ``splits.csv``.
    x_test_dir:
        Take the X test images from this labelled folder (all its images) instead of X's test split.
    scale:
        ``None`` (no rescaling), ``"wbc"`` or ``"rbc"``: estimate cell sizes on the X and Y training
        images of the shared classes (:func:`~cellbench.data.scale.estimate_scale`) and rescale
        every X image by ``scale_factor(x, y, by=scale)`` before cropping to ``size``.
    limit_per_class:
        At most this many images per class and split (quick runs).
    stream:
        Read the images on demand (:class:`Streaming`): every set's ``images`` is a
        :class:`~cellbench.data.stream.LazyImages` holding file names and a bounded cache, so
        memory does not grow with the folders (the same pixels as the in-memory sets; an
        unreadable file raises :class:`~cellbench.errors.ImageReadError` naming it when it is
        read, where the in-memory load skips it with a warning).

    Raises
    ------
    DatasetError
        When a folder is missing or empty, or the two systems share no class.
    """
    if scale not in (None, "wbc", "rbc"):
        raise DatasetError(f"scale must be None, 'wbc' or 'rbc', got {scale!r}")
    fx, fy = LabelledFolder(x_dir, seed=seed), LabelledFolder(y_dir, seed=seed)
    fxt = LabelledFolder(x_test_dir, seed=seed) if x_test_dir is not None else None
    x_classes = set(fx.classes()) | (set(fxt.classes()) if fxt else set())
    y_classes = set(fy.classes())
    shared = sorted(set(fx.classes()) & y_classes)
    if not shared:
        raise DatasetError(f"{x_dir} ({', '.join(sorted(x_classes))}) and "
                           f"{y_dir} ({', '.join(sorted(y_classes))}) "
                           "have no cell class in common; the Y classifier cannot be evaluated on X. "
                           "Rename the class folders (see README 'Data formats')")
    x_only, y_only = sorted(x_classes - y_classes), sorted(y_classes - x_classes)
    if x_only:
        log.warning("classes only in X (%s): %s; excluded from the accuracy", x_dir, ", ".join(x_only))
    if y_only:
        log.warning("classes only in Y (%s): %s; excluded from the accuracy", y_dir, ", ".join(y_only))
    cx = Counter(it.cls for it in fx.items)
    cy = Counter(it.cls for it in fy.items)
    tiny = {c: min(n for n in (cx.get(c), cy.get(c)) if n is not None)
            for c in sorted(x_classes | y_classes)
            if any(n is not None and n < TINY_CLASS for n in (cx.get(c), cy.get(c)))}
    if tiny:
        log.warning("tiny classes (< %d images in a system): %s", TINY_CLASS,
                    ", ".join(f"{c} ({n})" for c, n in tiny.items()))

    x_train = _load(fx, "train", size, limit_per_class, stream)
    y_train = _load(fy, "train", size, limit_per_class, stream)
    x_val = _load_or_empty(fx, "val", size, limit_per_class, stream)
    y_val = _load_or_empty(fy, "val", size, limit_per_class, stream)
    x_test = (_load(fxt, None, size, limit_per_class, stream) if fxt is not None
              else _load_or_empty(fx, "test", size, limit_per_class, stream))
    y_test = _load_or_empty(fy, "test", size, limit_per_class, stream)

    factor = None
    ex = ey = None
    if scale is not None:
        # Measured on larger crops than the working size (more whole red cells; the estimate of
        # a 256 px crop is biased by cells cut at the border), shared classes only (same mix).
        est_size = max(size, ESTIMATE_SIZE)
        lim = min(limit_per_class or ESTIMATE_PER_CLASS, ESTIMATE_PER_CLASS)
        ex = estimate_scale(fx.load("train", size=est_size, limit_per_class=lim, classes=shared).images)
        ey = estimate_scale(fy.load("train", size=est_size, limit_per_class=lim, classes=shared).images)
        try:
            factor = scale_factor(ex, ey, by=scale)
        except ValueError as exc:
            raise DatasetError(f"{x_dir} -> {y_dir}: {exc}") from None
        log.info("scale normalization (%s): X %.1f px, Y %.1f px, factor %.3f", scale, ex.diameter(scale),
                 ey.diameter(scale), factor)
        # Shrinking needs more of the original image around the centre: reload at a larger size.
        src = max(size, math.ceil(size / factor))

        def rescaled(folder: LabelledFolder, split: str | None, current: LabelledSet) -> LabelledSet:
            if len(current) == 0:
                return current
            if stream is not None:
                return _load(folder, split, size, limit_per_class, stream, rescale=(factor, src))
            ims = current.images if src == size else _load(folder, split, src, limit_per_class).images
            return LabelledSet(rescale_images(ims, factor, size), current.labels, current.ids)

        x_train = rescaled(fx, "train", x_train)
        x_val = rescaled(fx, "val", x_val)
        x_test = rescaled(fxt, None, x_test) if fxt is not None else rescaled(fx, "test", x_test)

    log.info("cross data: X %s (%d train, %d val, %d test), Y %s (%d train, %d val, %d test), shared: %s",
             Path(x_dir).name, len(x_train), len(x_val), len(x_test), Path(y_dir).name, len(y_train),
             len(y_val), len(y_test), ", ".join(shared))
    return CrossData(
        train=UnpairedSet(x_train, y_train), val=UnpairedSet(x_val, y_val), x_test=x_test, y_test=y_test,
        shared_classes=shared, x_only=x_only, y_only=y_only, tiny_classes=tiny, scale_factor=factor,
        x_scale=ex, y_scale=ey,
    )
