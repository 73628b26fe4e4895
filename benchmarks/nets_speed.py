"""Generator inference speed (ms per 256x256 image) and training speed (iterations/s) on this CPU.

    .venv/bin/python benchmarks/nets_speed.py --threads 2

Inference: G_xy of each preset in eval mode under ``torch.inference_mode``, batch sizes 1, 2, 4, 8;
median of ``--repeats`` timed runs after one warm-up; the paper reports ~300 ms per image on an
Intel Core i7-7700 CPU and 10-20 ms on a GTX 1080 Ti. Training: ``--train-iterations`` iterations
of each method's quick preset on random 256x256 pairs (pcnet with a randomly initialised VGG-16
or, with ``--classifier-dir``, the WBC classifier's features). Times are wall-clock and depend on
the machine's load: the figures in docs/networks.md were taken on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def time_inference(gen: torch.nn.Module, batch: int, repeats: int, size: int = 256) -> float:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        gen(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            gen(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch * 1000.0


def time_training(method: str, iterations: int, classifier_dir: str | None) -> float:
    import tempfile

    from cellbench.data.sets import PairedSet
    from cellbench.methods import create_normalizer

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 256, 256, generator=g)
    data = PairedSet(x=x, y=x.flip(1), labels=["a"] * 16)
    kw = dict(iterations=iterations, progress=False)
    tmp = tempfile.TemporaryDirectory()
    if method == "pcnet":
        if classifier_dir:
            kw.update(feature_net="classifier", classifier_dir=classifier_dir)
        else:  # random VGG-16 weights: same cost as the ImageNet ones
            import os

            from cellbench.nets.features import VGG16Features

            path = os.path.join(tmp.name, "vgg.pth")
            torch.save(VGG16Features().features.state_dict(), path)
            kw.update(vgg_weights=path)
    norm = create_normalizer(method, "quick", **kw)
    t0 = time.perf_counter()
    norm.fit(data, seed=0)
    return iterations / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--presets", default="quick,paper")
    ap.add_argument("--train-iterations", type=int, default=20)
    ap.add_argument("--classifier-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from cellbench.methods import create_normalizer

    rows = []
    for preset in args.presets.split(","):
        gen = create_normalizer("ccgan", preset).G_xy.eval()  # pcnet's generators are the same nets
        per_batch = {b: time_inference(gen, b, args.repeats) for b in map(int, args.batches.split(","))}
        best = min(per_batch, key=per_batch.get)
        row = {
            "what": "inference",
            "preset": preset,
            "threads": args.threads,
            "ms_per_image": {str(b): round(v, 1) for b, v in per_batch.items()},
            "batch1_ms": round(per_batch[1], 1) if 1 in per_batch else None,
            "best_batch": best,
            "best_ms": round(per_batch[best], 1),
            "paper_cpu_ms": 300,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.train_iterations > 0:
        for method in ("ccgan", "pcnet"):
            ips = time_training(method, args.train_iterations, args.classifier_dir)
            row = {
                "what": "training",
                "method": method,
                "preset": "quick",
                "threads": args.threads,
                "iterations_per_s": round(ips, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
