"""``cellbench transform`` at scale: peak memory, throughput against the in-memory normalizer, resume.

    .venv/bin/python benchmarks/transform_scale.py            # 20,000 JPEGs (issue #16 item 3)
    .venv/bin/python benchmarks/transform_scale.py --n 2000   # quicker
    .venv/bin/python benchmarks/transform_scale.py --n 4000 --profile   # CPU time of each step of one chain

1. Generates a folder of ``--n`` JPEGs (PBC images of ``--source`` re-encoded with flips,
   rotations and crops; :func:`generate`) under ``--work`` (``/tmp/cellbench-scale``; reused
   when complete). ``benchmarks/stream_memory.py`` uses the same generator.
   Every image is 320x320 (a random crop), so batches are full, as with a microscope's folder.
2. Fits small ``hm`` and ``poly`` models (``cellbench fit ... --data synthetic:n=16``).
3. Per method, side by side in this script: the normalizer's in-memory throughput
   (``transform()`` on preloaded float ``(B, 3, H, W)`` batches of the same images, in this
   process with torch's default threads and glibc's default allocator, measured before and after
   the folder run, best of the two: the denominator; also with one thread, for reference) and
   ``cellbench transform`` of the folder in a subprocess (decode, transform, encode, write),
   polling ``/proc`` for the peak RSS of the process tree (sum over the main process and its
   workers; shared pages counted in each, so an upper bound), the peak PSS of the tree (shared
   pages divided among the processes) and the largest single process. Prints images/s both ways
   and the ratio (target >= 0.80), the time of a resumed run that finds every output done, and
   the load average before and after (a figure is "quiet" only when both are below 0.5).

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


def _proc_bytes(pid: int, file: str, key: str) -> int:
    """The ``key:`` line (kB) of ``/proc/<pid>/<file>`` in bytes; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rss(pid: int) -> int:
    return _proc_bytes(pid, "status", "VmRSS:")


def _pss(pid: int) -> int:
    """Proportional set size (shared pages divided among the processes sharing them), bytes; 0 if unknown."""
    return _proc_bytes(pid, "smaps_rollup", "Pss:")


def run_measured(cmd: list[str], *, poll: float = 0.1) -> dict:
    """Run ``cmd``; wall seconds, peak RSS of the process tree (sum; shared pages counted in every
    process that maps them, so an upper bound), peak PSS of the tree (shared pages divided among
    their processes: the memory the tree takes), and the largest single process's RSS (bytes,
    polled every ``poll`` s), its stdout."""
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    peak = largest = peak_pss = 0
    while proc.poll() is None:
        tree = _tree(proc.pid)
        rss = [_rss(p) for p in tree]
        peak, largest = max(peak, sum(rss)), max(largest, *rss)
        peak_pss = max(peak_pss, sum(_pss(p) for p in tree))
        time.sleep(poll)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process and its reaped workers
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"wall": wall, "cpu": cpu, "peak_tree": peak, "peak_pss": peak_pss, "largest": largest, "stdout": out}


def in_memory(model: Path, folder: Path, *, images: int = 256, batch: int = 16, threads: int | None = None) -> float:
    """Images/s of ``transform()`` on preloaded float batches (the first ``images`` files, grouped by size), with
    torch's default intra-op threads (``threads``: that many, restored afterwards)."""
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
    from cellbench.threads import limit_threads

    with torch.inference_mode(), limit_threads(threads):
        norm.transform(batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            norm.transform(b)
        return len(files) / (time.perf_counter() - t0)


def _profile_chain(models: dict[str, Path], folder: Path, images: int, batch: int, heap: bool) -> dict[str, float]:
    """CPU ms per image of each step of one chain in this process (see :func:`profile`)."""
    import tempfile

    import torch

    from cellbench.data.stream import ImageFiles, as_float, as_uint8, group_by_size, reuse_heap
    from cellbench.io import write_planes
    from cellbench.methods import load_normalizer

    torch.set_num_threads(1)
    if heap:
        reuse_heap()
    files = sorted(folder.rglob("*.jpg"))[:images]
    ds = ImageFiles(files, errors="return")
    norms = {m: load_normalizer(d) for m, d in models.items()}
    t = {k: 0.0 for k in ("decode", "stack", "to float", *norms, "to uint8", "encode+write")}
    clk = time.process_time
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for _rep in range(2):  # the first pass warms up
            t = dict.fromkeys(t, 0.0)
            for s in range(0, len(files), batch):
                c = clk()
                items = [ds[i] for i in range(s, min(s + batch, len(files)))]
                t["decode"] += clk() - c
                c = clk()
                g = group_by_size(items)
                t["stack"] += clk() - c
                for idx, u in g.groups:
                    c = clk()
                    x = as_float(u)
                    t["to float"] += clk() - c
                    for m, norm in norms.items():
                        c = clk()
                        y = norm.transform(x)
                        t[m] += clk() - c
                    c = clk()
                    planes = as_uint8(y, overwrite=True)
                    t["to uint8"] += clk() - c
                    c = clk()
                    for i, a in zip(idx, planes, strict=True):
                        write_planes(Path(tmp) / f"{i}.jpg", a)
                    t["encode+write"] += clk() - c
    return {k: v * 1e3 / len(files) for k, v in t.items()}


def profile(models: dict[str, Path], folder: Path, *, images: int = 320, batch: int = 16) -> None:
    """Print the CPU time per image of each step of one transform chain, one thread, as a chain process
    runs it (``reuse_heap``); the normalizers also with glibc's default allocator. Each in a fresh process."""
    import multiprocessing as mp

    runs = {}
    for heap in (True, False):
        with mp.get_context("fork").Pool(1) as pool:
            runs[heap] = pool.apply(_profile_chain, (models, folder, images, batch, heap))
    print(f"\nCPU ms per image of one chain, 1 thread, batches of {batch}, {images} images of {folder.name} "
          f"(load average {os.getloadavg()[0]:.2f}):")
    for k, v in runs[True].items():
        extra = f"   (glibc's default allocator: {runs[False][k]:.2f})" if k in models else ""
        print(f"  {k:<14} {v:6.2f}{extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="images in the generated folder (default 20000)")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="labelled folder of source images")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cellbench-scale"), help="where to generate and write")
    ap.add_argument("--methods", default="hm,poly")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="decoding workers of the transform (default: its own)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--profile", action="store_true",
                    help="only print the CPU time per image of each step of one chain (decode ... write)")
    args = ap.parse_args()
    if args.work.resolve() == args.source.resolve() or args.source.resolve() in args.work.resolve().parents:
        raise SystemExit("--work must not be inside --source")
    folder = generate(args.source, args.work / f"jpeg-{args.n}", args.n)
    if args.profile:
        profile({m: fit(m, args.work / "models" / m) for m in args.methods.split(",")}, folder,
                batch=args.batch_size)
        return 0
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
        one = in_memory(model, folder, batch=args.batch_size, threads=1)
        m = re.search(r"\(([\d.]+) s, (\d+) images/s", r["stdout"])
        inner = float(m.group(2)) if m else float("nan")
        resume = run_measured(cmd)
        done = len(list(out.rglob("*.jpg")))
        mem = max(mem1, mem2)
        rows.append((method, mem, one, args.n / r["wall"], inner, r["peak_tree"], r["peak_pss"], r["largest"],
                     resume["wall"], done, r["cpu"] * 1e3 / args.n))
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\n{'method':<6} {'in-memory':>10} {'(1 thread)':>10} {'end-to-end':>11} {'(in-run)':>9} {'ratio':>6} "
          f"{'peak RSS tree':>14} {'peak PSS tree':>14} {'largest proc':>13} {'resume':>8} {'outputs':>8} "
          f"{'CPU/img':>9}")
    for method, mem, one, e2e, inner, peak, pss, largest, resume_s, done, cpu_ms in rows:
        big = f"{largest / 2**30:.2f} GiB"
        print(f"{method:<6} {mem:>7.1f}/s {one:>8.1f}/s {e2e:>8.1f}/s {inner:>7.0f}/s {e2e / mem:>6.2f} "
              f"{peak / 2**30:>10.2f} GiB {pss / 2**30:>10.2f} GiB {big:>13} {resume_s:>6.1f} s {done:>8} "
              f"{cpu_ms:>6.1f} ms")
    print("\nin-memory: normalizer.transform() on preloaded batches (torch's default threads, best of a measurement "
          "before and one after the folder run; the denominator); (1 thread): the same with one intra-op thread, for "
          "reference; end-to-end: files/s of the whole `cellbench transform` process "
          "(start-up, listing, decode, transform, encode, write); (in-run): the rate the command reports (without "
          "start-up); ratio = end-to-end / in-memory (target >= 0.80); peak RSS tree: main process + workers, shared "
          "pages counted in each (an upper bound; target <= 2 GiB); peak PSS tree: the same with shared pages divided "
          "among the processes (what the tree takes); resume: a second run finding every output done; CPU/img: CPU "
          "time of the transform's processes per image (user + system; less sensitive to other processes than the "
          "rates). "
          f"Load average at the start {load:.2f}, at the end {os.getloadavg()[0]:.2f} "
          f"({'quiet' if max(load, os.getloadavg()[0]) < 0.5 else 'measured under load'}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
