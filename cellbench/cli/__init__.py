"""The command line: the only place that parses arguments and prints.

Each module named in :data:`COMMAND_MODULES` has a ``register(subparsers)`` function that adds its
sub-commands; each sub-command sets ``func(args) -> int``.

:func:`main` is the one error boundary: a usage error (argparse) and every error caused by input
(:class:`~cellbench.errors.CellbenchError`, raised where the input is read or checked) print one
line ``cellbench: error: ...`` naming the file or option and what to do, with exit status 2 and no
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import CellbenchError

COMMAND_MODULES = ["core", "bench", "sim", "nets"]


class UsageError(CellbenchError):
    """A command line that argparse cannot parse (unknown option, missing argument, bad type)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors reach :func:`main`'s boundary instead of exiting with usage text."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cellbench",
        description="Colour normalization of blood-cell images between digital microscopes, and its benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"cellbench {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"cellbench: error: {text}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(_one_line(exc), file=sys.stderr)
        return 2
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
        print(_one_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellbench: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130
