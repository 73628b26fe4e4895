"""Neighbour tests (issue #16): how much slower a training runs when the machine is busy.

    .venv/bin/python benchmarks/neighbours.py                       # (a) at the thread policy's count (a few minutes)
    .venv/bin/python benchmarks/neighbours.py --threads 1,2         # (a) for 1 and 2 intra-op threads (the choice)
    .venv/bin/python benchmarks/neighbours.py --run-all             # + (b) run-all quiet vs beside a burner (long)

(a) ``--iterations`` (300) quick ccGAN (and pcNet) training iterations on random 256x256 pairs,
    through the same ``create_normalizer(...).fit`` path as ``run-all``, each in its own process:
    **alone**, then **busy**: beside a one-core CPU burner (``python -c "while True: pass"``) and a
    second training of the same kind (started with it, 3x as many iterations, so it runs the whole
    time, then stopped). The ratio busy / alone of the wall times is the figure (target <= 3x;
    before the thread policy: 13.9 s alone, 131.6 s busy, 9.5x for ccGAN with 2 threads on 2 cores).
    pcNet uses the quick preset's feature network, a WBC classifier of the ``quick`` architecture
    (randomly initialised: the same cost as a trained one).
(b) ``make run-all``'s command into a temporary run folder, quiet and then beside a one-core
    burner (target <= 1.5x). Each takes about as long as ``make run-all`` (10-25 min on 2 cores).

Every scenario runs ``--repeats`` times (default 1) and the medians are printed; each training
process gets ``--threads`` intra-op threads (OpenMP/MKL environment variables set to match, and
``OMP_WAIT_POLICY`` left as the system has it). Measure on a quiet machine: the script prints the
load average before it starts and warns when something else is running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BURNER = "while True: pass"


def _child(method: str, iterations: int, threads: int, out: str) -> None:
    """Train ``iterations`` of ``method``'s quick preset in this process; write wall and per-iteration times."""
    import torch

    torch.set_num_threads(threads)
    from cellbench.data.sets import PairedSet
    from cellbench.methods import create_normalizer

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 256, 256, generator=g)
    data = PairedSet(x=x, y=x.flip(1), labels=["a"] * 16)
    kw = dict(iterations=iterations, progress=False, device="cpu", checkpoint_every=10**9, sample_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        if method == "pcnet":
            from cellbench.nets.classifier import WBCClassifier
            from cellbench.presets import load_preset

            p = load_preset("classifier", "quick")
            clf = WBCClassifier(p["arch"], ["a", "b"], int(p["input_size"]), model_kwargs=p.get("model_kwargs"))
            clf.save(os.path.join(tmp, "clf"))
            kw.update(feature_net="classifier", classifier_dir=os.path.join(tmp, "clf"))
        norm = create_normalizer(method, "quick", **kw)
        norm.bind_run_dir(os.path.join(tmp, "run"))
        t0 = time.perf_counter()
        c0 = time.process_time()
        norm.fit(data, seed=0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        with open(os.path.join(tmp, "run", "train_log.jsonl"), encoding="utf-8") as fh:
            seconds = [json.loads(line)["seconds"] for line in fh]
    Path(out).write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "median_iteration_s": statistics.median(seconds),
                                     "threads": torch.get_num_threads()}), encoding="utf-8")


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    env["CELLBENCH_THREADS"] = str(threads)  # the trainer's thread policy, replaced (cellbench.threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(method: str, iterations: int, threads: int, out: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", method, str(iterations), str(threads), out],
                            env=_env(threads), cwd=ROOT)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _train(method: str, iterations: int, threads: int, *, busy: bool, tmp: str) -> dict:
    out = os.path.join(tmp, f"{method}-{threads}-{'busy' if busy else 'alone'}.json")
    helpers: list[subprocess.Popen] = []
    try:
        if busy:
            helpers.append(subprocess.Popen([sys.executable, "-c", BURNER]))
            helpers.append(_start(method, 3 * iterations, threads, os.path.join(tmp, "neighbour.json")))
        p = _start(method, iterations, threads, out)
        if p.wait() != 0:
            raise SystemExit(f"the {method} training process failed (exit {p.returncode})")
    finally:
        for h in helpers:
            _stop(h)
    return json.loads(Path(out).read_text(encoding="utf-8"))


def _load() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def neighbour_test(methods: list[str], threads: list[int], iterations: int, repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            for t in threads:
                alone = [_train(method, iterations, t, busy=False, tmp=tmp) for _ in range(repeats)]
                busy = [_train(method, iterations, t, busy=True, tmp=tmp) for _ in range(repeats)]
                a = statistics.median(r["wall_s"] for r in alone)
                b = statistics.median(r["wall_s"] for r in busy)
                row = {"method": method, "threads": t, "iterations": iterations, "alone_s": round(a, 2),
                       "busy_s": round(b, 2), "ratio": round(b / a, 2),
                       "alone_iteration_ms": round(1000 * statistics.median(r["median_iteration_s"] for r in alone), 1),
                       "busy_iteration_ms": round(1000 * statistics.median(r["median_iteration_s"] for r in busy), 1),
                       "alone_cpu_per_wall": round(statistics.median(r["cpu_s"] / r["wall_s"] for r in alone), 2),
                       "load_after": _load()}
                rows.append(row)
                print(f"{method:6s} threads={t}  alone {a:7.1f} s  beside burner + 2nd training {b:7.1f} s  "
                      f"ratio {b / a:5.2f}x  (median iteration {row['alone_iteration_ms']} -> "
                      f"{row['busy_iteration_ms']} ms; load {row['load_after']})", flush=True)
    return rows


def run_all_test(repeats: int, jobs: int | None) -> dict:
    """``make run-all``'s command, quiet and beside a one-core burner, into fresh temporary folders."""
    cmd = [sys.executable, "-m", "cellbench", "run-all", "--quiet", "--no-report"]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    times: dict[str, list[float]] = {"quiet": [], "busy": []}
    for _ in range(repeats):
        for mode in ("quiet", "busy"):
            tmp = tempfile.mkdtemp(prefix="neighbours-run-")
            burner = subprocess.Popen([sys.executable, "-c", BURNER]) if mode == "busy" else None
            try:
                t0 = time.perf_counter()
                env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
                subprocess.run([*cmd, "--out", tmp], check=True, cwd=ROOT, env=env)  # run-all's own thread policy
                times[mode].append(time.perf_counter() - t0)
            finally:
                if burner is not None:
                    _stop(burner)
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"run-all {mode}: {times[mode][-1]:.0f} s", flush=True)
    q, b = statistics.median(times["quiet"]), statistics.median(times["busy"])
    print(f"run-all quiet {q:.0f} s, beside a one-core burner {b:.0f} s: ratio {b / q:.2f}x (target <= 1.5x)")
    return {"quiet_s": q, "busy_s": b, "ratio": b / q}


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    sys.path.insert(0, str(ROOT))
    from cellbench.threads import thread_policy, usable_cores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ccgan,pcnet", help="comma list of ccgan, pcnet")
    ap.add_argument("--threads", default=None,
                    help="comma list of intra-op thread counts (default: the policy's for small networks)")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--run-all", action="store_true", help="also (b): make run-all quiet vs beside a burner (long)")
    ap.add_argument("--jobs", type=int, default=None, help="(b): run-all --jobs (default: run-all's default)")
    ap.add_argument("--json", help="write the rows to this JSON file too")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [thread_policy("small_net")]
    print(f"usable cores {usable_cores()}; load average (1/5/15 min) before: {_load()}", flush=True)
    try:
        if os.getloadavg()[0] > 0.5:
            print("warning: the machine is not quiet; the 'alone' figures are measured under load", flush=True)
    except OSError:
        pass
    out: dict = {"neighbours": neighbour_test([m for m in args.methods.split(",") if m], threads,
                                              args.iterations, args.repeats)}
    ratios = ", ".join(f"{r['method']} x{r['threads']}: {r['ratio']}x" for r in out["neighbours"])
    print(f"ratios busy/alone (target <= 3x): {ratios}")
    if args.run_all:
        out["run_all"] = run_all_test(args.repeats, args.jobs)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
