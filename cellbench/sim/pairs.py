"""Paired two-system data from the simulator: in memory, streamed, or written to disk.

Item ``i`` of a dataset depends only on ``(seed, i)``: its class is ``classes[i % len(classes)]``
(a fixed cycling order, so any ``n`` that is a multiple of 8 is exactly class-balanced), and its
random numbers come from ``numpy.random.SeedSequence(seed, spawn_key=(i,))``. So any chunking,
worker count or start offset gives identical bytes.

Items lie on slides: item ``i`` on slide ``i // ITEMS_PER_SLIDE`` (:func:`slide_of`), whose
staining, smear thickness and focus offset (:class:`cellbench.sim.scene.Slide`) come from
``SeedSequence(seed, spawn_key=(_SLIDE_KEY, slide))``; so a data set spans several slides and its
train/val/test ranges mostly lie on different slides, as real data sets do.

Within a pair, the scene is shared (one slide's stain for X and Y: the same physical cell); Y is
rendered as is (the mask belongs to Y), X and the optional second Y rendering (``y2``) get
independent noise and an independent rigid misregistration (shift of at most ``max_shift_px``,
rotation of at most ``max_rotation_deg`` about the centre).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.classes import CLASSES, canonical_class
from ..data.sets import PairedSet
from ..data.splits import stratified_split, write_splits
from ..errors import ConfigError
from ..io import write_image, write_mask
from .scene import ITEMS_PER_SLIDE, Slide, make_scene
from .system import System, Warp, load_system, render

log = logging.getLogger(__name__)

DEFAULT_X = "dm1200-like"
DEFAULT_Y = "dm96-like"


@dataclass
class SimulatedPair:
    """One pair: ``x``, ``y`` (and ``y2``) uint8 ``(H, W, 3)``, ``mask`` uint8 ``(H, W)``."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    label: str
    id: str
    y2: np.ndarray | None = None


def _classes(classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        return CLASSES
    out = tuple(canonical_class(c) for c in classes)
    if not out:
        raise ConfigError("classes: give at least one class")
    return out


def item_id(seed: int, index: int) -> str:
    return f"s{seed}_{index:07d}"


#: Spawn-key tag of the slides' random streams (items use ``(index,)``, slides ``(_SLIDE_KEY, slide)``).
_SLIDE_KEY = 0x5EED511DE


def slide_of(index: int) -> int:
    """The slide item ``index`` lies on: ``index // ITEMS_PER_SLIDE`` (consecutive items share a slide)."""
    return int(index) // ITEMS_PER_SLIDE


def slide_for(seed: int, index: int) -> Slide:
    """The :class:`~cellbench.sim.scene.Slide` (stain, thickness, focus) of item ``index``.

    A pure function of ``(seed, slide_of(index))``: every item of a slide, and both images of a
    pair (the same physical cell), share its staining.
    """
    ss = np.random.SeedSequence(int(seed), spawn_key=(_SLIDE_KEY, slide_of(index)))
    return Slide.draw(np.random.default_rng(ss))


def simulate_pair(
    index: int,
    *,
    size: int = 256,
    seed: int = 0,
    x_system: str | System = DEFAULT_X,
    y_system: str | System = DEFAULT_Y,
    classes: Sequence[str] | None = None,
    second_y: bool = False,
    max_shift_px: float = 0.5,
    max_rotation_deg: float = 0.1,
    morphology: dict | None = None,
) -> SimulatedPair:
    """Render pair number ``index`` (a pure function of ``seed`` and ``index``); ``morphology``: the scene's
    measured morphology (:func:`cellbench.sim.morphology.load_morphology`; ``None``: the packaged file)."""
    cls_list = _classes(classes)
    sx, sy = load_system(x_system), load_system(y_system)
    cls = cls_list[index % len(cls_list)]
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    r_scene, r_x, r_y, r_y2, r_wx, r_wy2 = (np.random.default_rng(s) for s in ss.spawn(6))
    scene = make_scene(cls, r_scene, size, slide=slide_for(seed, index), morphology=morphology)
    y = render(sy, scene.parts, scene.depths_um, rng=r_y)
    x = render(
        sx, scene.parts, scene.depths_um, rng=r_x, warp=Warp.random(r_wx, max_shift_px, max_rotation_deg)
    )
    y2 = None
    if second_y:
        y2 = render(
            sy,
            scene.parts,
            scene.depths_um,
            rng=r_y2,
            warp=Warp.random(r_wy2, max_shift_px, max_rotation_deg),
        )
    # the scene's label: its class, or for a borderline cell with a soft labelling border the class an
    # expert would have named (the morphology file's ``ambiguity.label_width``)
    return SimulatedPair(x=x, y=y, mask=scene.mask, label=scene.cls, id=item_id(seed, index), y2=y2)


def _to_chw(images: list[np.ndarray]) -> torch.Tensor:
    a = torch.from_numpy(np.stack(images))
    return a.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def simulate_pairs(
    n: int,
    *,
    size: int = 256,
    seed: int = 0,
    x_system: str | System = DEFAULT_X,
    y_system: str | System = DEFAULT_Y,
    classes: Sequence[str] | None = None,
    second_y: bool = False,
    start: int = 0,
    max_shift_px: float = 0.5,
    max_rotation_deg: float = 0.1,
    progress: bool = False,
) -> PairedSet:
    """Simulate pairs ``start .. start+n-1`` in memory.

    Returns
    -------
    PairedSet
        ``x``, ``y`` (and ``y2`` when ``second_y``) float32 ``(N, 3, size, size)`` in [0, 1] (the
        8-bit renderings / 255), ``masks`` uint8 ``(N, size, size)``, ``labels``, ``ids``.
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    sx, sy = load_system(x_system), load_system(y_system)
    xs, ys, y2s, ms, labels, ids = [], [], [], [], [], []
    for i in tqdm(range(start, start + n), desc="simulate", disable=not progress, unit="pair"):
        p = simulate_pair(
            i,
            size=size,
            seed=seed,
            x_system=sx,
            y_system=sy,
            classes=classes,
            second_y=second_y,
            max_shift_px=max_shift_px,
            max_rotation_deg=max_rotation_deg,
        )
        xs.append(p.x), ys.append(p.y), ms.append(p.mask), labels.append(p.label), ids.append(p.id)
        if second_y:
            y2s.append(p.y2)
    return PairedSet(
        x=_to_chw(xs),
        y=_to_chw(ys),
        labels=labels,
        ids=ids,
        masks=torch.from_numpy(np.stack(ms)),
        y2=_to_chw(y2s) if second_y else None,
    )


class SimulatedPairs(torch.utils.data.IterableDataset):
    """Stream simulated pairs (no disk). Each item is a dict with ``x``, ``y`` float32 ``(3, H, W)``
    in [0, 1], ``mask`` uint8 ``(H, W)``, ``label`` and ``id`` (and ``y2`` with ``second_y``).

    ``n=None`` streams forever. With a multi-worker ``DataLoader`` worker ``k`` of ``K`` produces
    items ``k, k+K, ...``; the items themselves do not depend on the worker count.
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        size: int = 256,
        seed: int = 0,
        x_system: str | System = DEFAULT_X,
        y_system: str | System = DEFAULT_Y,
        classes: Sequence[str] | None = None,
        second_y: bool = False,
        start: int = 0,
        max_shift_px: float = 0.5,
        max_rotation_deg: float = 0.1,
    ) -> None:
        super().__init__()
        self.n, self.start = n, start
        self.kw = dict(
            size=size,
            seed=seed,
            x_system=load_system(x_system),
            y_system=load_system(y_system),
            classes=_classes(classes),
            second_y=second_y,
            max_shift_px=max_shift_px,
            max_rotation_deg=max_rotation_deg,
        )

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("an endless SimulatedPairs has no length")
        return self.n

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        k, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start + k
        end = None if self.n is None else self.start + self.n
        while end is None or i < end:
            p = simulate_pair(i, **self.kw)
            item = {
                "x": _to_chw([p.x])[0],
                "y": _to_chw([p.y])[0],
                "mask": torch.from_numpy(p.mask),
                "label": p.label,
                "id": p.id,
            }
            if p.y2 is not None:
                item["y2"] = _to_chw([p.y2])[0]
            yield item
            i += nw


# -- writing to disk --------------------------------------------------------------------------------

_WORKER_KW: dict = {}


def _init_worker(kw: dict) -> None:
    torch.set_num_threads(1)
    _WORKER_KW.clear()
    _WORKER_KW.update(kw)


def _write_one(i: int) -> int:
    kw = dict(_WORKER_KW)
    root = Path(kw.pop("root"))
    p = simulate_pair(i, **kw)
    # fast zlib level: noisy renderings compress poorly anyway, and encoding dominated the write time
    write_image(root / "X" / p.label / f"{p.id}.png", p.x, compress_level=1)
    write_image(root / "Y" / p.label / f"{p.id}.png", p.y, compress_level=1)
    write_mask(root / "masks" / p.label / f"{p.id}.png", p.mask)
    return i


def write_paired_dataset(
    root: str | os.PathLike,
    n: int,
    *,
    size: int = 256,
    seed: int = 0,
    x_system: str | System = DEFAULT_X,
    y_system: str | System = DEFAULT_Y,
    classes: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    max_shift_px: float = 0.5,
    max_rotation_deg: float = 0.1,
    start: int = 0,
) -> Path:
    """Write ``n`` simulated pairs as ``ROOT/X|Y|masks/<class>/<id>.png`` plus ``ROOT/splits.csv``.

    The files are byte-identical for the same arguments whatever ``workers`` is; nothing is kept
    in memory (each worker renders and writes one pair at a time). Existing files are overwritten.
    The folder loads with :class:`cellbench.data.PairedFolder`.
    """
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if size < 32:
        raise ConfigError(f"--size must be at least 32, got {size}")
    root = Path(root)
    sx, sy = load_system(x_system), load_system(y_system)  # fail early on a bad system file
    cls_list = _classes(classes)
    root.mkdir(parents=True, exist_ok=True)
    kw = dict(
        root=str(root),
        size=size,
        seed=seed,
        x_system=sx,
        y_system=sy,
        classes=cls_list,
        max_shift_px=max_shift_px,
        max_rotation_deg=max_rotation_deg,
    )
    indices = range(start, start + n)
    bar = tqdm(total=n, desc=f"simulate -> {root}", unit="pair", disable=not progress)
    try:
        if workers <= 1:
            _init_worker(kw)
            for i in indices:
                _write_one(i)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(kw,)) as ex:
                for _ in ex.map(_write_one, indices, chunksize=8):
                    bar.update()
    finally:
        bar.close()
    keys = [(cls_list[i % len(cls_list)], item_id(seed, i)) for i in indices]
    write_splits(root / "splits.csv", stratified_split(keys, seed=seed))
    log.info("wrote %d pairs to %s", n, root)
    return root
