"""Rank stability: the benchmark run once per seed, and Kendall's tau between the seeds' method rankings.

``cellbench run-all --seeds 0,1 --out RUN`` runs the whole benchmark for each seed into its own run
folder ``RUN/seed-<s>/`` (each with its own stages, so every seed resumes on its own), then writes
``RUN/rank-stability.json`` (and a copy into every seed folder, for its report): for each headline
metric (:data:`RANK_METRICS`) and each pair of seeds, the two rankings of the methods and Kendall's
tau-b between them (:func:`cellbench.eval.agreement.kendall_tau`).

The seed changes what is random in a run: the classifier's and the methods' training (weights,
batches, augmentations), seeded subsamples, and the splits of folder datasets; the simulated pairs
of ``--data synthetic`` depend on the data option ``seed=`` only, so every seed is scored on the
same test images. A tau near 1 says the leaderboard's order does not hinge on the training seed.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fs import atomic_write
from ..options import check_seed
from ..results import Record, load_results

log = logging.getLogger(__name__)

__all__ = ["RANK_METRICS", "RANK_STABILITY", "parse_seeds", "seed_dir", "method_values", "rank_stability",
           "write_rank_stability", "run_seeds"]

#: Headline metrics whose rankings are compared across seeds: ``(metric, region)``.
RANK_METRICS: tuple[tuple[str, str], ...] = (("agreement", "all"), ("js_consistency", "all"),
                                             ("ciede2000_mean", "wbc"))
#: The file written into the parent run folder and into every seed's run folder.
RANK_STABILITY = "rank-stability.json"


def parse_seeds(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``: at least two distinct seeds, each checked (:func:`cellbench.options.check_seed`)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    seeds: list[int] = []
    for p in parts:
        try:
            value = int(p)
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: {p!r} is not an integer; give comma-separated seeds, "
                              "e.g. --seeds 0,1") from None
        seeds.append(check_seed(value))
    seeds = list(dict.fromkeys(seeds))
    if len(seeds) < 2:
        raise ConfigError(f"--seeds {text!r}: rank stability needs at least two distinct seeds, e.g. --seeds 0,1")
    return seeds


def seed_dir(run_dir: str | os.PathLike, seed: int) -> Path:
    """The run folder of one seed: ``RUN/seed-<seed>``."""
    return Path(run_dir) / f"seed-{seed}"


def method_values(records: Sequence[Record], metric: str, region: str, *, split: str = "test",
                  ) -> tuple[dict[str, float], bool | None]:
    """Overall values of ``metric`` in ``region`` per ranked method (references left out) and its direction."""
    rows = [r for r in records if r.metric == metric and r.region == region and r.cell_type == "all"
            and r.split == split and not r.reference]
    hib = next((r.higher_is_better for r in rows if r.higher_is_better is not None), None)
    return {r.method: float(r.value) for r in rows}, hib


def _ranking(values: Mapping[str, float], hib: bool | None) -> list[str]:
    finite = {m: v for m, v in values.items() if math.isfinite(v)}
    return sorted(finite, key=lambda m: (-finite[m] if hib is not False else finite[m], m))


def _none_if_nan(v: float) -> float | None:
    return None if not math.isfinite(v) else v


def rank_stability(results: Mapping[int, Sequence[Record]], *,
                   metrics: Sequence[tuple[str, str]] = RANK_METRICS) -> dict[str, Any]:
    """Kendall's tau between the method rankings of every two seeds, for each metric.

    Parameters
    ----------
    results:
        ``{seed: records}`` of the seeds' runs.

    Returns
    -------
    dict
        ``{"seeds": [...], "metrics": [[metric, region], ...], "comparisons": [{"metric", "region",
        "higher_is_better", "seed_a", "seed_b", "tau", "pvalue", "n_methods", "methods", "values_a",
        "values_b", "ranking_a", "ranking_b"}]}``: rankings best first; ``tau``/``pvalue`` None when
        undefined (fewer than two methods, or a metric on which every method ties).
    """
    from ..eval.agreement import kendall_tau

    seeds = list(results)
    comparisons = []
    for metric, region in metrics:
        per_seed = {s: method_values(results[s], metric, region) for s in seeds}
        for a, b in itertools.combinations(seeds, 2):
            (va, hib_a), (vb, hib_b) = per_seed[a], per_seed[b]
            common = [m for m in va if m in vb and math.isfinite(va[m]) and math.isfinite(vb[m])]
            if not common:
                continue
            k = kendall_tau([va[m] for m in common], [vb[m] for m in common])
            hib = hib_a if hib_a is not None else hib_b
            comparisons.append({
                "metric": metric, "region": region, "higher_is_better": hib, "seed_a": a, "seed_b": b,
                "tau": _none_if_nan(k.tau), "pvalue": _none_if_nan(k.pvalue), "n_methods": len(common),
                "methods": common, "values_a": {m: va[m] for m in common}, "values_b": {m: vb[m] for m in common},
                "ranking_a": _ranking({m: va[m] for m in common}, hib),
                "ranking_b": _ranking({m: vb[m] for m in common}, hib)})
    return {"seeds": seeds, "metrics": [list(k) for k in metrics], "comparisons": comparisons}


def write_rank_stability(run_dir: str | os.PathLike, dirs: Mapping[int, str | os.PathLike]) -> dict[str, Any]:
    """Read each seed's ``results.json``, compute :func:`rank_stability`, and write ``rank-stability.json``
    into ``run_dir`` and into every seed folder (atomically); returns what was written."""
    results = {s: load_results(d)[0] for s, d in dirs.items()}
    out = rank_stability(results)
    base = Path(run_dir)
    out["run_dirs"] = {str(s): os.path.relpath(Path(d), base) for s, d in dirs.items()}
    text = json.dumps(out, indent=1)
    atomic_write(base / RANK_STABILITY, text)
    for d in dirs.values():
        atomic_write(Path(d) / RANK_STABILITY, text)
    return out


def run_seeds(run_dir: str | os.PathLike, seeds: Sequence[int], open_run: Callable[[Path, int], Any], *,
              finish: Callable[[Path, list[str], str], Path] | None = None) -> tuple[dict[str, Any], dict[int, Path]]:
    """Run the benchmark once per seed into ``seed_dir(run_dir, seed)`` and write the rank stability.

    ``open_run(folder, seed)`` returns a configured :class:`~cellbench.bench.runner.Benchmark`; each
    run resumes from its own stages. ``finish(folder, methods, title)`` (the report builder) is
    called for every seed after ``rank-stability.json`` is written, so each report shows it.
    Returns the rank stability and ``{seed: report path or results.json}``.
    """
    dirs: dict[int, Path] = {}
    benches = {}
    for s in seeds:
        d = seed_dir(run_dir, s)
        log.info("run-all --seeds: seed %d into %s", s, d)
        bench = open_run(d, s)
        bench.run()
        dirs[s], benches[s] = d, bench
    stability = write_rank_stability(run_dir, dirs)
    outputs = {s: d / "results.json" for s, d in dirs.items()}
    if finish is not None:
        for s, d in dirs.items():
            outputs[s] = finish(d, list(benches[s].methods), benches[s].track.title)
    return stability, outputs
