"""Speed regression guard: compare a pytest-benchmark JSON with a stored baseline of speed ratios.

Absolute timings depend on the machine (and on whatever else runs on it), so the guard compares
**ratios**: each benchmark's median time divided by the median of a reference benchmark of the same
run (default ``test_transform_throughput_256[poly]``: the ``poly`` colour map on 32 images of
256 x 256, plain torch arithmetic). A machine twice as slow doubles both, and the ratio stays.
A benchmark fails when its ratio grew by more than ``--factor`` (default 3) over the baseline's:
a code change that makes it several times slower, not 2-core CI noise (ratios of the brief CI run,
``--benchmark-max-time=0.5``, vary by up to about 2x between runs on a shared machine).

A median can also grow from a burst of load on a shared machine: with the brief CI run's 2-3 rounds,
two disturbed rounds move it. A code change slows every round, so a ratio above the factor counts as a
regression only when the fastest round (``stats.min``, relative to the reference's fastest) is above it
too; otherwise the row is reported as ``noisy`` and does not fail (JSONs without ``min``: medians only).

Benchmarks missing from the run (deselected, skipped without ``../shared/data``) or from the
baseline (new ones) are listed and do not fail. Exit status: 0 pass, 1 regression, 2 unusable input.

    python benchmarks/speed_guard.py reports/benchmark-ci.json                  # check (make test)
    python benchmarks/speed_guard.py reports/benchmark-ci.json --write-baseline  # after a deliberate change

The baseline is ``benchmarks/speed_baseline.json`` (committed): ``{"reference", "ratios": {name: ratio},
"source": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_BASELINE = Path(__file__).with_name("speed_baseline.json")
DEFAULT_REFERENCE = "test_transform_throughput_256[poly]"
DEFAULT_FACTOR = 3.0


class GuardError(Exception):
    """The benchmark JSON or the baseline cannot be used (unreadable, no reference benchmark)."""


def load_run(path: str | Path) -> dict:
    """A pytest-benchmark JSON file, parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GuardError(f"{path}: cannot read a pytest-benchmark JSON ({exc})") from None


def read_stat(data: dict, stat: str) -> dict[str, float]:
    """Seconds per benchmark name of one statistic (``median``, ``min``) of a parsed pytest-benchmark
    JSON (:func:`load_run`; benchmarks without it are left out)."""
    out = {}
    for b in data.get("benchmarks", []):
        value = (b.get("stats") or {}).get(stat)
        if value is not None and value > 0:
            out[b["name"]] = float(value)
    return out


def read_medians(path: str | Path, data: dict | None = None) -> tuple[dict[str, float], dict]:
    """Median seconds per benchmark name of a pytest-benchmark JSON file (``data``: already parsed),
    and its machine/commit info."""
    data = load_run(path) if data is None else data
    medians = read_stat(data, "median")
    if not medians:
        raise GuardError(f"{path}: no benchmark results (was pytest run with --benchmark-enable?)")
    info = {"machine": (data.get("machine_info") or {}).get("node"),
            "cpu": ((data.get("machine_info") or {}).get("cpu") or {}).get("brand_raw"),
            "commit": (data.get("commit_info") or {}).get("id"),
            "dirty": (data.get("commit_info") or {}).get("dirty"),
            "datetime": data.get("datetime")}
    return medians, info


def ratios(medians: dict[str, float], reference: str) -> dict[str, float]:
    """Each benchmark's median relative to ``reference``'s median in the same run."""
    if reference not in medians:
        raise GuardError(f"reference benchmark {reference!r} is not in the run; pass --reference NAME "
                         f"(one of: {', '.join(sorted(medians))})")
    ref = medians[reference]
    return {name: m / ref for name, m in sorted(medians.items())}


def compare(current: dict[str, float], baseline: dict[str, float], *, factor: float = DEFAULT_FACTOR,
            fastest: dict[str, float] | None = None) -> list[dict]:
    """One row per benchmark in either: ``name, baseline, current, change, status``.

    ``status`` is ``"ok"``, ``"REGRESSION"`` (``current > factor * baseline``, and, where ``fastest``
    (ratios of the fastest rounds) has the benchmark, its fastest-round ratio too), ``"noisy"`` (the
    median ratio is above the factor but the fastest round is not: load, not code; reported only),
    ``"faster"`` (``current < baseline / factor``, reported only), ``"missing"`` (in the baseline, not
    the run) or ``"new"`` (not in the baseline).
    """
    rows = []
    for name in sorted(set(current) | set(baseline)):
        cur, base = current.get(name), baseline.get(name)
        if cur is None:
            rows.append({"name": name, "baseline": base, "current": None, "change": None, "status": "missing"})
            continue
        if base is None:
            rows.append({"name": name, "baseline": None, "current": cur, "change": None, "status": "new"})
            continue
        change = cur / base
        status = "REGRESSION" if change > factor else ("faster" if change < 1.0 / factor else "ok")
        if status == "REGRESSION" and fastest and name in fastest and fastest[name] <= factor * base:
            status = "noisy"
        rows.append({"name": name, "baseline": base, "current": cur, "change": change, "status": status})
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="pytest-benchmark JSON (--benchmark-json) of the run to check")
    ap.add_argument("--baseline", default=str(DEFAULT_BASELINE), help="stored ratios (default %(default)s)")
    ap.add_argument("--reference", default=None,
                    help=f"benchmark the ratios are relative to (default: the baseline's, else {DEFAULT_REFERENCE})")
    ap.add_argument("--factor", type=float, default=DEFAULT_FACTOR,
                    help="fail when a ratio grew by more than this factor (default %(default)s)")
    ap.add_argument("--write-baseline", action="store_true", help="store this run's ratios as the baseline")
    args = ap.parse_args(argv)
    if not args.factor > 1:
        print(f"speed_guard: --factor must be above 1, got {args.factor}", file=sys.stderr)
        return 2
    try:
        run = load_run(args.json)
        medians, info = read_medians(args.json, run)
        base_path = Path(args.baseline)
        if args.write_baseline:
            reference = args.reference or DEFAULT_REFERENCE
            cur = ratios(medians, reference)
            base_path.write_text(json.dumps({"reference": reference, "ratios": cur, "source": info},
                                            indent=1, sort_keys=True) + "\n", encoding="utf-8")
            print(f"speed_guard: wrote {len(cur)} ratios (relative to {reference}) to {base_path}")
            return 0
        try:
            stored = json.loads(base_path.read_text(encoding="utf-8"))
            base_ratios = {str(k): float(v) for k, v in stored["ratios"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GuardError(f"{base_path}: cannot read the baseline ({exc}); "
                             "create it with --write-baseline") from None
        reference = args.reference or stored.get("reference", DEFAULT_REFERENCE)
        cur = ratios(medians, reference)
        mins = read_stat(run, "min")
        fastest = ratios(mins, reference) if reference in mins else None
    except GuardError as exc:
        print(f"speed_guard: {exc}", file=sys.stderr)
        return 2
    rows = compare(cur, base_ratios, factor=args.factor, fastest=fastest)
    width = max(len(r["name"]) for r in rows)
    print(f"speed ratios relative to {reference} (median time / reference median; fail above {args.factor:g}x "
          f"the baseline)")
    print(f"{'benchmark':<{width}}  {'baseline':>9}  {'current':>9}  {'change':>7}  status")
    for r in rows:
        change = "-" if r["change"] is None else f"{r['change']:.2f}x"
        note = ""
        if r["status"] == "noisy" and fastest:
            note = f" (fastest round {fastest[r['name']] / r['baseline']:.2f}x: load, not code)"
        print(f"{r['name']:<{width}}  {_fmt(r['baseline']):>9}  {_fmt(r['current']):>9}  {change:>7}  "
              f"{r['status']}{note}")
    bad = [r for r in rows if r["status"] == "REGRESSION"]
    checked = sum(r["change"] is not None for r in rows)
    if bad:
        print(f"speed_guard: FAIL, {len(bad)} of {checked} benchmarks more than {args.factor:g}x slower relative to "
              f"{reference}: " + ", ".join(f"{r['name']} ({r['change']:.1f}x)" for r in bad))
        return 1
    print(f"speed_guard: PASS, {checked} benchmarks within {args.factor:g}x of the baseline ratios")
    return 0


if __name__ == "__main__":
    sys.exit(main())
