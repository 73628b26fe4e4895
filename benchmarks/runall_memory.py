"""Peak memory of a streamed ``cellbench run-all`` on generated folders of N JPEGs per system (issue #16).

Generates (or reuses) two labelled folders of ``--n`` JPEGs each under ``--work`` (default
``/tmp/cellbench-scale``, shared with ``benchmarks/stream_memory.py`` and
``benchmarks/transform_scale.py``): system X from ``../shared/data/chula_rpi`` (a Raspberry Pi
camera) and system Y from ``../shared/data/pbc_dm96`` (CellaVision DM96), each image a flipped or
rotated 320 px crop re-encoded as JPEG (``transform_scale.generate``). ``--track paired`` instead
builds a paired folder ``X/<class>/``, ``Y/<class>/`` from the Y images, X a fixed re-colouring
of each (a channel gain and gamma: a colour cast with a known answer).

It then runs ``cellbench run-all --stream on`` on them in a subprocess and polls ``/proc`` every
0.1 s for the resident memory of the largest process and of the whole process tree (the run and
its decoding workers), and prints::

    n per system, track, methods, wall seconds, peak RSS (largest process, tree), load average

One command, run from the repository root (``OMP_NUM_THREADS=1`` is set for the child)::

    nice -n 10 .venv/bin/python benchmarks/runall_memory.py --n 2000
    .venv/bin/python benchmarks/runall_memory.py --n 20000 --set realism=false   # the issue's size

The peak should not grow with ``--n`` beyond the bounded parts (the decoded-image cache
``stream_cache_mb``, the ``EVAL_CAP`` images of the image-level metrics, and what grows with the
test split as ``uint8``: the stored outputs and the classifier's 64 px input stack of Y train).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _scale_module():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import transform_scale

    return transform_scale


def recoloured_pairs(y_dir: Path, out: Path) -> Path:
    """A paired folder ``out/{X,Y}/<class>/<name>``: Y the files of ``y_dir`` (hard links when possible),
    X each re-coloured (gains 0.92/1.04/0.85, gamma 1.15), JPEG quality 90. Reused when complete."""
    import numpy as np
    from PIL import Image

    stamp = out / ".complete"
    says = f"pairs of {y_dir} v1"
    if stamp.exists() and stamp.read_text().strip() == says:
        return out
    if out.exists():
        shutil.rmtree(out)
    gains = np.array([0.92, 1.04, 0.85])
    for f in sorted(y_dir.rglob("*.jpg")):
        rel = f.relative_to(y_dir)
        (out / "Y" / rel.parent).mkdir(parents=True, exist_ok=True)
        (out / "X" / rel.parent).mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, out / "Y" / rel)
        except OSError:
            shutil.copy2(f, out / "Y" / rel)
        with Image.open(f) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        x = np.clip((a ** 1.15) * gains, 0, 1)
        Image.fromarray((x * 255 + 0.5).astype(np.uint8)).save(out / "X" / rel, quality=90)
    stamp.write_text(says + "\n")
    return out


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def short_classifier_models(folder: Path, epochs: int) -> Path:
    """A copy of the repository's ``models/`` whose ``classifier.toml`` adds ``[memory]``: ``[quick]`` with
    ``epochs`` epochs (and ``min_epochs`` no larger)."""
    import tomllib

    folder.mkdir(parents=True, exist_ok=True)
    for f in (ROOT / "models").glob("*.toml"):
        shutil.copyfile(f, folder / f.name)
    quick = tomllib.loads((ROOT / "models" / "classifier.toml").read_text())["quick"]
    lines = ["", "[memory]  # benchmarks/runall_memory.py --classifier-epochs"]
    for key, value in {**quick, "epochs": epochs, "min_epochs": min(epochs, quick.get("min_epochs", epochs))}.items():
        if isinstance(value, dict):
            value = "{ " + ", ".join(f"{k} = {v!r}" for k, v in value.items()) + " }"
        elif isinstance(value, str):
            value = f'"{value}"'
        elif isinstance(value, bool):
            value = str(value).lower()
        lines.append(f"{key} = {value}")
    with open(folder / "classifier.toml", "a") as fh:
        fh.write("\n".join(lines) + "\n")
    return folder


def run_measured(cmd: list[str], log: Path, interval: float = 0.1,
                 env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd`` (output to ``log``), polling the RSS of its process tree; the peaks in GB and the wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    peak_one = peak_tree = 0
    at = ""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while proc.poll() is None:
            rss = [_rss_kb(p) for p in _tree(proc.pid)]
            peak_one = max(peak_one, max(rss, default=0))
            if sum(rss) > peak_tree:
                peak_tree, at = sum(rss), _last_stage(log)
            time.sleep(interval)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run-all failed (exit {proc.returncode}); see {log}")
    return {"wall_s": wall, "peak_process_gb": peak_one / 2**20, "peak_tree_gb": peak_tree / 2**20,
            "load_before": load0, "load_after": os.getloadavg()[0], "peak_stage": at}


def _last_stage(log: Path) -> str:
    """The last ``stage ...`` line of the run's log so far (where the peak happened)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    stages = [msg for ln in lines if (msg := ln.split(": ", 1)[-1]).startswith("stage ")]
    return stages[-1] if stages else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="JPEGs per system (default 2000; the issue: 20000)")
    ap.add_argument("--track", choices=["cross", "paired"], default="cross")
    ap.add_argument("--methods", default=None,
                    help="default: identity,hm,histmatch,reinhard (cross; affine and poly need pairs); "
                         "identity,affine,hm,poly (paired)")
    ap.add_argument("--stream", default="on", choices=["on", "off", "auto"])
    ap.add_argument("--cache-mb", type=float, default=512.0, help="stream_cache_mb")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cellbench-scale"))
    ap.add_argument("--out", type=Path, default=None, help="run folder (default WORK/run-<track>-<n>; replaced)")
    ap.add_argument("--x-source", type=Path, default=SHARED / "chula_rpi")
    ap.add_argument("--y-source", type=Path, default=SHARED / "pbc_dm96")
    ap.add_argument("--reuse-classifier", action="store_true",
                    help="keep the run folder's data, classifier and test-set stages (measure the fits, "
                         "evaluations and speed stages only)")
    ap.add_argument("--classifier-epochs", type=int, default=0,
                    help="train the run's classifier for this many epochs (a copy of models/ with a preset "
                         "[memory] = [quick] but fewer epochs, through CELLBENCH_MODELS_DIR); the peak memory "
                         "does not depend on the epochs, the time does (16,000 images x 30 epochs is hours here)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to run-all")
    args = ap.parse_args()

    scale = _scale_module()
    args.work.mkdir(parents=True, exist_ok=True)
    y = scale.generate(args.y_source, args.work / f"y-{args.n}", args.n, seed=2)
    if args.track == "cross":
        x = scale.generate(args.x_source, args.work / f"x-{args.n}", args.n, seed=1)
        data = f"cross:x={x},y={y}"
        methods = args.methods or "identity,hm,histmatch,reinhard"
    else:
        data = f"paired:{recoloured_pairs(y, args.work / f'pairs-{args.n}')}"
        methods = args.methods or "identity,affine,hm,poly"
    out = args.out or args.work / f"run-{args.track}-{args.n}"
    if out.exists() and args.reuse_classifier:
        for st in (out / "stages").glob("*"):
            if st.name.split("-")[0] in ("fit", "eval", "speed", "per"):
                shutil.rmtree(st)
    elif out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "cellbench", "run-all", "--data", data, "--methods", methods, "--stream",
           args.stream, "--set", f"stream_cache_mb={args.cache_mb}", "--out", str(out), "--jobs", "1", "-q",
           "--no-report", "--set", "speed_seconds=2", "--set", "speed_repeats=1"]
    for item in args.set:
        cmd += ["--set", item]
    env = {}
    if args.classifier_epochs > 0:
        env["CELLBENCH_MODELS_DIR"] = str(short_classifier_models(args.work / "models-memory", args.classifier_epochs))
        cmd += ["--set", "classifier_preset=memory"]
    print("running:", " ".join(cmd), flush=True)
    r = run_measured(cmd, out.with_suffix(".log"), env=env)
    print(f"n per system {args.n}, track {args.track}, methods {methods}, stream {args.stream}, "
          f"cache {args.cache_mb:.0f} MB")
    print(f"wall {r['wall_s']:.0f} s; peak RSS: largest process {r['peak_process_gb']:.2f} GB, "
          f"process tree {r['peak_tree_gb']:.2f} GB; load average {r['load_before']:.1f} before, "
          f"{r['load_after']:.1f} after ({os.cpu_count()} cores)")
    print(f"the tree's peak during: {r['peak_stage'] or '(start)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
