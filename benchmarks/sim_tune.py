"""Tune the scene stains so that dm96-like renderings match real DM96 (PBC) colours.

For every class and region (red cell, nucleus, cytoplasm) the mean absorber amounts of the real
and of the simulated images are estimated with the same inverse model
(:func:`cellbench.sim.resim.estimate_amounts`, dm96-like), on regions from
:class:`cellbench.segmentation.ColourSegmenter`; the scene's stain vectors are moved by the
difference (damped), a few rounds. Prints the new stain table to paste into
``cellbench/sim/scene.py``.

    .venv/bin/python benchmarks/sim_tune.py --real ../shared/data/pbc_dm96 --rounds 3 --n 12
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cellbench.data.masks import CYTOPLASM, NUCLEUS, RED_CELL
from cellbench.segmentation import ColourSegmenter
from cellbench.sim import scene
from cellbench.sim.calibrate import _to_t, real_images, simulated_images
from cellbench.sim.resim import estimate_amounts


def region_amounts(images: dict[str, np.ndarray], seed: int = 0) -> dict:
    seg = ColourSegmenter().fit(_to_t(np.concatenate(list(images.values()))), seed=seed)
    out = {}
    for cls, imgs in images.items():
        labels = seg.predict(_to_t(imgs)).numpy()
        amounts = estimate_amounts(imgs, "dm96-like")
        for reg in (RED_CELL, NUCLEUS, CYTOPLASM):
            sel = labels == reg
            if sel.sum() > 50:
                out[(cls, reg)] = amounts[sel].mean(0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--gain", type=float, default=0.8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    real = real_images(args.real, args.n)
    target = region_amounts(real)
    for rnd in range(args.rounds):
        sim = region_amounts(simulated_images("dm96-like", list(real), args.n, seed=100 + rnd))
        rbc = []
        for cls in real:
            if (cls, RED_CELL) in target and (cls, RED_CELL) in sim:
                rbc.append(target[(cls, RED_CELL)] - sim[(cls, RED_CELL)])
            if cls == "platelet":
                continue
            p = scene._CLASS[cls]
            for reg, key in ((NUCLEUS, "nuc"), (CYTOPLASM, "cyt")):
                if (cls, reg) in target and (cls, reg) in sim:
                    delta = target[(cls, reg)] - sim[(cls, reg)]
                    p[key] = np.maximum(p[key] + args.gain * delta, 0).astype(np.float32)
                    print(f"round {rnd} {cls:12s} {key}: |delta| {np.abs(delta).sum():.3f}")
        d = np.mean(rbc, axis=0) / 0.8  # mean red-cell thickness factor in the region ~0.8
        scene.STAINS["red_cell"] = np.maximum(scene.STAINS["red_cell"] + args.gain * d, 0).astype(np.float32)
        print(f"round {rnd} red cell |delta| {np.abs(d).sum():.3f}")
    names = ("eo", "mb", "azb", "aze", "hb")
    fmt = lambda v: "_c(" + ", ".join(f"{n}={x:.3f}" for n, x in zip(names, v, strict=True) if x > 0) + ")"  # noqa: E731
    print('"red_cell":', fmt(scene.STAINS["red_cell"]))
    for cls, p in scene._CLASS.items():
        print(cls, "cyt=", fmt(p["cyt"]), "nuc=", fmt(p["nuc"]))


if __name__ == "__main__":
    main()
