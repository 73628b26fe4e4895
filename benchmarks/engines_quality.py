"""Reduced-precision engines on trained generators: mean CIEDE2000 to the fp32 output on the test split.

Issue #17 bounds every reduced-precision engine (``bf16``, ``bf16_subpixel``, ``int8``, ...) at 0.5
mean CIEDE2000 inside the WBC against the fp32 output of the same weights, and every fp32 engine at
1e-3 of eager. This script loads trained ccGAN/pcNet model folders (``cellbench fit`` outputs, e.g.
``benchmarks/paper_narrow.py``'s ``OUT/ccgan``), transforms the simulated test split of
``benchmarks/nets_quality.py`` (pairs 720-799 of run-all's quick data) with every engine through
:func:`cellbench.eval.profiling.choose_engine` (the speed stage's code) and prints, per engine, the
max difference and the mean CIEDE2000 in the WBC to eager fp32, whether it passes, and its batch-1
latency (median of ``--rounds``, engines interleaved)::

    .venv/bin/python benchmarks/engines_quality.py /tmp/pn9/ccgan /tmp/pn9/pcnet --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nets_quality import load_split  # noqa: E402  (the benchmark helpers beside this script)


def main() -> None:
    from cellbench.eval.profiling import choose_engine
    from cellbench.methods import load_normalizer
    from cellbench.nets.engines import ENGINES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="trained ccgan/pcnet model folders")
    ap.add_argument("--engines", default="channels_last,subpixel,bf16,bf16_subpixel",
                    help=f"candidates (of {', '.join(ENGINES)}); eager fp32 is the reference")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cellbench_sim"))
    ap.add_argument("--n", type=int, default=80, help="test pairs (from pair 720)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = load_split(args.cache, 720, args.n)
    out = []
    for folder in args.models:
        norm = load_normalizer(folder)
        best, rows = choose_engine(norm, test.x, candidates=args.engines.split(","), masks=test.masks,
                                   threads=args.threads, rounds=args.rounds)
        print(f"\n{folder} ({norm.name}): fastest passing engine {best}")
        print(f"{'engine':<15} {'max|d|':>9} {'dE00 WBC':>9} {'ok':>4} {'batch-1 ms':>11}  reason")
        for r in rows:
            md = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
            de = "-" if r["ciede2000_mean"] is None else f"{r['ciede2000_mean']:.3f}"
            ms = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}"
            print(f"{r['engine']:<15} {md:>9} {de:>9} {str(r['ok']):>4} {ms:>11}  {r['reason'] or ''}")
        out.append({"model": str(folder), "method": norm.name, "best": best, "rows": rows})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
