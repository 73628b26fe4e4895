"""How hard is the simulated X -> Y problem? Mean CIEDE2000 inside the white cell (mask 3-5).

On ``--n`` test pairs of the default systems (dm1200-like X, dm96-like Y), compares against the Y
image:

(a) identity (raw X);
(b) the best global 3x4 affine colour map (``create_normalizer("affine")``);
(c) the best global 3rd-order polynomial colour map (``create_normalizer("poly")``), both fitted
    on ``--n`` other pairs;
(d) a per-region affine map using the ground-truth masks: one 3x4 least-squares map per mask label
    of each test pair, fitted on that pair itself (an oracle: the best any region-wise colour map
    can do, which isolates what is region-dependent colour from what is spatial);
(d') the same per class and mask label, fitted on the training pairs (a realistic version);
(e) a second rendering of the same Y scene (new noise and misregistration): the floor.

Prints a Markdown table (overall, per class, and inside the granules of eosinophils and
basophils).

    .venv/bin/python benchmarks/sim_difficulty.py --n 500
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from skimage.color import deltaE_ciede2000, rgb2lab

from cellbench.data.classes import CLASSES
from cellbench.data.masks import GRANULES, LABELS, WBC_LABELS
from cellbench.methods import create_normalizer
from cellbench.sim import simulate_pairs


def _affine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return torch.linalg.lstsq(design, y, driver="gelsd").solution  # (4, 3)


def _apply(m: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    return torch.cat([px, torch.ones(len(px), 1, dtype=px.dtype)], 1) @ m


def per_region_affine_oracle(test) -> torch.Tensor:
    """(d): per test pair and mask label, the least-squares 3x4 map from its X to its Y pixels."""
    out = test.x.permute(0, 2, 3, 1).clone().double()
    for i in range(len(test)):
        x = test.x[i].permute(1, 2, 0).double()
        y = test.y[i].permute(1, 2, 0).double()
        for lab in LABELS:
            sel = test.masks[i] == lab
            if sel.sum() >= 20:
                out[i][sel] = _apply(_affine(x[sel], y[sel]), x[sel])
    return out.permute(0, 3, 1, 2).float().clamp(0, 1)


def per_region_affine_trained(train, test) -> torch.Tensor:
    """(d'): one 3x4 map per (class, mask label) fitted on the training pairs."""
    out = test.x.permute(0, 2, 3, 1).clone()
    tr_lab, te_lab = np.array(train.labels), np.array(test.labels)
    for cls in np.unique(te_lab):
        tri = torch.from_numpy(np.nonzero(tr_lab == cls)[0])
        tei = torch.from_numpy(np.nonzero(te_lab == cls)[0])
        xs, ys, ms = train.x[tri].permute(0, 2, 3, 1), train.y[tri].permute(0, 2, 3, 1), train.masks[tri]
        for lab in LABELS:
            sel = ms == lab
            tsel = test.masks[tei] == lab
            if sel.sum() < 100 or not tsel.any():
                continue
            m = _affine(xs[sel].double(), ys[sel].double()).float()
            o = out[tei]
            o[tsel] = _apply(m, o[tsel])
            out[tei] = o
    return out.permute(0, 3, 1, 2).clamp(0, 1)


def delta_e(pred: torch.Tensor, ref: torch.Tensor, select: torch.Tensor) -> np.ndarray:
    """CIEDE2000 ``(P,)`` between pred and ref (N,3,H,W) at the selected pixels (N,H,W)."""
    a = pred.permute(0, 2, 3, 1)[select].clamp(0, 1).double().numpy()
    b = ref.permute(0, 2, 3, 1)[select].double().numpy()
    return deltaE_ciede2000(rgb2lab(a[None]), rgb2lab(b[None]))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    test = simulate_pairs(args.n, size=args.size, seed=args.seed, second_y=True, progress=True)
    train = simulate_pairs(args.n, size=args.size, seed=args.seed, start=1_000_000, progress=True)
    print(f"simulated {2 * args.n} pairs in {time.time() - t0:.0f} s")
    preds = {
        "(a) identity": test.x,
        "(b) global affine": create_normalizer("affine").fit(train, seed=0).transform(test.x),
        "(c) global poly-3": create_normalizer("poly").fit(train, seed=0).transform(test.x),
        "(d) per-region affine (GT masks, oracle per pair)": per_region_affine_oracle(test),
        "(d') per class+region affine (GT masks, trained)": per_region_affine_trained(train, test),
        "(e) second Y rendering (floor)": test.y2,
    }
    wbc = torch.isin(test.masks, torch.tensor(WBC_LABELS, dtype=torch.uint8))
    labels = np.array(test.labels)
    results = {}
    for name, pred in preds.items():
        row = {"overall": float(delta_e(pred, test.y, wbc).mean())}
        for cls in CLASSES:
            idx = torch.from_numpy(np.nonzero(labels == cls)[0])
            sel = wbc[idx]
            if sel.any():
                row[cls] = float(delta_e(pred[idx], test.y[idx], sel).mean())
        for cls in ("eosinophil", "basophil"):
            idx = torch.from_numpy(np.nonzero(labels == cls)[0])
            sel = test.masks[idx] == GRANULES
            row[f"{cls} granules"] = float(delta_e(pred[idx], test.y[idx], sel).mean())
        results[name] = row
    cols = ["overall", "eosinophil granules", "basophil granules"] + [
        c for c in CLASSES if c in results["(a) identity"]
    ]
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.2f}" for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
