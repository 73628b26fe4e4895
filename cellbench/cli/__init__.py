"""The command line: the only place that parses arguments and prints.

Each module named in :data:`COMMAND_MODULES` has a ``register(subparsers)`` function that adds its
sub-commands; each sub-command sets ``func(args) -> int``. Errors derived from
:class:`~cellbench.errors.CellbenchError` are printed as one line (no traceback), exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import CellbenchError

COMMAND_MODULES = ["core", "bench", "sim", "nets"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellbench",
        description="Colour normalization of blood-cell images between digital microscopes, and its benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"cellbench {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose + 1, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CellbenchError as exc:
        print(f"cellbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellbench: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130
