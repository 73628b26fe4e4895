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
basophils), then one summary line with the targets (docs/simulator.md); exits 1 when a
target is missed.

    .venv/bin/python benchmarks/sim_difficulty.py --n 500
"""

from __future__ import annotations

import argparse
import json
import sys
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


#: Column of the results table per row name (also the keys of :func:`difficulty`).
ROWS = {
    "identity": "(a) identity",
    "affine": "(b) global affine",
    "poly": "(c) global poly-3",
    "oracle": "(d) per-region affine (GT masks, oracle per pair)",
    "trained": "(d') per class+region affine (GT masks, trained)",
    "floor": "(e) second Y rendering (floor)",
}

#: The simulator's difficulty targets (docs/simulator.md): the X -> Y problem is hard for raw X,
#: not solved by a global colour map, partly region-dependent, and above the noise floor.
MIN_IDENTITY = 6.0
MIN_POLY = 2.0
MIN_POLY_GRANULES = 3.0


def difficulty(
    n: int,
    *,
    size: int = 256,
    seed: int = 0,
    x_system="dm1200-like",
    y_system="dm96-like",
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Mean CIEDE2000 to Y, per row of :data:`ROWS` and column (``overall``, classes, granules)."""
    kw = {"size": size, "seed": seed, "x_system": x_system, "y_system": y_system, "progress": progress}
    test = simulate_pairs(n, second_y=True, **kw)
    train = simulate_pairs(n, start=1_000_000, **kw)
    preds = {
        "identity": test.x,
        "affine": create_normalizer("affine").fit(train, seed=0).transform(test.x),
        "poly": create_normalizer("poly").fit(train, seed=0).transform(test.x),
        "oracle": per_region_affine_oracle(test),
        "trained": per_region_affine_trained(train, test),
        "floor": test.y2,
    }
    wbc = torch.isin(test.masks, torch.tensor(WBC_LABELS, dtype=torch.uint8))
    labels = np.array(test.labels)
    results = {}
    for key, pred in preds.items():
        row = {"overall": float(delta_e(pred, test.y, wbc).mean())}
        for cls in CLASSES:
            idx = torch.from_numpy(np.nonzero(labels == cls)[0])
            sel = wbc[idx]
            if sel.any():
                row[cls] = float(delta_e(pred[idx], test.y[idx], sel).mean())
        for cls in ("eosinophil", "basophil"):
            idx = torch.from_numpy(np.nonzero(labels == cls)[0])
            sel = test.masks[idx] == GRANULES
            if sel.any():
                row[f"{cls} granules"] = float(delta_e(pred[idx], test.y[idx], sel).mean())
        results[key] = row
    return results


def target_failures(results: dict[str, dict[str, float]], *, granules: bool = True) -> list[str]:
    """The difficulty targets that ``results`` (from :func:`difficulty`) miss; empty when all hold."""
    o = {k: v["overall"] for k, v in results.items()}
    fails = []
    if not o["identity"] >= MIN_IDENTITY:
        fails.append(f"(a) identity {o['identity']:.2f} < {MIN_IDENTITY}: X and Y are too alike")
    if not o["poly"] >= MIN_POLY:
        fails.append(f"(c) poly-3 {o['poly']:.2f} < {MIN_POLY}: a global colour map solves the problem")
    if not o["oracle"] < o["poly"]:
        fails.append(f"(d) per-region oracle {o['oracle']:.2f} >= (c) poly-3 {o['poly']:.2f}: nothing region-dependent")
    if not o["floor"] < o["oracle"]:
        fails.append(f"(e) second rendering {o['floor']:.2f} >= (d) oracle {o['oracle']:.2f}: noise hides the problem")
    if granules:
        for cls in ("eosinophil", "basophil"):
            v = results["poly"].get(f"{cls} granules")
            if v is not None and not v >= MIN_POLY_GRANULES:
                fails.append(f"(c) poly-3 in {cls} granules {v:.2f} < {MIN_POLY_GRANULES}")
    return fails


def summary_line(results: dict[str, dict[str, float]], *, granules: bool = True) -> str:
    """One line: the README's figures (identity / affine / poly / oracle / floor; granules) and the verdict."""
    o = {k: v["overall"] for k, v in results.items()}
    fails = target_failures(results, granules=granules)
    line = (
        "difficulty, mean CIEDE2000 in the WBC: identity / affine / poly-3 / per-region affine (oracle) / "
        f"second Y rendering = {o['identity']:.1f} / {o['affine']:.1f} / {o['poly']:.1f} / {o['oracle']:.1f} / "
        f"{o['floor']:.1f}; poly-3 in eosinophil / basophil granules = "
        f"{results['poly'].get('eosinophil granules', float('nan')):.1f} / "
        f"{results['poly'].get('basophil granules', float('nan')):.1f}; "
        f"targets (a) >= {MIN_IDENTITY:g}, (c) >= {MIN_POLY:g}, (d) < (c), (e) < (d)"
        + (f", granules >= {MIN_POLY_GRANULES:g}" if granules else "")
    )
    return line + (": PASS" if not fails else ": FAIL (" + "; ".join(fails) + ")")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--x-system", default="dm1200-like")
    ap.add_argument("--y-system", default="dm96-like")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    results = difficulty(args.n, size=args.size, seed=args.seed, x_system=args.x_system,
                         y_system=args.y_system, progress=True)
    print(f"simulated {2 * args.n} pairs and fitted the maps in {time.time() - t0:.0f} s")
    cols = ["overall", "eosinophil granules", "basophil granules"] + [
        c for c in CLASSES if c in results["identity"]
    ]
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for key, row in results.items():
        print(f"| {ROWS[key]} | " + " | ".join(f"{row.get(c, float('nan')):.2f}" for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({ROWS[k]: v for k, v in results.items()}, fh, indent=1)
    print(summary_line(results))
    return 1 if target_failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
