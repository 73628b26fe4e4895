"""Train the WBC classifier on the real PBC images and report its test accuracy and training time.

    .venv/bin/python benchmarks/classifier_pbc.py --preset quick --threads 2 --out /tmp/clf_pbc

Data: ``../shared/data/pbc_dm96`` (or ``$CELLBENCH_SHARED_DATA/pbc_dm96``, or ``--data``), with
LabelledFolder's seeded 80/10/10 split. Images are centre-cropped to ``--crop`` pixels (the cell
sits in the middle) and resized by the classifier to its preset's input size.
Prints the accuracy overall and per class, the confusion matrix, the number of epochs, and the
training time as wall-clock seconds and as CPU (process) seconds; the machine may be shared, so
the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from cellbench.data.folders import LabelledFolder
from cellbench.data.sets import LabelledSet
from cellbench.train.classifier import classifier_config, evaluate_classifier, train_classifier

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    env = os.environ.get("CELLBENCH_SHARED_DATA")
    return (Path(env) if env else REPO.parent / "shared" / "data") / "pbc_dm96"


def load_split(folder: LabelledFolder, split: str, crop: int, size: int) -> LabelledSet:
    """Load one split class by class, resizing each chunk at once to keep memory low."""
    parts = []
    for cls in folder.classes():
        s = folder.load(split, size=crop, classes=[cls])
        x = torch.nn.functional.interpolate(s.images, size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=True)
        parts.append(LabelledSet(x, s.labels, s.ids))
    return LabelledSet(torch.cat([p.images for p in parts]), sum((p.labels for p in parts), []),
                       sum((p.ids for p in parts), []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--crop", type=int, default=256, help="centre crop of the 360x363 images (pixels)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help="work dir: checkpoints, train_log.jsonl, result.json")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override preset options, e.g. --set epochs=5 lr=0.001 (values parsed as JSON)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    overrides = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    cfg = classifier_config(args.preset, **overrides)
    if not args.data.is_dir():
        print(f"PBC data not found at {args.data}; pass --data", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    folder = LabelledFolder(args.data)
    train, val, test = (load_split(folder, s, args.crop, cfg["input_size"]) for s in ("train", "val", "test"))
    t_load = time.perf_counter() - t0
    print(f"loaded train {len(train)}, val {len(val)}, test {len(test)} in {t_load:.1f} s", flush=True)

    w0, c0 = time.perf_counter(), time.process_time()
    clf = train_classifier(train, val, preset=args.preset, seed=args.seed, work_dir=args.out,
                           progress=False, threads=args.threads, **overrides)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    hist = clf.info["history"]
    res = evaluate_classifier(clf, test)
    res.pop("predictions")
    epoch_wall = [h["wall_s"] for h in hist]
    epoch_cpu = [h["cpu_s"] for h in hist]
    print(f"\npreset {args.preset}: {clf.arch} {cfg['model_kwargs'] or ''} input {clf.input_size} "
          f"(crop {args.crop}), seed {args.seed}, threads {args.threads}")
    print(f"epochs run {clf.info['epochs_run']} (best {clf.info['best_epoch']}, val acc "
          f"{clf.info['best_val_acc']:.4f})")
    print(f"training time (this process): wall {wall:.0f} s, CPU {cpu:.0f} s; "
          f"summed over logged epochs: wall {sum(epoch_wall):.0f} s, CPU {sum(epoch_cpu):.0f} s; "
          f"median epoch wall {sorted(epoch_wall)[len(epoch_wall) // 2]:.1f} s, "
          f"CPU {sorted(epoch_cpu)[len(epoch_cpu) // 2]:.1f} s")
    print(f"TEST accuracy {res['accuracy']:.4f} (n={res['n']})")
    for c in clf.classes:
        print(f"  {c:<13} {res['per_class'][c]:.3f}  (n={res['per_class_n'][c]})")
    print("confusion (rows true, cols predicted):", *clf.classes)
    for c, row in zip(clf.classes, res["confusion"], strict=True):
        print(f"  {c:<13}", " ".join(f"{v:3d}" for v in row))
    if args.out is not None:
        summary = {"preset": args.preset, "config": clf.info["config"], "test": res,
                   "train_wall_s": wall, "train_cpu_s": cpu, "epochs_run": clf.info["epochs_run"],
                   "best_epoch": clf.info["best_epoch"], "best_val_acc": clf.info["best_val_acc"],
                   "machine": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
        (args.out / "result.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
