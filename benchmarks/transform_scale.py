"""``cellbench transform`` at scale: peak memory, throughput against the in-memory normalizer, resume.

    .venv/bin/python benchmarks/transform_scale.py            # 20,000 JPEGs (issue #16 item 3)
    .venv/bin/python benchmarks/transform_scale.py --n 2000   # quicker

1. Generates a folder of ``--n`` JPEGs (PBC images of ``--source`` re-encoded with flips,
   rotations and crops; :func:`generate`) under ``--work`` (``/tmp/cellbench-scale``; reused
   when complete). ``benchmarks/stream_memory.py`` uses the same generator.
   Every image is 320x320 (a random crop), so batches are full, as with a microscope's folder.
2. Fits small ``hm`` and ``poly`` models (``cellbench fit ... --data synthetic:n=16``).
3. Per method, side by side in this script: the normalizer's in-memory throughput
   (``transform()`` on preloaded ``(B, 3, H, W)`` batches of the same images, measured before and
   after the folder run, best of the two) and ``cellbench transform`` of the folder in a
   subprocess (decode, transform, encode, write), polling ``/proc`` for the peak RSS of the
   process tree (sum over the main process and its decoding workers; shared pages counted in
   each, so an upper bound) next to the largest single process. Prints images/s
   both ways and the ratio (target >= 0.80), and the time of a resumed run that finds every
   output done.

Targets (issue #16): peak RSS <= 2 GB; end-to-end >= 80 % of the in-memory throughput.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "pbc_dm96"
PY = sys.executable


def generate(source: Path, out: Path, n: int, *, seed: int = 0, quality: int = 90, crop: int = 320) -> Path:
    """``n`` JPEGs in ``out/<class>/<name>.jpg`` from the labelled folder ``source``.

    Each source image (in a seeded random order) gives ``ceil(n / sources)`` variants (the
    dihedral group: flips and 90-degree rotations, in turn) cropped to ``crop x crop`` at a random
    place (one size, as a microscope writes them: whole batches), re-encoded (``quality``), until
    ``n`` files exist. A complete folder (its ``.complete`` stamp names the arguments) is reused.
    Never writes into ``source``.
    """
    from PIL import Image

    stamp, says = out / ".complete", f"n={n} seed={seed} quality={quality} crop={crop} v2"
    if stamp.exists() and stamp.read_text().strip() == says:
        return out
    if out.exists():
        shutil.rmtree(out)
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif"))
    if not files:
        raise SystemExit(f"{source}: no images; pass --source a labelled folder ROOT/<class>/<file>")
    rng = random.Random(seed)
    rng.shuffle(files)  # a small n still draws from every class
    ops = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
           Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
           Image.Transpose.TRANSVERSE]
    per = -(-n // len(files))
    made = 0
    t0 = time.perf_counter()
    for f in files:  # each source decoded once, its variants written in a row
        if made >= n:
            break
        with Image.open(f) as src:
            rgb = src.convert("RGB")
        for v in range(min(per, n - made)):
            op = ops[(v + made) % len(ops)]
            im = rgb.transpose(op) if op is not None else rgb
            w, h = im.size
            cw, ch = min(crop, w), min(crop, h)
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            target = out / f.parent.name / f"{f.stem}_v{v}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            im.crop((left, top, left + cw, top + ch)).save(target, quality=quality)
            made += 1
    stamp.write_text(says)
    print(f"generated {made} JPEGs in {out} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def fit(method: str, out: Path) -> Path:
    if not (out / "normalizer.json").exists():
        subprocess.run([PY, "-m", "cellbench", "fit", method, "--data", "synthetic:n=16", "--out", str(out),
                        "--size", "64"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], *, poll: float = 0.1) -> dict:
    """Run ``cmd``; wall seconds, peak RSS of the process tree and of its largest process (bytes,
    polled every ``poll`` s), its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    peak = largest = 0
    while proc.poll() is None:
        rss = [_rss(p) for p in _tree(proc.pid)]
        peak, largest = max(peak, sum(rss)), max(largest, *rss)
        time.sleep(poll)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    return {"wall": wall, "peak_tree": peak, "largest": largest, "stdout": out}


def in_memory(model: Path, folder: Path, *, images: int = 256, batch: int = 16) -> float:
    """Images/s of ``transform()`` on preloaded float batches (the first ``images`` files, grouped by size)."""
    import numpy as np
    import torch

    from cellbench.io import read_image
    from cellbench.methods import load_normalizer
    from cellbench.tensors import to_tensor

    norm = load_normalizer(model)
    files = sorted(p for p in folder.rglob("*.jpg"))[:images]
    by_shape: dict[tuple, list] = {}
    for f in files:
        a = read_image(f)
        by_shape.setdefault(a.shape, []).append(a)
    batches = [to_tensor(np.stack(v[i : i + batch])) for v in by_shape.values() for i in range(0, len(v), batch)]
    with torch.inference_mode():
        norm.transform(batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            norm.transform(b)
        return len(files) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="images in the generated folder (default 20000)")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="labelled folder of source images")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cellbench-scale"), help="where to generate and write")
    ap.add_argument("--methods", default="hm,poly")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="decoding workers of the transform (default: its own)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    args = ap.parse_args()
    if args.work.resolve() == args.source.resolve() or args.source.resolve() in args.work.resolve().parents:
        raise SystemExit("--work must not be inside --source")
    folder = generate(args.source, args.work / f"jpeg-{args.n}", args.n)
    load = os.getloadavg()[0]
    print(f"folder: {folder} ({args.n} JPEGs); load average {load:.2f} on {os.cpu_count()} cores", flush=True)
    rows = []
    for method in args.methods.split(","):
        model = fit(method, args.work / "models" / method)
        out = args.work / f"out-{method}-{args.n}"
        shutil.rmtree(out, ignore_errors=True)
        mem1 = in_memory(model, folder, batch=args.batch_size)
        cmd = [PY, "-m", "cellbench", "transform", "--model", str(model), str(folder), str(out), "-q",
               "--batch-size", str(args.batch_size)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        r = run_measured(cmd)
        mem2 = in_memory(model, folder, batch=args.batch_size)
        m = re.search(r"\(([\d.]+) s, (\d+) images/s", r["stdout"])
        inner = float(m.group(2)) if m else float("nan")
        resume = run_measured(cmd)
        done = len(list(out.rglob("*.jpg")))
        mem = max(mem1, mem2)
        rows.append((method, mem, args.n / r["wall"], inner, r["peak_tree"], r["largest"], resume["wall"], done))
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\n{'method':<6} {'in-memory':>10} {'end-to-end':>11} {'(in-run)':>9} {'ratio':>6} "
          f"{'peak RSS tree':>14} {'largest proc':>13} {'resume':>8} {'outputs':>8}")
    for method, mem, e2e, inner, peak, largest, resume_s, done in rows:
        big = f"{largest / 2**30:.2f} GiB"
        print(f"{method:<6} {mem:>7.1f}/s {e2e:>8.1f}/s {inner:>7.0f}/s {e2e / mem:>6.2f} "
              f"{peak / 2**30:>10.2f} GiB {big:>13} {resume_s:>6.1f} s {done:>8}")
    print("\nin-memory: normalizer.transform() on preloaded batches; end-to-end: files/s of the whole "
          "`cellbench transform` process (start-up, listing, decode, transform, encode, write); (in-run): the rate "
          "the command reports (without start-up); ratio = end-to-end / in-memory (target >= 0.80); peak RSS "
          "tree: main process + decoding workers (target <= 2 GiB); resume: a second run finding every output done. "
          f"Load average at the end: {os.getloadavg()[0]:.2f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
