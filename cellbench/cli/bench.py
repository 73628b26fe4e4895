"""Benchmark commands: ``run-all``, ``compare``, ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run_dir(args: argparse.Namespace, given: str | None) -> Path:
    if given:
        return Path(given)
    tag = args.data.split(":")[0] if args.data else "synthetic"
    return Path("reports") / f"run-{args.profile}-{tag}"


def _methods(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _overrides(args: argparse.Namespace, parse_set_items) -> dict:
    """``--set`` items, with ``--stream MODE`` as ``stream=MODE`` (the run-profile key it sets)."""
    out = parse_set_items(args.set)
    if getattr(args, "stream", None) is not None:
        out["stream"] = args.stream
    return out


def _full_report(run_dir: Path, methods: list[str], title: str) -> Path:
    from ..report import build_report

    return build_report(run_dir, title=title)


def _comparison_report(run_dir: Path, methods: list[str], title: str) -> Path:
    from ..report import build_comparison_report

    return build_comparison_report(run_dir, methods)


def _open_run_all(args: argparse.Namespace, run_dir: Path, seed: int):
    from ..bench import open_benchmark
    from ..bench.config import parse_set_items

    bench = open_benchmark(run_dir, profile=args.profile, data=args.data, methods=args.methods,
                           device=args.device, seed=seed, overrides=_overrides(args, parse_set_items),
                           progress=not args.quiet, x_test=args.x_test, scale=args.scale)
    return bench.configure(jobs=args.jobs, redo_speed=args.redo_speed)


def cmd_run_all(args: argparse.Namespace) -> int:
    if args.seeds:
        return _run_seeds(args)
    bench = _open_run_all(args, _run_dir(args, args.out), args.seed)
    out = bench.run(finish=None if args.no_report else _full_report)
    print(f"results: {bench.run_dir / 'results.json'}")
    print(f"report:  {out}")
    return 0


def _run_seeds(args: argparse.Namespace) -> int:
    """``run-all --seeds A,B``: one run folder per seed (RUN/seed-<s>/) and Kendall's tau between their rankings."""
    from ..bench.seeds import RANK_STABILITY, parse_seeds, run_seeds, seed_dir

    seeds = parse_seeds(args.seeds)
    run_dir = _run_dir(args, args.out)
    for s in seeds:  # every option checked before the first seed starts
        _open_run_all(args, seed_dir(run_dir, s), s)
    stability, outputs = run_seeds(run_dir, seeds, lambda d, s: _open_run_all(args, d, s),
                                   finish=None if args.no_report else _full_report)
    for s in seeds:
        print(f"seed {s}: {outputs[s]}")
    print(f"rank stability: {run_dir / RANK_STABILITY}")
    for c in stability["comparisons"]:
        tau = "undefined (every method ties)" if c["tau"] is None else f"{c['tau']:+.3f}"
        p = "" if c["pvalue"] is None else f", p = {c['pvalue']:.3g}"
        print(f"  {c['metric']} ({c['region']}), seeds {c['seed_a']} vs {c['seed_b']}: Kendall's tau = {tau}"
              f"{p}, {c['n_methods']} methods")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..bench import check_compare_methods, open_benchmark
    from ..bench.config import parse_set_items

    methods = check_compare_methods(args.methods)  # before anything is read or written
    bench = open_benchmark(_run_dir(args, args.run), profile=args.profile, data=args.data, methods=methods,
                           device=args.device, seed=args.seed, overrides=_overrides(args, parse_set_items),
                           progress=not args.quiet)
    bench.configure(jobs=args.jobs, redo_speed=args.redo_speed)
    out = bench.run(comparison=True, finish=_comparison_report)
    from ..report.build import comparison_summary

    print(comparison_summary(bench.run_dir, methods), end="")
    print(f"comparison report: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import build_report

    if args.markdown:
        from ..report import markdown_report

        print(markdown_report(Path(args.run_dir)), end="")
        return 0
    out = build_report(Path(args.run_dir), out=Path(args.out) if args.out else None)
    print(f"report: {out}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick", help="run profile from models/run-all.toml: quick or paper")
    p.add_argument("--data", default="synthetic",
                   help="synthetic (default: the embedded simulator), paired:ROOT, resim:DIR, cross:x=DIR,y=DIR")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a run-profile option, e.g. --set size=128 (repeatable; see models/run-all.toml)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--jobs", default=None, metavar="N",
                   help="worker processes for independent stages (fits, evaluations; default: the usable CPU "
                        "cores); results are identical for every N (docs/speed.md)")
    p.add_argument("--stream", choices=["auto", "on", "off"], default=None,
                   help="read folder datasets (cross:, paired:) on demand through a bounded pipeline instead of "
                        "decoding them into memory (same results); auto (the profile's default) streams when "
                        "the decoded images would exceed 4 GB; the cache size is --set stream_cache_mb=MB")
    p.add_argument("--redo-speed", action="store_true",
                   help="re-measure only the speed stages (e.g. after a disturbed measurement); reuse the rest")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-all", help="run the whole benchmark end to end and write the HTML report")
    _common(p)
    p.add_argument("--out", help="run folder (default reports/run-<profile>-<data kind>)")
    p.add_argument("--methods", type=_methods,
                   help="comma-separated methods (default: every registered normalizer); KIND:TEACHER distils "
                        "the fitted TEACHER into a KIND student, e.g. lut3d:pcnet")
    p.add_argument("--x-test", help="cross track: evaluate on this external X folder instead of the X test split")
    p.add_argument("--scale", choices=["none", "wbc", "rbc"], default="none",
                   help="cross track: rescale X to Y's cell size before any method")
    p.add_argument("--no-report", action="store_true", help="write results only")
    p.add_argument("--seeds", metavar="A,B",
                   help="rank stability: run the benchmark once per seed into OUT/seed-<s>/ (each resumable) and "
                        "report Kendall's tau between the seeds' method rankings (OUT/rank-stability.json); "
                        "replaces --seed")
    p.set_defaults(func=cmd_run_all)

    p = sub.add_parser("compare", help="evaluate just the named methods on the same data and classifier")
    p.add_argument("methods", nargs="+", help="registry keys, e.g. ccgan pcnet hm")
    p.add_argument("--run", help="run folder to reuse (default reports/run-<profile>-<data kind>)")
    _common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="rebuild the HTML report from stored results (no recomputation)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--markdown", action="store_true",
                   help="print the leaderboard, speed, colour and per-cell-type tables as Markdown, not HTML")
    p.set_defaults(func=cmd_report)
