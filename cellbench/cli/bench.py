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


def _full_report(run_dir: Path, methods: list[str], title: str) -> Path:
    from ..report import build_report

    return build_report(run_dir, title=title)


def _comparison_report(run_dir: Path, methods: list[str], title: str) -> Path:
    from ..report import build_comparison_report

    return build_comparison_report(run_dir, methods)


def cmd_run_all(args: argparse.Namespace) -> int:
    from ..bench import open_benchmark
    from ..bench.config import parse_set_items

    bench = open_benchmark(_run_dir(args, args.out), profile=args.profile, data=args.data, methods=args.methods,
                           device=args.device, seed=args.seed, overrides=parse_set_items(args.set),
                           progress=not args.quiet, x_test=args.x_test, scale=args.scale)
    out = bench.run(finish=None if args.no_report else _full_report)
    print(f"results: {bench.run_dir / 'results.json'}")
    print(f"report:  {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..bench import check_compare_methods, open_benchmark
    from ..bench.config import parse_set_items

    methods = check_compare_methods(args.methods)  # before anything is read or written
    bench = open_benchmark(_run_dir(args, args.run), profile=args.profile, data=args.data, methods=methods,
                           device=args.device, seed=args.seed, overrides=parse_set_items(args.set),
                           progress=not args.quiet)
    out = bench.run(comparison=True, finish=_comparison_report)
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
