"""Generator inference speed (ms per 256x256 image) and training speed (iterations/s), CPU or CUDA.

    .venv/bin/python benchmarks/nets_speed.py --threads 2
    python benchmarks/nets_speed.py --device cuda --amp off,bf16,fp16 --train-presets quick,paper

Inference: G_xy of each preset in eval mode under ``torch.inference_mode``, batch sizes 1, 2, 4, 8
(and larger with ``--batches``); median of ``--repeats`` timed runs after warm-up runs; on CUDA
each timed run is synchronized before and after, the network and input are channels-last, and
``--amp`` lists the precisions to time (``off`` = float32, ``bf16``/``fp16`` = ``torch.autocast``).
The paper reports ~300 ms per image on an Intel Core i7-7700 CPU and 10-20 ms on a GTX 1080 Ti.

Training: ``--train-iterations`` iterations of each method with each of ``--train-presets`` on
random 256x256 pairs (pcnet with a randomly initialised VGG-16 (the ImageNet weights cost the same)
or, with ``--classifier-dir``, the WBC classifier's features), through the same
``create_normalizer(...).fit`` path as ``cellbench fit``. The figure is the median of the trainer's
per-iteration wall times (``train_log.jsonl``; each iteration ends with the losses read back, which
synchronizes CUDA) over the iterations after the first quarter (cuDNN autotuning, allocator
growth), reported as iterations/s; on CUDA also the peak GPU memory. Times are wall-clock and
depend on the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time

import torch


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_inference(
    gen: torch.nn.Module,
    batch: int,
    repeats: int,
    *,
    size: int = 256,
    device: torch.device = torch.device("cpu"),
    amp: str = "off",
    warmup: int = 1,
) -> float:
    """Median ms per image of ``gen`` on a seeded random ``(batch, 3, size, size)`` input."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), _autocast(device, amp):
        for _ in range(max(1, warmup)):
            gen(x)
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            gen(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch * 1000.0


def time_training(
    method: str,
    preset: str,
    iterations: int,
    classifier_dir: str | None,
    *,
    device: str = "cpu",
    amp: str = "off",
) -> dict:
    """Train ``iterations`` iterations; median per-iteration time after the first quarter."""
    from cellbench.data.sets import PairedSet
    from cellbench.methods import create_normalizer

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 256, 256, generator=g)
    data = PairedSet(x=x, y=x.flip(1), labels=["a"] * 16)
    kw = dict(
        iterations=iterations,
        progress=False,
        device=device,
        amp=amp if device == "cuda" else "off",
        checkpoint_every=10**9,
        sample_every=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        if method == "pcnet":
            if classifier_dir:
                kw.update(feature_net="classifier", classifier_dir=classifier_dir)
            else:  # random VGG-16 weights: same cost as the ImageNet ones
                from cellbench.nets.features import VGG16Features

                path = os.path.join(tmp, "vgg.pth")
                torch.save(VGG16Features().features.state_dict(), path)
                kw.update(vgg_weights=path)
        norm = create_normalizer(method, preset, **kw)
        norm.bind_run_dir(os.path.join(tmp, "run"))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        norm.fit(data, seed=0)
        wall = time.perf_counter() - t0
        with open(os.path.join(tmp, "run", "train_log.jsonl"), encoding="utf-8") as fh:
            seconds = [json.loads(line)["seconds"] for line in fh]
    steady = seconds[len(seconds) // 4 :] or seconds
    med = statistics.median(steady)
    row = {
        "what": "training",
        "method": method,
        "preset": preset,
        "device": device,
        "amp": kw["amp"],
        "batch_size": int(norm.params["batch_size"]),
        "crop_size": int(norm.params["crop_size"]),
        "iterations": iterations,
        "median_s_per_iteration": round(med, 4),
        "iterations_per_s": round(1.0 / med, 2),
        "wall_iterations_per_s": round(iterations / wall, 2),
    }
    if device == "cuda":
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--amp", default="off", help="comma list of off,bf16,fp16 (CUDA only)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--presets", default="quick,paper", help="presets timed for inference")
    ap.add_argument("--train-presets", default="quick", help="presets timed for training")
    ap.add_argument("--train-iterations", type=int, default=20)
    ap.add_argument("--classifier-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch.cuda.is_available() is False")
        torch.backends.cudnn.benchmark = True
    amps = args.amp.split(",") if device.type == "cuda" else ["off"]
    for a in amps:
        if a not in ("off", "bf16", "fp16"):
            raise SystemExit(f"--amp {a!r}: choose from off, bf16, fp16")
    from cellbench.methods import create_normalizer

    info = {
        "what": "machine",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": args.threads,
    }
    print(json.dumps(info), flush=True)
    rows = [info]
    for preset in args.presets.split(","):
        gen = create_normalizer("ccgan", preset).G_xy.eval()  # pcnet's generators are the same nets
        if device.type == "cuda":
            gen = gen.to(device, memory_format=torch.channels_last)
        for amp in amps:
            per_batch = {
                b: time_inference(
                    gen, b, args.repeats, device=device, amp=amp, warmup=1 if device.type == "cpu" else 3
                )
                for b in map(int, args.batches.split(","))
            }
            best = min(per_batch, key=per_batch.get)
            row = {
                "what": "inference",
                "preset": preset,
                "device": args.device,
                "amp": amp,
                "threads": args.threads,
                "ms_per_image": {str(b): round(v, 2) for b, v in per_batch.items()},
                "batch1_ms": round(per_batch[1], 2) if 1 in per_batch else None,
                "best_batch": best,
                "best_ms": round(per_batch[best], 2),
                "paper_ms": 300 if device.type == "cpu" else "10-20",
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del gen
    if args.train_iterations > 0:
        for preset in args.train_presets.split(","):
            for method in ("ccgan", "pcnet"):
                for amp in amps:
                    row = time_training(
                        method, preset, args.train_iterations, args.classifier_dir, device=args.device, amp=amp
                    )
                    row["threads"] = args.threads
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
