"""The ``bnlab`` command: argument parsing, the only place that reads argv.

Each subcommand lives in its own module of this package with an ``add_parser(subparsers)``
function that registers it and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from bnlab import __version__

# Subcommand modules, in the order --help lists them.
SUBCOMMANDS = ("check", "data", "d2l", "train", "lab", "report")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="bnlab",
        description=(
            "bnlab: batch normalization done right, and every claim about it measured. "
            "Run 'bnlab COMMAND --help' for the options of a command."
        ),
        epilog="Set BNLAB_DEBUG=1 to see full tracebacks of errors.",
    )
    parser.add_argument("--version", action="version", version=f"bnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"bnlab.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status.

    Exit status: 0 success, 1 a failure the command reports (bad data, a check that
    failed), 2 bad usage (argparse's convention), 130 interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"bnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        # Library errors carry a message that names the problem and the fix.
        if os.environ.get("BNLAB_DEBUG"):
            traceback.print_exc()
        print(f"bnlab {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
