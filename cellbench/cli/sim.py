"""``cellbench simulate``: write simulated pairs; ``simulate calibrate``; ``simulate resim``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError


def _system_help(role: str, default: str) -> str:
    return f"{role} system: a built-in name (dm1200-like, dm96-like) or a .toml file (default {default})"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate paired two-system data (also: simulate calibrate | resim)",
        description="Render stained blood-cell scenes through two digital microscopes and write a paired "
        "dataset ROOT/X, ROOT/Y, ROOT/masks (class-balanced; byte-identical for the same "
        "arguments whatever --workers is). Sub-commands: `calibrate` compares simulated and "
        "real colours; `resim` turns a real labelled folder into pairs.",
    )
    p.add_argument("--n", type=int, default=800, help="number of pairs (default 800)")
    p.add_argument("--size", type=int, default=256, help="image size in px at 0.1 um/px (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output folder ROOT")
    p.add_argument("--x-system", default="dm1200-like", help=_system_help("source (X)", "dm1200-like"))
    p.add_argument("--y-system", default="dm96-like", help=_system_help("target (Y)", "dm96-like"))
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument(
        "--max-shift", type=float, default=0.5, help="max misregistration shift in px (default 0.5)"
    )
    p.add_argument("--max-rotation", type=float, default=0.1, help="max misregistration rotation in degrees")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_simulate, _parser=p)
    ssub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")

    c = ssub.add_parser(
        "calibrate",
        help="compare simulated and real colours per class and region",
        description="Segment real and simulated Y images into background, red cells, WBC "
        "nucleus and cytoplasm and print mean CIELAB and CIEDE2000 per class/region.",
    )
    c.add_argument(
        "--real", type=Path, required=True, help="real labelled folder ROOT/<class>/<file> (e.g. PBC)"
    )
    c.add_argument("--system", default="dm96-like", help="system to compare (default dm96-like)")
    c.add_argument("--n-per-class", type=int, default=40, help="images per class, real and simulated")
    c.add_argument("--size", type=int, default=256)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", type=Path, help="also write the table as JSON")
    c.set_defaults(func=_calibrate)

    r = ssub.add_parser(
        "resim",
        help="re-render real images under another system (real Y, simulated X)",
        description="Estimate per-pixel absorber amounts of each real image under the source "
        "system (NNLS in optical density after inverting its ISP), render them under "
        "the target system and write (simulated X, real Y) pairs with masks.",
    )
    r.add_argument("--real", type=Path, required=True, help="real labelled folder ROOT/<class>/<file>")
    r.add_argument("--from", dest="src", default="dm96-like", help="system of the real images")
    r.add_argument("--to", dest="dst", default="dm1200-like", help="system to render (X)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--size", type=int, default=256)
    r.add_argument("--limit-per-class", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_resim)


def _simulate(args) -> int:
    from ..sim import write_paired_dataset

    if args.out is None:
        args._parser.print_usage(sys.stderr)
        raise ConfigError("simulate: --out ROOT is required")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    root = write_paired_dataset(
        args.out,
        args.n,
        size=args.size,
        seed=args.seed,
        x_system=args.x_system,
        y_system=args.y_system,
        workers=args.workers,
        progress=not args.no_progress,
        max_shift_px=args.max_shift,
        max_rotation_deg=args.max_rotation,
    )
    print(f"wrote {args.n} pairs to {root} (X: {args.x_system}, Y: {args.y_system})")
    return 0


def _calibrate(args) -> int:
    from ..sim.calibrate import calibration_table, format_table

    rows = calibration_table(
        args.real, system=args.system, n_per_class=args.n_per_class, size=args.size, seed=args.seed
    )
    print(format_table(rows))
    if args.json:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _resim(args) -> int:
    from ..sim.resim import resimulate_folder

    n = resimulate_folder(
        args.real,
        args.out,
        src=args.src,
        dst=args.dst,
        size=args.size,
        limit_per_class=args.limit_per_class,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"wrote {n} pairs (X: {args.dst} re-simulated, Y: real) to {args.out}")
    return 0
