"""Calibration: compare the colours of simulated and real images of one system, per class and region.

Both image sets are segmented into background, red cells, WBC cytoplasm and WBC nucleus by
:class:`cellbench.segmentation.ColourSegmenter` (an unsupervised optical-density segmentation,
fitted separately on the real and on the simulated images, so that each set is cut by thresholds
learned from itself). For each class and region the mean CIELAB colour (D65, sRGB input,
``skimage.color.rgb2lab``) of all its pixels is computed for both sets, and their CIEDE2000
difference (``skimage.color.deltaE_ciede2000``) reported.

The simulator's calibration targets (:data:`TARGETS`, docs/simulator.md) bound the worst class of
each region: background <= 5, WBC nucleus and cytoplasm <= 10 CIEDE2000. :func:`target_failures`
lists the misses and :func:`summary_line` gives the one line the README quotes; ``cellbench simulate
calibrate`` prints it and exits 1 when a target is missed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from skimage.color import deltaE_ciede2000, rgb2lab

from ..data.classes import CLASSES
from ..data.folders import index_labelled
from ..data.masks import BACKGROUND, CYTOPLASM, NUCLEUS, RED_CELL
from ..errors import ConfigError, DatasetError
from ..io import read_image
from ..tensors import center_crop_or_pad
from .scene import make_scene
from .system import System, load_system, render

REGION_NAMES = {BACKGROUND: "background", RED_CELL: "red_cell", NUCLEUS: "nucleus", CYTOPLASM: "cytoplasm"}

#: Largest CIEDE2000 between the real and simulated mean colour of any class, per region.
TARGETS = {"background": 5.0, "nucleus": 10.0, "cytoplasm": 10.0}


def real_images(root: str | os.PathLike, n_per_class: int, size: int = 256) -> dict[str, np.ndarray]:
    """Up to ``n_per_class`` real images per class (evenly spaced in file order), uint8 ``(n, S, S, 3)``."""
    items, _ = index_labelled(Path(root), write_split=False)
    out: dict[str, np.ndarray] = {}
    for cls in CLASSES:
        its = [it for it in items if it.cls == cls]
        if not its:
            continue
        pick = np.linspace(0, len(its) - 1, min(n_per_class, len(its))).round().astype(int)
        out[cls] = np.stack([center_crop_or_pad(read_image(its[i].path), size) for i in pick])
    if not out:
        raise DatasetError(f"{root}: no images of the known classes")
    return out


def simulated_images(
    system: System | str,
    classes,
    n_per_class: int,
    size: int = 256,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Renderings (with noise and optics) of ``n_per_class`` fresh scenes per class."""
    sys_ = load_system(system)
    out = {}
    for ci, cls in enumerate(classes):
        imgs = []
        for i in range(n_per_class):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ci, i)))
            sc = make_scene(cls, rng, size)
            imgs.append(render(sys_, sc.parts, sc.depths_um, rng=rng))
        out[cls] = np.stack(imgs)
    return out


def _to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0


def fit_segmenter(images: dict[str, np.ndarray], *, seed: int = 0):
    """A :class:`cellbench.segmentation.ColourSegmenter` fitted on all of ``{class: uint8 images}``."""
    from ..segmentation import ColourSegmenter

    return ColourSegmenter().fit(_to_t(np.concatenate(list(images.values()))), seed=seed)


def region_means(
    images: dict[str, np.ndarray], *, seed: int = 0, seg=None
) -> dict[tuple[str, int], tuple[np.ndarray, int]]:
    """Mean CIELAB ``(3,)`` and pixel count per ``(class, region)``; regions from ``seg`` (default: a
    segmenter fitted on all the images, :func:`fit_segmenter`)."""
    seg = fit_segmenter(images, seed=seed) if seg is None else seg
    out = {}
    for cls, imgs in images.items():
        labels = seg.predict(_to_t(imgs)).numpy()
        lab = rgb2lab(imgs.astype(np.float64) / 255.0)
        for reg in REGION_NAMES:
            sel = labels == reg
            if cls == "platelet" and reg in (NUCLEUS, CYTOPLASM):
                continue  # no white cell: what the segmenter calls nucleus is the platelet
            n = int(sel.sum())
            if n:
                out[(cls, reg)] = (lab[sel].mean(0), n)
    return out


def calibration_table(
    real: str | os.PathLike,
    *,
    system: System | str = "dm96-like",
    n_per_class: int = 40,
    size: int = 256,
    seed: int = 0,
) -> list[dict]:
    """Rows ``{class, region, L/a/b real, L/a/b sim, delta_e00, n_real, n_sim}`` per class and region."""
    if int(n_per_class) < 1:
        raise ConfigError(f"n_per_class={n_per_class}: must be at least 1 image per class")
    r_img = real_images(real, n_per_class, size)
    s_img = simulated_images(system, list(r_img), n_per_class, size, seed)
    rm, sm = region_means(r_img, seed=seed), region_means(s_img, seed=seed)
    rows = []
    for cls in r_img:
        for reg, name in REGION_NAMES.items():
            if (cls, reg) not in rm or (cls, reg) not in sm:
                continue
            a, na = rm[(cls, reg)]
            b, nb = sm[(cls, reg)]
            de = float(deltaE_ciede2000(a[None], b[None])[0])
            rows.append(
                {
                    "class": cls,
                    "region": name,
                    "L_real": a[0],
                    "a_real": a[1],
                    "b_real": a[2],
                    "L_sim": b[0],
                    "a_sim": b[1],
                    "b_sim": b[2],
                    "delta_e00": de,
                    "n_real": na,
                    "n_sim": nb,
                }
            )
    for r in rows:
        for k, v in r.items():
            if isinstance(v, np.floating):
                r[k] = float(v)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`calibration_table` rows."""
    lines = ["| class | region | real L* a* b* | simulated L* a* b* | ΔE00 |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['class']} | {r['region']} | {r['L_real']:.1f} {r['a_real']:.1f} {r['b_real']:.1f} "
            f"| {r['L_sim']:.1f} {r['a_sim']:.1f} {r['b_sim']:.1f} | {r['delta_e00']:.1f} |"
        )
    return "\n".join(lines)


def worst_per_region(rows: list[dict]) -> dict[str, dict]:
    """The row with the largest ``delta_e00`` per region of :data:`TARGETS` (regions without rows omitted)."""
    out: dict[str, dict] = {}
    for r in rows:
        reg = r["region"]
        if reg in TARGETS and (reg not in out or r["delta_e00"] > out[reg]["delta_e00"]):
            out[reg] = r
    return out


def target_failures(rows: list[dict]) -> list[str]:
    """The calibration targets the rows miss (a region with no row at all counts as a miss)."""
    worst = worst_per_region(rows)
    fails = []
    for reg, limit in TARGETS.items():
        if reg not in worst:
            fails.append(f"{reg}: no class has this region in both image sets")
        elif not worst[reg]["delta_e00"] <= limit:
            w = worst[reg]
            fails.append(f"{reg}: {w['delta_e00']:.1f} > {limit:g} ({w['class']})")
    return fails


def summary_line(rows: list[dict]) -> str:
    """``worst class: background 1.4 (lymphocyte), nucleus 3.1 (...), cytoplasm 6.3 (...) ΔE00; targets ...: PASS``."""
    worst = worst_per_region(rows)
    parts = [f"{reg} {worst[reg]['delta_e00']:.1f} ({worst[reg]['class']})" for reg in TARGETS if reg in worst]
    fails = target_failures(rows)
    line = (
        "worst class: " + ", ".join(parts) + " ΔE00; targets "
        + " / ".join(f"{reg} <= {lim:g}" for reg, lim in TARGETS.items())
    )
    return line + (": PASS" if not fails else ": FAIL (" + "; ".join(fails) + ")")
