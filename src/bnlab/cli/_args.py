"""argparse value types that validate, so a bad value exits 2 with a clear message; the
registration of a subcommand and the options several commands share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "add_command",
    "add_run_arguments",
    "add_workers_argument",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "unit_float",
]

T = TypeVar("T", int, float)


def _checked(
    name: str,
    convert: Callable[[str], T],
    accept: Callable[[T], bool],
    expected: str,
    out_of_range: str | None = None,
) -> Callable[[str], T]:
    """An argparse ``type``: ``convert(text)``, kept when ``accept`` says so.

    The message says what was ``expected`` and shows the received text (``repr`` when
    it does not convert; a whole number as parsed, a float as typed, when out of range;
    ``out_of_range`` replaces ``expected`` there when given).
    """

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            shown = value if convert is int else text
            raise argparse.ArgumentTypeError(f"expected {out_of_range or expected}, got {shown}")
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


positive_int = _checked("positive_int", int, lambda v: v >= 1, "a whole number >= 1")
"""An int >= 1."""
non_negative_int = _checked("non_negative_int", int, lambda v: v >= 0, "a whole number >= 0")
"""An int >= 0."""
positive_float = _checked(
    "positive_float",
    float,
    lambda v: v > 0 and math.isfinite(v),
    "a number > 0",
    "a finite number > 0",
)
"""A finite float > 0."""
unit_float = _checked("unit_float", float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
"""A float in [0, 1]."""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every training command shares: where, how many threads, how much data."""
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default cpu)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--limit-train", type=positive_int, default=None, help="use the first N training images"
    )
    parser.add_argument(
        "--limit-test", type=positive_int, default=None, help="use the first N test images"
    )


def add_command(
    subparsers: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help: str,
    description: str | None,
    epilog: str | None = None,
    *,
    as_written: bool = False,
) -> argparse.ArgumentParser:
    """Register the subcommand ``name``: ``args.func`` runs it and ``args.parser`` is its
    parser (for usage errors). ``as_written``: the description and the epilog are printed
    with their own line breaks (examples keep their columns), not re-wrapped.
    """
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=(
            argparse.RawDescriptionHelpFormatter if as_written else argparse.HelpFormatter
        ),
    )
    parser.set_defaults(func=func, parser=parser)
    return parser


def add_workers_argument(parser: argparse.ArgumentParser, doing: str, unless: str) -> None:
    """``--workers N``: processes ``doing`` something at once; by default one per free core,
    one thread each, ``unless`` (when that does not pay)."""
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help=f"processes {doing} at once (default: one per free core, one thread each, {unless})",
    )
