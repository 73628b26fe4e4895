"""Distilled students against their teachers on the simulated test split: WBC CIEDE2000 and throughput.

Fits each teacher on the simulated training split (``synthetic:n=N``: 80/10/10 by index, as
``run-all``), distils every student kind from it, and prints per (teacher, kind) the mean
CIEDE2000 inside the white cell (mask labels 3-5) of teacher and student against Y on the test
split, the student's difference to its teacher, the fit time, and the student's throughput at
256x256 (batches of 64, median of ``--rounds``). Example (the issue's setting)::

    .venv/bin/python benchmarks/distill_quality.py --teachers poly,hm --n 800 --out reports/distill
    .venv/bin/python benchmarks/distill_quality.py --teachers pcnet,ccgan --preset quick --n 800

Writes ``OUT/distill_quality.json`` (rows) and prints a Markdown table.
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
from cellbench.data.spec import parse_data_spec
from cellbench.methods import create_normalizer
from cellbench.methods.distill import DISTILL_KINDS, distill, teacher_outputs
from cellbench.sim.synthetic import synthetic_split


def wbc_ciede2000(out: torch.Tensor, ref: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean per-pixel CIEDE2000 between ``out`` and ``ref`` over the WBC pixels of all images."""
    sel = np.isin(masks.numpy(), WBC_LABELS)
    a = out.permute(0, 2, 3, 1).numpy()[sel]
    b = ref.permute(0, 2, 3, 1).numpy()[sel]
    return float(deltaE_ciede2000(rgb2lab(a[None]), rgb2lab(b[None]))[0].mean())


def throughput(norm, x: torch.Tensor, rounds: int) -> float:
    norm.transform(x)
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        norm.transform(x)
        ts.append(time.perf_counter() - t)
    return len(x) / float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teachers", default="poly,hm")
    ap.add_argument("--kinds", default=",".join(DISTILL_KINDS))
    ap.add_argument("--preset", default=None, help="preset of the teachers (quick for pcnet/ccgan)")
    ap.add_argument("--n", type=int, default=800, help="simulated pairs (train 80 %%, test 10 %%)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", type=Path, help="folder to keep the simulated splits in (.pt)")
    ap.add_argument("--out", type=Path, default=Path("reports/distill"))
    ap.add_argument("--set", action="append", default=[], metavar="KIND.KEY=VALUE",
                    help="a student option, e.g. pixelnet.hidden=8 (TOML value); repeatable")
    args = ap.parse_args()
    import tomllib

    student_opts: dict[str, dict] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        kind, _, name = key.partition(".")
        student_opts.setdefault(kind, {})[name] = tomllib.loads(f"v = {value}")["v"]
    torch.set_num_threads(args.threads)
    spec = parse_data_spec(f"synthetic:n={args.n}")
    splits = {}
    for split in ("train", "test"):
        cached = args.cache / f"sim_{args.n}_{args.size}_{split}.pt" if args.cache else None
        if cached is not None and cached.exists():
            from cellbench.data.sets import PairedSet

            d = torch.load(cached, weights_only=True)
            splits[split] = PairedSet(x=d["x"], y=d["y"], labels=d["labels"], masks=d["masks"])
        else:
            splits[split] = synthetic_split(spec, split, size=args.size)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                s = splits[split]
                torch.save({"x": s.x, "y": s.y, "labels": s.labels, "masks": s.masks}, cached)
    train, test = splits["train"], splits["test"]
    bench_x = test.x[:64] if len(test) >= 64 else test.x.repeat(64 // len(test) + 1, 1, 1, 1)[:64]
    rows = []
    print("| teacher | student | fit s | teacher dE (WBC) | student dE (WBC) | student vs teacher | images/s |")
    print("|---|---|---|---|---|---|---|")
    for tname in args.teachers.split(","):
        t0 = time.perf_counter()
        teacher = create_normalizer(tname, args.preset, **({"device": "cpu"} if tname in ("ccgan", "pcnet") else {}))
        teacher.fit(train, seed=args.seed)
        t_fit = time.perf_counter() - t0
        ty = teacher_outputs(teacher, test.x)
        t_de = wbc_ciede2000(ty, test.y, test.masks)
        t_ips = throughput(teacher, bench_x, args.rounds)
        rows.append({"teacher": tname, "student": "teacher", "fit_s": t_fit, "wbc_ciede2000": t_de,
                     "images_per_s": t_ips})
        print(f"| {tname} | (teacher) | {t_fit:.1f} | {t_de:.3f} | | | {t_ips:.0f} |", flush=True)
        for kind in args.kinds.split(","):
            t0 = time.perf_counter()
            student = distill(teacher, train, kind, seed=args.seed, **student_opts.get(kind, {}))
            fit_s = time.perf_counter() - t0
            so = teacher_outputs(student, test.x)
            s_de = wbc_ciede2000(so, test.y, test.masks)
            vs = wbc_ciede2000(so, ty, test.masks)
            ips = throughput(student, bench_x, args.rounds)
            rows.append({"teacher": tname, "student": kind, "options": student_opts.get(kind, {}), "fit_s": fit_s,
                         "wbc_ciede2000": s_de,
                         "teacher_wbc_ciede2000": t_de, "gap": s_de - t_de, "vs_teacher": vs, "images_per_s": ips})
            print(f"| {tname} | {kind} | {fit_s:.1f} | {t_de:.3f} | {s_de:.3f} ({s_de - t_de:+.3f}) | {vs:.3f} | "
                  f"{ips:.0f} |", flush=True)
    load = getattr(__import__("os"), "getloadavg", lambda: (float("nan"),) * 3)()
    print(f"\nthreads {args.threads}; load average {load[0]:.1f} (a busy machine lowers images/s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill_quality.json").write_text(json.dumps({"rows": rows, "args": vars(args) | {
        "out": str(args.out), "cache": str(args.cache)}, "load_avg": load[0]}, indent=1))


if __name__ == "__main__":
    main()
