"""Benchmark commands: ``run-all``, ``compare``, ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .core import _parse_set


def _run_dir(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    tag = args.data.split(":")[0] if args.data else "synthetic"
    return Path("reports") / f"run-{args.profile}-{tag}"


def cmd_run_all(args: argparse.Namespace) -> int:
    overrides = _parse_set(args.set)
    if args.data.startswith("cross:"):
        from ..crossbench import CrossBenchmark

        bench = CrossBenchmark(_run_dir(args), profile=args.profile, data=args.data, methods=args.methods,
                               device=args.device, seed=args.seed, overrides=overrides, progress=not args.quiet,
                               x_test=args.x_test, scale=args.scale)
    else:
        from ..bench import Benchmark

        bench = Benchmark(_run_dir(args), profile=args.profile, data=args.data, methods=args.methods,
                          device=args.device, seed=args.seed, overrides=overrides, progress=not args.quiet)
    out = bench.run(report=not args.no_report)
    print(f"results: {bench.run_dir / 'results.json'}")
    print(f"report:  {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..bench import Benchmark

    run_dir = Path(args.run) if args.run else Path("reports") / f"run-{args.profile}-{args.data.split(':')[0]}"
    bench = Benchmark(run_dir, profile=args.profile, data=args.data, methods=args.methods, device=args.device,
                      seed=args.seed, overrides=_parse_set(args.set), progress=not args.quiet)
    out = bench.run(comparison=True)
    print(f"comparison report: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import build_report

    if args.markdown:
        from ..report import tables
        from ..results import load_results

        records, _ = load_results(args.run_dir)  # a clear CellbenchError when there are none
        methods = tables.order_methods(r.method for r in records)
        sections = [("Leaderboard", tables.leaderboard(records, methods)),
                    ("Speed", tables.speed_table(records, methods))]
        if any(r.metric == "accuracy_gain" for r in records):
            sections.append(("Accuracy gain over raw X (cross-system track)", tables.metric_columns(
                records, methods, [("accuracy", "all"), ("accuracy_gain", "all")])))
        sections.append(("Colour statistics: ΔE00 between the mean Lab colours of each region and Y's",
                         tables.metric_columns(records, methods, [("colour_delta_e", reg) for reg in (
                             "wbc", "nucleus", "cytoplasm", "red_cell", "background")])))
        sections += [(t.caption, t) for t in tables.per_cell_type_tables(records, methods)]
        for title, table in sections:
            if table:
                print(f"### {title}\n\n{tables.to_markdown(table)}")
        return 0
    out = build_report(Path(args.run_dir), out=Path(args.out) if args.out else None)
    print(f"report: {out}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick", help="run profile from models/run-all.toml: quick or paper")
    p.add_argument("--data", default="synthetic",
                   help="synthetic (default: the embedded simulator), paired:ROOT, resim:DIR, cross:x=DIR,y=DIR")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a profile option (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-all", help="run the whole benchmark end to end and write the HTML report")
    _common(p)
    p.add_argument("--out", help="run folder (default reports/run-<profile>-<data kind>)")
    p.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m],
                   help="comma-separated subset of methods (default: every registered normalizer)")
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
