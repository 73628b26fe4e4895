"""Quality of the learned normalizers (quick preset) next to the classical ones on the simulated test set.

Data: the simulator's pairs of ``cellbench run-all --profile quick`` (seed 0, 800 pairs of 256x256,
80/10/10 by index): train = pairs 0..639, test = pairs 720..799. Metrics (cellbench.eval.image):
mean CIEDE2000 inside the WBC (mask labels 3-5), PSNR and SSIM over the whole image, averaged
over the test images. Also prints each method's fit time.

    .venv/bin/python benchmarks/nets_quality.py --methods affine,poly,hm,ccgan,pcnet \
        --classifier-dir DIR --out /tmp/nets_quality

Simulated pairs are cached in ``--cache`` (default /tmp/cellbench_sim), keyed by a hash of the simulator's
code and system files, so repeated runs are fast and a simulator change regenerates them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def simulator_fingerprint() -> str:
    """Hash of the simulator's code and system files, so a cache never outlives a simulator change."""
    import hashlib

    import cellbench.sim

    root = Path(cellbench.sim.__file__).parent
    h = hashlib.sha256()
    for p in sorted([*root.glob("*.py"), *root.glob("systems/*.toml")]):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:10]


def _simulate_chunk(args: tuple[int, int, int, int]) -> dict:
    from cellbench.sim import simulate_pairs

    n, start, seed, size = args
    torch.set_num_threads(1)
    return simulate_pairs(n, size=size, seed=seed, start=start).__dict__


def load_split(cache: Path, start: int, n: int, seed: int = 0, size: int = 256, workers: int = 1):
    """Pairs ``start .. start+n-1`` (each pair depends only on its index, so chunks in ``workers``
    processes give the same data as one process)."""
    from concurrent.futures import ProcessPoolExecutor

    from cellbench.data.sets import PairedSet
    from cellbench.sim import simulate_pairs

    f = cache / f"{'test' if start else 'train'}_{start}_{start + n}_{simulator_fingerprint()}.pt"
    if f.exists():
        return PairedSet(**torch.load(f, weights_only=True))
    if workers <= 1:
        data = simulate_pairs(n, size=size, seed=seed, start=start, progress=True)
    else:
        step = -(-n // workers)
        jobs = [(min(step, n - k), start + k, seed, size) for k in range(0, n, step)]
        with ProcessPoolExecutor(max_workers=workers) as ex:
            parts = list(ex.map(_simulate_chunk, jobs))
        data = PairedSet(
            x=torch.cat([p["x"] for p in parts]),
            y=torch.cat([p["y"] for p in parts]),
            labels=[v for p in parts for v in p["labels"]],
            ids=[v for p in parts for v in p["ids"]],
            masks=torch.cat([p["masks"] for p in parts]),
        )
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(data.__dict__, f)
    return data


def evaluate(norm, test) -> dict[str, float]:
    from cellbench.eval.image import image_metrics

    with torch.no_grad():
        pred = torch.cat([norm.transform(test.x[i : i + 16]) for i in range(0, len(test), 16)])
    m = image_metrics(pred, test.y, masks=test.masks)
    return {
        "ciede2000_wbc": float(np.nanmean(m["wbc"]["ciede2000_mean"])),
        "psnr": float(np.nanmean(m["image"]["psnr"])),
        "ssim": float(np.nanmean(m["image"]["ssim"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="identity,affine,poly,hm,ccgan,pcnet")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cellbench_sim"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/nets_quality"))
    ap.add_argument("--classifier-dir", default=None, help="pcnet: use the WBC classifier's features")
    ap.add_argument("--set", action="append", default=[], help="override for ccgan/pcnet: key=TOML value")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="processes that simulate missing pairs")
    ap.add_argument("--seed", type=int, default=0, help="training seed of the fitted methods")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import tomllib

    from cellbench.methods import create_normalizer
    from cellbench.presets import preset_names

    overrides = {k: tomllib.loads(f"v = {v}")["v"] for k, v in (s.split("=", 1) for s in args.set)}
    train = load_split(args.cache, 0, 640, workers=args.workers)
    test = load_split(args.cache, 720, 80, workers=args.workers)
    rows = []
    for method in args.methods.split(","):
        kw = {}
        if method in ("ccgan", "pcnet"):
            kw = dict(overrides)
            if method == "pcnet" and args.classifier_dir:
                kw.update(feature_net="classifier", classifier_dir=args.classifier_dir)
        preset = args.preset if args.preset in preset_names(method) else None
        norm = create_normalizer(method, preset, **kw)
        norm.bind_run_dir(args.out / method)
        t0 = time.perf_counter()
        norm.fit(train, seed=args.seed)
        fit_s = time.perf_counter() - t0
        row = {"method": method, "preset": preset, "seed": args.seed, "fit_seconds": round(fit_s, 1)}
        row.update(evaluate(norm, test))
        if method in ("ccgan", "pcnet"):
            norm.save(args.out / method)
            row["options"] = kw
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(f"\n{'method':<10} {'CIEDE2000 (WBC)':>16} {'PSNR dB':>8} {'SSIM':>7} {'fit s':>8}")
    for r in rows:
        print(
            f"{r['method']:<10} {r['ciede2000_wbc']:>16.3f} {r['psnr']:>8.2f} {r['ssim']:>7.4f} "
            f"{r['fit_seconds']:>8.1f}"
        )


if __name__ == "__main__":
    main()
