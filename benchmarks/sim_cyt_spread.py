"""Between-cell spread of cytoplasm colour, real vs simulated, and the ``cyt_factor_sd`` that closes it.

The simulator draws each white cell's cytoplasm composition along :data:`cellbench.sim.scene.CYT_FACTORS`
(amount, eosinophilia) with the class's sigmas ``cyt_factor_sd`` (the morphology file's ``derived``
section). This script measures what they must be:

1. the per-image mean CIELAB of the cytoplasm (pixels a :class:`~cellbench.segmentation.ColourSegmenter`
   fitted on the real images labels cytoplasm; at least 200 of them) of ``--n-real`` real train-split
   images per class of the labelled folder, and of ``--n`` simulated Y images per class (seed 0), the
   latter once without the factors and once with the packaged ones;
2. per class, the robust between-cell spread (IQR / 1.349) of L*, a*, b*;
3. the Jacobian of the simulated per-image means along each factor (the same scenes rendered with the
   class's cytoplasm stain moved by ``exp(0.15 f)``, the same segmentation labels), and the
   non-negative least-squares sigmas whose variance ``sum_k (J_k sigma_k)^2`` closes the excess of the
   real over the factor-free simulated variance.

It prints, per class, the three spreads (real, simulated without, simulated with the packaged sigmas) and
the fitted sigmas, and ``--json`` writes them. Basophils and eosinophils are reported but not fitted: their granules
cover the cytoplasm, so what the segmentation calls cytoplasm is mostly granules.

    .venv/bin/python benchmarks/sim_cyt_spread.py ../shared/data/pbc_dm96 --n 40
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls
from skimage.color import rgb2lab

from cellbench.data.classes import CLASSES
from cellbench.data.masks import CYTOPLASM
from cellbench.sim import scene
from cellbench.sim.calibrate import _to_t, fit_segmenter
from cellbench.sim.morphology import CYT_FACTOR_NAMES, load_folder_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_realism import simulated_y  # noqa: E402 - the sibling benchmark's renderer

WBC = [c for c in CLASSES if c != "platelet"]
NOT_FITTED = ("basophil", "eosinophil")
DELTA = 0.15
MIN_PIXELS = 200


def _render(n: int) -> dict[str, np.ndarray]:
    return {c: v for c, v in simulated_y(n, seed=0).items() if c in WBC}


def _labels(seg, imgs: np.ndarray) -> np.ndarray:
    return seg.predict(_to_t(imgs)).numpy()


def _cyt_means(imgs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.full((len(imgs), 3), np.nan)
    for i, (im, lb) in enumerate(zip(imgs, labels, strict=True)):
        sel = lb == CYTOPLASM
        if sel.sum() >= MIN_PIXELS:
            out[i] = rgb2lab(im / 255.0)[sel].mean(0)
    return out


def robust_sd(v: np.ndarray) -> np.ndarray:
    """IQR / 1.349 per column over the finite rows (the sd of a normal; robust to failed segmentations)."""
    v = v[np.isfinite(v).all(1)]
    q25, q75 = np.percentile(v, [25, 75], axis=0)
    return (q75 - q25) / 1.349


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("real", help="labelled folder FOLDER/<class>/<image> (its train split is used)")
    ap.add_argument("--n", type=int, default=40, help="simulated images per class")
    ap.add_argument("--n-real", type=int, default=100, help="real train-split images per class")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)

    real = load_folder_images(args.real, args.n_real, 256, "train", 0)
    seg = fit_segmenter(real, seed=0)
    morph = scene._default_morphology()  # the packaged file, cached: edited in place below
    derived = morph["derived"]["classes"]
    packaged = {c: derived.get(c, {}).get("cyt_factor_sd") for c in WBC}

    with_f = _render(args.n)
    for c in WBC:
        derived.setdefault(c, {}).pop("cyt_factor_sd", None)
    base = _render(args.n)
    lbl = {c: _labels(seg, base[c]) for c in WBC}
    m0 = {c: _cyt_means(base[c], lbl[c]) for c in WBC}
    jac = {c: [] for c in WBC}
    stains = {c: scene._CLASS[c]["cyt"].copy() for c in WBC}
    try:
        for f in scene.CYT_FACTORS:
            for c in WBC:
                scene._CLASS[c]["cyt"] = (stains[c] * np.exp(DELTA * f)).astype(np.float32)
            moved = _render(args.n)
            for c in WBC:
                jac[c].append(np.nanmedian((_cyt_means(moved[c], lbl[c]) - m0[c]) / DELTA, axis=0))
    finally:
        for c in WBC:
            scene._CLASS[c]["cyt"] = stains[c]

    out = {}
    print(f"robust between-cell sd of the cytoplasm's mean L*, a*, b* ({args.n_real} real / {args.n} simulated "
          f"per class); sigmas along {', '.join(CYT_FACTOR_NAMES)}")
    for c in WBC:
        r = robust_sd(_cyt_means(real[c], _labels(seg, real[c])))
        s0 = robust_sd(m0[c])
        s1 = robust_sd(_cyt_means(with_f[c], _labels(seg, with_f[c])))
        a = np.array(jac[c]).T ** 2  # (Lab, factors)
        fit = None
        if c not in NOT_FITTED:
            x, _ = nnls(a, np.maximum(r**2 - s0**2, 0.0))
            fit = np.sqrt(x).round(2).tolist()
        out[c] = {"real": r.round(2).tolist(), "sim_without": s0.round(2).tolist(),
                  "sim_packaged": s1.round(2).tolist(), "jacobian": np.round(jac[c], 2).tolist(),
                  "fitted_sigmas": fit, "packaged_sigmas": packaged[c]}
        print(f"{c:13s} real {r.round(2)}  sim without {s0.round(2)}  with packaged {s1.round(2)}  "
              f"fitted {fit}  packaged {packaged[c]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
