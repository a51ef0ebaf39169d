"""The ``bnlab`` command: argument parsing, the only place that reads argv.

Each subcommand lives in its own module of this package with an ``add_parser(subparsers)``
function that registers it and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

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


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        # Library errors carry a message that names the problem and the fix.
        if os.environ.get("BNLAB_DEBUG"):
            traceback.print_exc()
        print(f"bnlab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The message; an ``OSError`` of a full disk that names no file says "disk full"."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and "disk full" not in text:
        where = f" writing {exc.filename}" if exc.filename else ""
        text = (
            f"disk full{where} ({exc.strerror or text}); free some space or choose another folder"
        )
    return text


def _interrupted(name: str) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(2, f"{name}: interrupted\n".encode())
        os._exit(INTERRUPTED)

    return handler


def _end_process(status: int, name: str) -> NoReturn:
    """End this process with ``status`` once its work is done, Ctrl-C-proof.

    Python's own teardown first restores SIGINT's default action and then frees every
    module: a Ctrl-C there killed bnlab by signal 2 with no word. Instead, until the
    end a Ctrl-C prints one line and exits 130; non-daemon threads are joined, the
    exit handlers run, the output is flushed, and the process ends here.
    """
    silent = status == INTERRUPTED  # the line was printed already
    signal.signal(
        signal.SIGINT,
        (lambda signum, frame: os._exit(INTERRUPTED)) if silent else _interrupted(name),
    )
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


#: Exit status of an interrupted command (128 + SIGINT, the shell's convention).
INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status.

    Exit status: 0 success, 1 a failure the command reports (bad data, a check that
    failed), 2 bad usage (argparse's convention), 130 interrupted: Ctrl-C at any moment
    prints one line and exits 130. Called without ``argv`` (the console script,
    ``python -m bnlab``), it owns the process and ends it itself (see ``_end_process``);
    with ``argv`` it returns.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    # The command's name for a Ctrl-C before the parser has run.
    name = f"bnlab {words[0]}" if words and words[0] in SUBCOMMANDS else "bnlab"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        name = f"bnlab {args.command}" if getattr(args, "command", None) else name
        if getattr(args, "func", None) is None:
            parser.print_help()
            status = 2
        else:
            status = _run(args)
    except KeyboardInterrupt:
        # A second Ctrl-C while the line is printed must not end in a traceback.
        if argv is None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"{name}: interrupted", file=sys.stderr)
        status = INTERRUPTED
    if argv is None:
        _end_process(status, name)
    return status


if __name__ == "__main__":
    sys.exit(main())
