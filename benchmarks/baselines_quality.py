"""Quality of the classical baselines on simulated pairs: CIEDE2000 against Y inside the WBC.

Fits every closed-form method (identity, affine, poly, hm [rgb and od], hm unpaired, histmatch,
reinhard, macenko) on simulated training pairs of the default systems, transforms the test pairs
and reports the mean and 95th percentile of per-pixel CIEDE2000 between the output and Y inside
the white cell (mask labels 3, 4, 5), overall and per cell type. Writes a Markdown table, a JSON
file of rows and a PNG comparing HM fitted in RGB and in optical density.

Example (the issue's setting; slow on 2 shared cores, the simulator dominates)::

    .venv/bin/python benchmarks/baselines_quality.py --n-train 500 --n-test 500 --size 256 --out reports/baselines
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from skimage.color import deltaE_ciede2000, rgb2lab

from cellbench.data.masks import WBC_LABELS
from cellbench.data.sets import as_unpaired
from cellbench.methods import create_normalizer
from cellbench.sim import simulate_pairs

METHODS = [("identity", {}), ("affine", {}), ("poly", {}), ("histmatch", {}), ("reinhard", {}),
           ("macenko", {}), ("hm", {"space": "rgb"}), ("hm", {"space": "od"})]


def wbc_delta_e(out: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> list[np.ndarray]:
    """Per image: CIEDE2000 of the WBC pixels (1-D arrays)."""
    res = []
    for i in range(len(out)):
        sel = np.isin(masks[i].numpy(), WBC_LABELS)
        a = rgb2lab(out[i].permute(1, 2, 0).numpy()[sel][None])
        b = rgb2lab(y[i].permute(1, 2, 0).numpy()[sel][None])
        res.append(deltaE_ciede2000(a, b)[0])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("reports/baselines"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train = simulate_pairs(args.n_train, size=args.size, seed=args.seed, progress=True)
    test = simulate_pairs(args.n_test, size=args.size, seed=args.seed, start=args.n_train, progress=True)
    print(f"simulated {args.n_train}+{args.n_test} pairs at {args.size}px in {time.time() - t0:.0f}s")
    rows, outputs = [], {}
    variants = METHODS + [("hm", {"space": "rgb", "mode": "unpaired"})]
    for name, kw in variants:
        key = name + "".join(f"[{v}]" for v in kw.values())
        t = time.time()
        norm = create_normalizer(name, **kw)
        data = as_unpaired(train) if kw.get("mode") == "unpaired" else train
        norm.fit(data, seed=args.seed)
        fit_s = time.time() - t
        t = time.time()
        out = torch.cat([norm.transform(test.x[s:s + 64]) for s in range(0, len(test), 64)])
        tr_s = time.time() - t
        outputs[key] = out
        de = wbc_delta_e(out, test.y, test.masks)
        groups = {"all": list(range(len(test)))}
        for i, lab in enumerate(test.labels):
            groups.setdefault(lab, []).append(i)
        for g, idx in groups.items():
            v = np.concatenate([de[i] for i in idx]) if idx else np.zeros(0)
            if v.size:
                rows.append({"method": key, "cell_type": g, "mean": float(v.mean()),
                             "p95": float(np.percentile(v, 95)), "n_images": len(idx), "n_pixels": int(v.size),
                             "fit_s": fit_s, "transform_s": tr_s})
        allrow = next(r for r in rows if r["method"] == key and r["cell_type"] == "all")
        print(f"{key:22s} WBC dE00 mean {allrow['mean']:.2f}  fit {fit_s:.1f}s  transform {tr_s:.1f}s")
    (args.out / "baselines_quality.json").write_text(json.dumps(rows, indent=1))
    types = sorted({r["cell_type"] for r in rows} - {"all"})
    lines = ["| method | all: mean | all: p95 | " + " | ".join(types) + " |",
             "|---|---|---|" + "---|" * len(types)]
    for key in dict.fromkeys(r["method"] for r in rows):
        by = {r["cell_type"]: r for r in rows if r["method"] == key}
        lines.append(f"| {key} | {by['all']['mean']:.2f} | {by['all']['p95']:.2f} | "
                     + " | ".join(f"{by[t]['mean']:.2f}" if t in by else "-" for t in types) + " |")
    table = "\n".join(lines)
    (args.out / "baselines_quality.md").write_text(table + "\n")
    print(table)
    figure(test, outputs, args.out / "hm_space_choice.png", rows)


def figure(test, outputs, path: Path, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["identity", "affine", "poly", "hm[rgb]", "hm[od]"]
    idx = list(range(min(4, len(test))))
    fig, ax = plt.subplots(len(idx) + 1, len(keys) + 1, figsize=(2.2 * (len(keys) + 1), 2.2 * (len(idx) + 1)))
    for r, i in enumerate(idx):
        ax[r, 0].imshow(test.y[i].permute(1, 2, 0).numpy())
        ax[r, 0].set_title(f"Y ({test.labels[i]})", fontsize=8)
        for c, k in enumerate(keys):
            ax[r, c + 1].imshow(outputs[k][i].permute(1, 2, 0).numpy())
            ax[r, c + 1].set_title(k, fontsize=8)
    for a in ax[:-1].ravel():
        a.axis("off")
    for a in ax[-1].ravel():
        a.axis("off")
    bar = fig.add_subplot(len(idx) + 1, 1, len(idx) + 1)
    means = {r["method"]: r["mean"] for r in rows if r["cell_type"] == "all"}
    ks = list(means)
    bar.bar(range(len(ks)), [means[k] for k in ks], color=["C3" if k.startswith("hm") else "C0" for k in ks])
    bar.set_xticks(range(len(ks)), ks, fontsize=7, rotation=20)
    bar.set_ylabel("WBC mean ΔE00 vs Y")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
