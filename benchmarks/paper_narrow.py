"""The paper's ccGAN and pcNet at a 2-core CPU's cost (issue #15): the ``paper-narrow`` presets on run-all's data.

``paper-narrow`` keeps the ``paper`` preset's depth (7 levels), kernels, strides, batch sizes, 256x256
crops, losses, loss weights and optimiser, divides the channel widths by 8 and shortens the schedule
(models/ccgan.toml, models/pcnet.toml). This script trains it (or reuses a trained model folder),
evaluates on the simulated test split of ``benchmarks/nets_quality.py`` (run-all's quick data: train
= pairs 0-639, test = pairs 720-799; ``cellbench fit METHOD --preset paper-narrow --data
synthetic:n=800`` trains on the same 640 pairs) and prints, per method:

* WBC CIEDE2000 of G_xy in eval mode (what ``transform`` runs) and in train mode (the function the
  last training iterations computed: batch statistics of test batches composed as training composes
  them, ``[x, F(y), y]`` of ``batch_size`` pairs, or, with ``bn_freeze_from`` < 1, the running
  statistics those iterations trained on), and the train/eval gap: mean CIEDE2000 between those two
  outputs (whole image and WBC pixels); for a frozen run also the distance to batch statistics
  (``*_batchstats``), which training no longer computes;
* the batch-norm variants of the same weights: running averages of training (the last
  checkpoint), precise BN (the model folder when ``precise_bn_batches`` > 0), and batch
  statistics of x-only test batches (pix2pix's test-time batch norm);
* ``affine`` and ``poly`` fitted on the same training split; wall time and iterations/s.

    .venv/bin/python benchmarks/paper_narrow.py --methods ccgan --out /tmp/paper_narrow
    .venv/bin/python benchmarks/paper_narrow.py --methods pcnet --classifier-dir DIR --out /tmp/paper_narrow
    .venv/bin/python benchmarks/paper_narrow.py --methods ccgan,pcnet --reuse --out /tmp/paper_narrow
    .venv/bin/python benchmarks/paper_narrow.py --methods ccgan --resume --out /tmp/paper_narrow  # continue

pcNet's feature network: the WBC classifier of ``--classifier-dir`` (ImageNet VGG-16 weights are not
available offline); without it, ``--train-classifier`` trains the ``quick`` classifier on the Y
images of the training split (validation: pairs 640-719) into ``OUT/classifier``, as run-all's
classifier stage does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nets_quality import evaluate, load_split  # noqa: E402  (the benchmark helpers beside this script)

NETWORKS = ("ccgan", "pcnet")


def wbc_ciede2000(pred: torch.Tensor, test) -> float:
    """Mean over test images of the mean CIEDE2000 inside the WBC (mask labels 3-5)."""
    from cellbench.eval.image import image_metrics

    m = image_metrics(pred.clamp(0, 1), test.y, masks=test.masks)
    return float(np.nanmean(m["wbc"]["ciede2000_mean"]))


def output_gap(a: torch.Tensor, b: torch.Tensor, test) -> dict[str, float]:
    """Mean CIEDE2000 between two outputs: over all pixels, and over WBC pixels per image then images."""
    from cellbench.eval.image import ciede2000, region_mask, rgb_to_lab

    de = torch.cat([ciede2000(rgb_to_lab(a[i : i + 8]), rgb_to_lab(b[i : i + 8])) for i in range(0, len(a), 8)])
    wbc = region_mask(test.masks) if test.masks is not None else None
    per_image = [float(de[i][wbc[i]].mean()) for i in range(len(de)) if wbc is not None and wbc[i].any()]
    return {"all": float(de.mean()), "wbc": float(np.mean(per_image)) if per_image else float("nan")}


def frozen_bn(norm) -> bool:
    """Whether the last training steps ran on frozen batch-norm statistics (``bn_freeze_from`` < 1)."""
    return float(norm.config.bn_freeze_from) < 1.0


@torch.no_grad()
def outputs(norm, test, mode: str) -> torch.Tensor:
    """G_xy on the test images: ``eval`` (running statistics, whole images), ``batch`` (batch
    statistics of ``[x, F(y), y]`` batches of ``batch_size`` pairs, as an unfrozen training step
    computes G(x)), ``train`` (what the last training steps computed: ``batch``, or the running
    statistics on those batches when ``bn_freeze_from`` < 1 froze them), or ``batch_x`` (batch
    statistics of x-only batches, pix2pix's test-time batch norm)."""
    from cellbench.nets.batchnorm import train_eval_outputs

    G, F = norm.G_xy.eval(), norm.G_yx.eval()
    b = int(norm.config.batch_size)
    if mode == "train":
        mode = "frozen" if frozen_bn(norm) else "batch"
    out = []
    for i in range(0, len(test), b):
        x, y = test.x[i : i + b], test.y[i : i + b]
        if mode == "eval":
            out.append(G(x))
        elif mode == "frozen":
            out.append(G(torch.cat([x, F(y), y]))[: len(x)])
        elif mode == "batch":
            out.append(train_eval_outputs(G, torch.cat([x, F(y), y]))[0][: len(x)])
        else:
            out.append(train_eval_outputs(G, x)[0])
    return torch.cat(out).clamp(0, 1)


def checkpoint_generators(norm, run_dir: Path):
    """A copy of ``norm`` with the weights of the run's last checkpoint: the running averages of
    training, before precise BN (None without checkpoints)."""
    import copy

    from cellbench.train.checkpoint import latest_checkpoint, load_module_weights, read_checkpoint

    path = latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        return None
    _, weights, _, _ = read_checkpoint(path, 0)
    raw = copy.deepcopy(norm)
    load_module_weights({"G_xy": raw.G_xy, "G_yx": raw.G_yx}, weights, path)
    raw.G_xy.eval()
    raw.G_yx.eval()
    return raw


def train_log_speed(run_dir: Path) -> dict[str, float]:
    """Iterations and training seconds from ``train_log.jsonl`` (per-iteration times summed)."""
    lines = [json.loads(s) for s in (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines() if s]
    secs = sum(float(r.get("seconds", 0.0)) for r in lines)
    gaps = [r["bn_gap_de00"] for r in lines if "bn_gap_de00" in r]
    return {
        "iterations": len(lines),
        "train_seconds": round(secs, 1),
        "iterations_per_s": round(len(lines) / secs, 4) if secs else float("nan"),
        "logged_gap_de00_last": gaps[-1] if gaps else float("nan"),
    }


def ensure_classifier(out: Path, cache: Path, train, *, threads: int) -> Path:
    """Train the ``quick`` WBC classifier on the training split's Y images (validation: pairs
    640-719), as run-all's classifier stage does; reused when ``OUT/classifier`` holds one."""
    from cellbench.data.sets import LabelledSet
    from cellbench.train.classifier import train_classifier

    folder = out / "classifier"
    if (folder / "classifier.json").exists():
        return folder
    val = load_split(cache, 640, 80)
    torch.set_num_threads(threads)
    clf = train_classifier(
        LabelledSet(train.y, list(train.labels)), LabelledSet(val.y, list(val.labels)), preset="quick",
        seed=0, work_dir=out / "classifier_work", progress=True,
    )
    clf.save(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ccgan,pcnet")
    ap.add_argument("--preset", default="paper-narrow")
    ap.add_argument("--baselines", default="affine,poly", help="classical methods fitted beside ('' for none)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cellbench_sim"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/paper_narrow"))
    ap.add_argument("--classifier-dir", default=None, help="pcnet: the WBC classifier whose features eq. (8) uses")
    ap.add_argument("--train-classifier", action="store_true", help="pcnet: train the quick classifier first")
    ap.add_argument("--set", action="append", default=[], help="override for ccgan/pcnet: key=TOML value")
    ap.add_argument("--reuse", action="store_true", help="evaluate the model folders in --out, do not train")
    ap.add_argument("--resume", action="store_true", help="continue training from the checkpoints in --out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cellbench.methods import create_normalizer, load_normalizer

    overrides = {k: tomllib.loads(f"v = {v}")["v"] for k, v in (s.split("=", 1) for s in args.set)}
    train = load_split(args.cache, 0, 640)
    test = load_split(args.cache, 720, 80)
    rows = []
    for method in [m for m in args.baselines.split(",") if m]:
        norm = create_normalizer(method)
        t0 = time.perf_counter()
        norm.fit(train, seed=args.seed)
        row = {"method": method, "fit_seconds": round(time.perf_counter() - t0, 1), **evaluate(norm, test)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for method in [m for m in args.methods.split(",") if m]:
        if method not in NETWORKS:
            raise SystemExit(f"--methods: {method!r} is not one of {', '.join(NETWORKS)}")
        run_dir = args.out / method
        kw = dict(overrides)
        if method == "pcnet":
            clf = args.classifier_dir
            if clf is None and args.train_classifier:
                clf = str(ensure_classifier(args.out, args.cache, train, threads=args.threads))
            if clf is not None:
                kw.update(feature_net="classifier", classifier_dir=str(clf))
        row = {"method": method, "preset": args.preset, "seed": args.seed, "options": kw}
        if args.reuse:
            norm = load_normalizer(run_dir)
        else:
            norm = create_normalizer(method, args.preset, **kw)
            norm.bind_run_dir(run_dir, resume=args.resume)
            t0, c0 = time.perf_counter(), time.process_time()
            norm.fit(train, seed=args.seed)
            row["fit_seconds"] = round(time.perf_counter() - t0, 1)
            row["fit_cpu_seconds"] = round(time.process_time() - c0, 1)  # the cost on a machine of our own
            norm.save(run_dir)
        row.update(train_log_speed(run_dir))
        t0 = time.perf_counter()
        pred_eval, pred_train = outputs(norm, test, "eval"), outputs(norm, test, "train")
        row.update(evaluate(norm, test))  # eval mode through transform (tiling path), PSNR, SSIM
        row["ciede2000_wbc_eval"] = wbc_ciede2000(pred_eval, test)
        row["ciede2000_wbc_train"] = wbc_ciede2000(pred_train, test)
        gap = output_gap(pred_eval, pred_train, test)
        row["gap_de00_all"], row["gap_de00_wbc"] = gap["all"], gap["wbc"]
        if frozen_bn(norm):  # the batch-statistics function training left behind
            pred_batch = outputs(norm, test, "batch")
            row["ciede2000_wbc_batchstats"] = wbc_ciede2000(pred_batch, test)
            gap = output_gap(pred_eval, pred_batch, test)
            row["gap_de00_all_batchstats"], row["gap_de00_wbc_batchstats"] = gap["all"], gap["wbc"]
        row["ciede2000_wbc_batch_x"] = wbc_ciede2000(outputs(norm, test, "batch_x"), test)
        raw = checkpoint_generators(norm, run_dir)
        if raw is not None and norm.config.precise_bn_batches and not frozen_bn(norm):
            pred_raw = outputs(raw, test, "eval")
            row["ciede2000_wbc_running"] = wbc_ciede2000(pred_raw, test)
            row["gap_de00_wbc_running"] = output_gap(pred_raw, outputs(raw, test, "train"), test)["wbc"]
        row["eval_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record = args.out / "paper_narrow.json"  # rows of earlier invocations for other methods are kept
    earlier = json.loads(record.read_text(encoding="utf-8")) if record.exists() else []
    done = {r["method"] for r in rows}
    record.write_text(json.dumps([r for r in earlier if r["method"] not in done] + rows, indent=1), encoding="utf-8")
    print(f"\n{'method':<8} {'CIEDE2000 WBC':>13} {'train mode':>10} {'gap WBC':>8} {'gap all':>8} {'gap bs':>7} "
          f"{'running':>8} {'batch_x':>8} {'PSNR':>6} {'fit s':>7} {'it':>6} {'it/s':>7}")
    def cell(r: dict, key: str, fmt: str = ".3f") -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    for r in rows:
        f = lambda key, fmt=".3f", r=r: cell(r, key, fmt)  # noqa: E731
        print(f"{r['method']:<8} {f('ciede2000_wbc'):>13} {f('ciede2000_wbc_train'):>10} {f('gap_de00_wbc'):>8} "
              f"{f('gap_de00_all'):>8} {f('gap_de00_wbc_batchstats'):>7} {f('ciede2000_wbc_running'):>8} "
              f"{f('ciede2000_wbc_batch_x'):>8} "
              f"{f('psnr', '.2f'):>6} {f('fit_seconds', '.0f'):>7} {f('iterations', 'd'):>6} "
              f"{f('iterations_per_s', '.3f'):>7}")


if __name__ == "__main__":
    main()
