"""Does the simulator reproduce the morphology it was given? Measure simulated Y images the same way.

Renders ``--n`` dm96-like images per class (``simulate_pairs``, seed ``--seed``), measures them with
:func:`cellbench.sim.morphology.measure_images` (the code that measured the real PBC images for the
packaged parameters) and prints, per class and feature, the real mean (from the morphology file),
the simulated mean and their difference in units of the real between-image standard deviation
(``z``), and per class the mean absolute difference between the real and the simulated copula
correlations (the joint structure, :func:`cellbench.sim.morphology.copula`). The last lines are the
median ``|z|`` over all class-feature pairs and the mean copula difference over the classes.

``--radial DIR`` adds a check that needs no segmentation: per class, the median over images of the
mean CIELAB colour in rings around the image centre (8 px wide; PBC cells are centred), for the real
train split of the labelled folder ``DIR`` and for the simulated images. It shows what a
classifier sees at a glance, where the measurement's segmentation can be fooled (an erythroblast's
haemoglobinised cytoplasm labelled red cell, an ig cytoplasm dark enough to be called nucleus).

    .venv/bin/python benchmarks/sim_realism.py --n 24
    .venv/bin/python benchmarks/sim_realism.py --n 30 --radial ../shared/data/pbc_dm96
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from cellbench.data.classes import CLASSES
from cellbench.sim import simulate_pairs
from cellbench.sim.morphology import load_morphology, measure_images, summarize


def simulated_y(n: int, *, seed: int = 0, start: int = 0) -> dict[str, np.ndarray]:
    """``{class: uint8 (n, 256, 256, 3)}``: the dm96-like (Y) images of ``n`` simulated pairs per class
    (items ``start ..`` of :func:`cellbench.sim.simulate_pairs`, which cycles through the classes)."""
    data = simulate_pairs(n * len(CLASSES), size=256, seed=seed, start=start)
    y = (data.y.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    labels = np.array(data.labels)
    return {c: y[labels == c] for c in CLASSES}


def compare(n: int, *, seed: int = 0, morphology: str | None = None, start: int = 0) -> dict:
    real = load_morphology(morphology)["classes"]
    sim = summarize(measure_images(simulated_y(n, seed=seed, start=start)))
    out = {}
    for cls in CLASSES:
        rows = {}
        for feat, r in real.get(cls, {}).items():
            s = sim.get(cls, {}).get(feat)
            if isinstance(r, dict) and "mean" in r and isinstance(s, dict) and "mean" in s:
                z = (s["mean"] - r["mean"]) / max(r["sd"], 1e-9)
                rows[feat] = {"real": r["mean"], "sim": s["mean"], "z": z}
        rows["lobe_hist"] = {"real": real.get(cls, {}).get("lobe_hist"), "sim": sim.get(cls, {}).get("lobe_hist")}
        rc, sc = real.get(cls, {}).get("copula"), sim.get(cls, {}).get("copula")
        if rc and sc and rc["features"] == sc["features"]:
            rows["copula"] = {"features": rc["features"], "real": rc["corr"], "sim": sc["corr"]}
        out[cls] = rows
    return out


RING_PX = 8


def radial_profile(images: np.ndarray, *, rings: int = 12) -> np.ndarray:
    """Median over ``images`` (uint8 ``(N, H, W, 3)``) of the mean CIELAB per ring ``(rings, 3)``."""
    from skimage.color import rgb2lab

    h, w = images.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w]
    rr = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    sel = [(rr >= RING_PX * k) & (rr < RING_PX * (k + 1)) for k in range(rings)]
    prof = [np.stack([lab[m].mean(0) for m in sel]) for lab in (rgb2lab(im / 255.0) for im in images)]
    return np.median(np.stack(prof), 0)


def radial(real_dir: str, n: int, *, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{class: (real profile, simulated profile)}``: real train split (``n`` evenly spaced images per
    class, 256 px centre crops) against ``n`` simulated dm96-like images per class."""
    from cellbench.sim.morphology import load_folder_images

    real = load_folder_images(real_dir, n, 256, "train")
    sim = simulated_y(n, seed=seed)
    return {c: (radial_profile(real[c]), radial_profile(sim[c])) for c in CLASSES if c in real}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="simulated images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--morphology", default=None, help="morphology JSON (default: the packaged PBC file)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--radial", default=None, metavar="DIR",
                    help="also print real (DIR's train split) vs simulated radial colour profiles")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.radial:
        for cls, (r, s) in radial(args.radial, args.n, seed=args.seed).items():
            print(f"## {cls} radial L* a* b* every {RING_PX} px from the centre")
            for name, prof in (("real", r), ("sim", s)):
                print(f"  {name:4s} " + " ".join(f"{p[0]:3.0f},{p[1]:3.0f},{p[2]:4.0f}" for p in prof))
            print(f"  max |dL*| {np.abs(r[:, 0] - s[:, 0]).max():.1f}")
    res = compare(args.n, seed=args.seed, morphology=args.morphology)
    zs, cop_err = [], []
    for cls, rows in res.items():
        print(f"## {cls}")
        for feat, r in rows.items():
            if feat == "lobe_hist":
                print(f"  lobes real {r['real']} sim {r['sim']}")
                continue
            if feat == "copula":  # the joint structure: off-diagonal normal-score correlations
                rr, ss = np.array(r["real"]), np.array(r["sim"])
                off = ~np.eye(len(rr), dtype=bool)
                cop_err.append(np.abs(rr - ss)[off].mean())
                print(f"  copula: mean |r_real - r_sim| {cop_err[-1]:.2f} over {int(off.sum()) // 2} pairs "
                      f"(mean |r_real| {np.abs(rr[off]).mean():.2f})")
                continue
            zs.append(abs(r["z"]))
            print(f"  {feat:18s} real {r['real']:10.3f} sim {r['sim']:10.3f} z {r['z']:+6.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    print(f"simulated vs real morphology ({args.n} images per class): median |z| {np.median(zs):.2f} "
          f"over {len(zs)} class-feature pairs; |z| > 1 in {int((np.array(zs) > 1).sum())}")
    if cop_err:
        print(f"joint structure: mean |r_real - r_sim| of the copula correlations {np.mean(cop_err):.2f} "
              f"over {len(cop_err)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
