"""Every CPU inference engine of the U-Net generator, side by side on the same weights: medians and ratios.

Times ``build_engine(generator, name)`` for each engine of :mod:`cellbench.nets.engines` at the
given batch sizes (256x256, random weights: speed does not depend on them), interleaving the
engines round by round so a change of machine load hits all of them alike, and prints the median
time per call, images/s, the ratio to eager, the max difference to eager (fp32 engines must stay
within 1e-3) and the CPU time / wall time. Targets (issue #17, quiet machine, 2 cores): paper
preset at batch 1 >= 3x faster than eager (<= 56 ms), quick preset >= 2x.

Full measurement (a quiet machine; several minutes: the paper generator costs 41.6 GFLOP per image)::

    .venv/bin/python benchmarks/engines_speed.py --preset paper --batch-sizes 1 --rounds 20
    .venv/bin/python benchmarks/engines_speed.py --preset quick --batch-sizes 1,16 --rounds 20

Smoke run (seconds)::

    .venv/bin/python benchmarks/engines_speed.py --preset quick --size 64 --rounds 2 --engines eager,folded,bf16
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from cellbench.methods import create_normalizer
from cellbench.nets.engines import ENGINES, build_engine, engine_available


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="ccgan", help="ccgan or pcnet (same generator architecture)")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    norm = create_normalizer(args.method, args.preset, device="cpu")
    gen = norm.G_xy.eval()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(8, 3, args.size, args.size, generator=g)
    engines = {}
    for name in args.engines.split(","):
        reason = engine_available(name)
        if reason:
            print(f"skipping {name}: {reason}")
            continue
        t0 = time.perf_counter()
        try:
            engines[name] = build_engine(gen, name, threads=args.threads, calibration=calib, size=args.size)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other engines
            print(f"skipping {name}: {type(exc).__name__}: {exc}")
            continue
        print(f"built {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for b in sizes:
        x = torch.rand(b, 3, args.size, args.size, generator=g)
        with torch.inference_mode():
            ref = gen(x)
        times = {n: [] for n in engines}
        cpu = {n: 0.0 for n in engines}
        diffs = {}
        for n, fn in engines.items():  # warm-up (compile, oneDNN primitive creation), and the difference
            diffs[n] = float((fn(x) - ref).abs().max())
        load0 = os.getloadavg()[0]
        for _ in range(args.rounds):
            for n, fn in engines.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn(x)
                times[n].append(time.perf_counter() - t0)
                cpu[n] += time.process_time() - c0
        load1 = os.getloadavg()[0]
        base = float(np.median(times["eager"])) if "eager" in times else float("nan")
        print(f"\n{args.method} {args.preset}, batch {b}, {args.size}x{args.size}, {args.threads} threads, "
              f"{args.rounds} rounds, load average {load0:.1f} -> {load1:.1f}")
        print(f"{'engine':<14} {'median ms':>10} {'p90 ms':>9} {'images/s':>9} {'x eager':>8} {'max|d|':>9} "
              f"{'cpu/wall':>8}")
        for n, ts in times.items():
            med = float(np.median(ts))
            row = {"engine": n, "batch": b, "median_ms": med * 1e3, "p90_ms": float(np.percentile(ts, 90)) * 1e3,
                   "images_per_s": b / med, "speedup_vs_eager": base / med, "max_abs_diff": diffs[n],
                   "cpu_per_wall": cpu[n] / max(sum(ts), 1e-12), "load_avg": [load0, load1]}
            rows.append(row)
            print(f"{n:<14} {row['median_ms']:>10.1f} {row['p90_ms']:>9.1f} {row['images_per_s']:>9.2f} "
                  f"{row['speedup_vs_eager']:>8.2f} {diffs[n]:>9.1e} {row['cpu_per_wall']:>8.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
