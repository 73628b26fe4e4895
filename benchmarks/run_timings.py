"""Where a ``run-all`` spent its time: the stage timings of a run folder (``RUN_DIR/timings.jsonl``).

    .venv/bin/python benchmarks/run_timings.py reports/run-quick-synthetic [--top 15]

Prints the span from the first stage's start to the last stage's end, the CPU seconds of every
stage summed (all processes; on N cores the wall time cannot go below CPU / N), the sums per kind
of stage (data, classifier, fit, eval, speed) and the longest stages. Each line of the log is one
computed stage (``cellbench.bench.cache.stage_scope``); stages reused from the cache are not in it,
so run it on a fresh run folder for the whole picture.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

PREFIXES = ("per-image", "test-masks", "test-features", "test-predictions", "cross-data", "classifier", "data",
            "resim", "fit", "eval", "speed")


def _kind(stage_dir: str) -> str:
    """``fit-ccgan-<hash>`` -> ``fit``; ``per-image-hm-<hash>`` -> ``per-image``."""
    return next((p for p in PREFIXES if stage_dir == p or stage_dir.startswith(p + "-")), stage_dir.rsplit("-", 1)[0])


def summarise(run_dir: Path, top: int = 15) -> str:
    path = run_dir / "timings.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read the stage timings ({exc}); "
                         f"run `cellbench run-all --out {run_dir}` first") from None
    if not rows:
        raise SystemExit(f"{path}: no stage was computed")
    start = min(r["start"] for r in rows)
    end = max(r["start"] + r["wall_s"] for r in rows)
    cpu = sum(r["cpu_s"] for r in rows)
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        k = kinds[_kind(r["stage"])]
        k[0] += r["wall_s"]
        k[1] += r["cpu_s"]
        k[2] += 1
    out = [f"{run_dir}: {len(rows)} stages, span {end - start:.0f} s, CPU {cpu:.0f} s in all stages",
           "", f"{'stage kind':<14}{'stages':>7}{'wall s':>10}{'CPU s':>10}"]
    for name, (w, c, n) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        out.append(f"{name:<14}{n:>7}{w:>10.0f}{c:>10.0f}")
    out += ["", "longest stages (wall):", f"{'stage':<40}{'start s':>9}{'wall s':>9}{'CPU s':>9}{'threads':>8}"]
    for r in sorted(rows, key=lambda r: -r["wall_s"])[:top]:
        out.append(f"{r['stage']:<40}{r['start'] - start:>9.0f}{r['wall_s']:>9.0f}{r['cpu_s']:>9.0f}{r['threads']:>8}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    print(summarise(args.run_dir, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
