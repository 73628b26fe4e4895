"""Peak memory of the cross track's data read as a stream (issue #16 item 3: <= 4 GB whatever the size).

    .venv/bin/python benchmarks/stream_memory.py                  # 2 x 20,000 JPEGs at 256 px
    .venv/bin/python benchmarks/stream_memory.py --n 4000 --baseline-limit 100

1. Generates two labelled folders of ``--n`` JPEGs each (X from ``chula_rpi``, Y from ``pbc_dm96``,
   re-encoded with flips, rotations and crops by ``benchmarks/transform_scale.py``'s generator) under
   ``--work`` (reused when complete).
2. In a child process (so its peak RSS is its own), polled from ``/proc`` (the process and its
   decoding workers): ``load_cross(X, Y, size=256, stream=Streaming(cache_mb=...))``, the trainers'
   batch source (``make_source``) drawing ``--iterations`` unpaired batches of 256 px crops, and an
   evaluation-like pass over the X and Y test images in order (``LazyImages.batches``: per-channel
   means through a fitted ``affine``-like colour map).
3. With ``--baseline-limit L``: the same steps on the in-memory sets of at most ``L`` images per class
   and split, to show what the old path costs per image.

Prints the peak RSS (target <= 4 GiB) and the counts of images read.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _scale_module():
    spec = importlib.util.spec_from_file_location("cellbench_transform_scale", ROOT / "benchmarks" /
                                                  "transform_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child(args: argparse.Namespace) -> None:
    """The measured work; prints one JSON line."""
    import torch

    from cellbench.data.cross import Streaming, load_cross
    from cellbench.data.sets import UnpairedSet
    from cellbench.train.data import make_source

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    stream = None if args.baseline_limit else Streaming(cache_mb=args.cache_mb, workers=args.workers)
    d = load_cross(args.x, args.y, size=args.size, stream=stream, limit_per_class=args.baseline_limit or None)
    t_load = time.perf_counter() - t0
    src, _ = make_source(UnpairedSet(d.train.x, d.train.y), paired=False, batch_size=args.batch_size,
                         crop=args.crop, seed=0)
    t1 = time.perf_counter()
    for _ in range(args.iterations):
        x, y = src.next_batch()
    t_train = time.perf_counter() - t1
    colour = torch.tensor([[1.05, 0.02, 0.0], [0.0, 0.97, 0.03], [0.01, 0.0, 1.02]])
    sums, n = torch.zeros(2, 3), [0, 0]
    t2 = time.perf_counter()
    for k, s in enumerate((d.x_test, d.y_test)):
        images = s.images
        batches = images.batches(64, workers=args.workers) if hasattr(images, "batches") else images.split(64)
        for b in batches:
            out = torch.einsum("ij,njhw->nihw", colour, b).clamp(0, 1)
            sums[k] += out.mean(dim=(2, 3)).sum(0)
            n[k] += len(b)
    t_eval = time.perf_counter() - t2
    print(json.dumps({"train_x": len(d.train.x), "train_y": len(d.train.y), "test_x": n[0], "test_y": n[1],
                      "load_s": t_load, "train_s": t_train, "eval_s": t_eval,
                      "cache_hits": getattr(d.train.x.images, "hits", None)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="JPEGs per system (default 20000)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cellbench-scale"))
    ap.add_argument("--x-source", type=Path, default=SHARED / "chula_rpi")
    ap.add_argument("--y-source", type=Path, default=SHARED / "pbc_dm96")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=300, help="training batches drawn (default 300)")
    ap.add_argument("--cache-mb", type=float, default=512.0, help="decoded-image cache per set (default 512)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--baseline-limit", type=int, default=0,
                    help="also measure the in-memory sets with at most this many images per class and split")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--x", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--y", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    scale = _scale_module()
    x = scale.generate(args.x_source, args.work / f"x-{args.n}", args.n, seed=1)
    y = scale.generate(args.y_source, args.work / f"y-{args.n}", args.n, seed=2)
    print(f"X: {x}, Y: {y} ({args.n} JPEGs each); load average {os.getloadavg()[0]:.2f}", flush=True)
    base = [sys.executable, __file__, "--child", "--x", str(x), "--y", str(y), "--size", str(args.size), "--crop",
            str(args.crop), "--batch-size", str(args.batch_size), "--iterations", str(args.iterations),
            "--cache-mb", str(args.cache_mb)] + (["--workers", str(args.workers)] if args.workers is not None else [])
    runs = [("streamed", base)]
    if args.baseline_limit:
        runs.append((f"in-memory (<= {args.baseline_limit}/class)", base + ["--baseline-limit",
                                                                           str(args.baseline_limit)]))
    for name, cmd in runs:
        r = scale.run_measured(cmd)
        info = json.loads(r["stdout"].strip().splitlines()[-1])
        images = info["train_x"] + info["train_y"] + info["test_x"] + info["test_y"]
        print(f"{name:<28} peak RSS {r['peak_tree'] / 2**30:.2f} GiB (largest process {r['largest'] / 2**30:.2f} "
              f"GiB); {images} images ({info['train_x']}+{info['train_y']} train, {info['test_x']}+{info['test_y']} "
              f"test); load {info['load_s']:.1f} s, {args.iterations} batches {info['train_s']:.1f} s, "
              f"test pass {info['eval_s']:.1f} s; wall {r['wall']:.0f} s", flush=True)
    print(f"target: peak RSS <= 4 GiB whatever --n; load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
