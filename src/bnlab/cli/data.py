"""``bnlab data``: find, fetch and check the Fashion-MNIST files.

  bnlab data verify DIR            one line per file (ok, or what is wrong); exit 0 when
                                   all four are good, 1 otherwise
  bnlab data download [--dir DIR]  fetch what is missing or damaged (md5-checked)
  bnlab data where [--data-dir DIR]
                                   print the folder the other commands will use

Where the data are looked for, in this order: the --data-dir option, the environment
variable BNLAB_DATA_DIR, the user cache ($XDG_CACHE_HOME/bnlab/fashion-mnist, or
~/.cache/bnlab/fashion-mnist). Commands that need the data download it into the user
cache when none of these holds it. A folder may hold the four official .gz files
(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
t10k-labels-idx1-ubyte.gz) or their decompressed copies.

Other commands register ``--data-dir`` with ``add_data_dir_argument(parser)`` and get
their splits with ``load_splits(args)``: the one place that finds the folder, loads the
training and test sets and applies ``--limit-train`` / ``--limit-test``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from bnlab.cli._args import add_command
from bnlab.data.fashion_mnist import (
    ENV_VAR,
    FILES,
    MIRROR_URL,
    FileReport,
    ProgressCallback,
    default_cache_dir,
    download_fashion_mnist,
    load_fashion_mnist,
    resolve_data_dir,
    verify_folder,
)

__all__ = [
    "Splits",
    "add_data_dir_argument",
    "add_parser",
    "cache_dir_from_env",
    "data_dir_from_env",
    "load_splits",
]

DATA_DIR_HELP = (
    f"folder holding the Fashion-MNIST files (default: ${ENV_VAR}, else the user cache "
    "$XDG_CACHE_HOME/bnlab/fashion-mnist or ~/.cache/bnlab/fashion-mnist, downloaded there "
    "when missing)"
)


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add the standard ``--data-dir DIR`` option (``args.data_dir``, None by default)."""
    parser.add_argument("--data-dir", metavar="DIR", default=None, help=DATA_DIR_HELP)


def cache_dir_from_env() -> Path:
    """The user cache folder, from ``XDG_CACHE_HOME`` and the home folder."""
    return default_cache_dir(os.environ.get("XDG_CACHE_HOME"), Path.home())


class _ProgressBars:
    """A ``ProgressCallback`` that draws one rich bar per file, on stderr, when called."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._progress.start()
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total)
        self._progress.update(self._tasks[name], completed=done, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@contextmanager
def _progress_bars() -> Iterator[ProgressCallback]:
    bars = _ProgressBars(Console(stderr=True))
    try:
        yield bars
    finally:
        bars.close()


def data_dir_from_env(flag: str | os.PathLike[str] | None, *, download: bool = True) -> Path:
    """The verified Fashion-MNIST folder for a command: the CLI side of the lookup.

    Reads ``BNLAB_DATA_DIR``, ``XDG_CACHE_HOME`` and the home folder, then applies
    :func:`bnlab.data.fashion_mnist.resolve_data_dir` (``flag``, then the variable, then
    the user cache, else a download into the cache with progress bars on stderr).

    Args:
        flag: the value of ``--data-dir`` (None when not given).
        download: allow the download into the user cache.

    Returns:
        The folder, with the four files verified.

    Raises:
        DatasetNotFoundError, ChecksumError: with one message saying where to put the
            files (``bnlab.cli.main`` prints it as ``bnlab CMD: error: ...``).
    """
    env_value = os.environ.get(ENV_VAR) or None
    with _progress_bars() as progress:
        return resolve_data_dir(
            flag, env_value, cache_dir_from_env(), download=download, progress=progress
        )


@dataclass(frozen=True)
class Splits:
    """The Fashion-MNIST a command works on.

    Attributes:
        tensors: ``train_images``, ``test_images`` (uint8 ``(N, 28, 28)``),
            ``train_labels``, ``test_labels`` (int64 ``(N,)``): the keys
            ``bnlab.lab`` and ``bnlab.lab.d2l`` take.
        data_dir: the folder they were read from.
    """

    tensors: dict[str, torch.Tensor]
    data_dir: Path

    def describe(self) -> str:
        """One line for the console: where the data came from and how much of it."""
        return (
            f"Fashion-MNIST from {self.data_dir}: {len(self.tensors['train_labels'])} "
            f"training and {len(self.tensors['test_labels'])} test images"
        )


def load_splits(args: argparse.Namespace) -> Splits:
    """The training and test sets for a command: its ``--data-dir``, then its limits.

    Finds the folder with ``data_dir_from_env(args.data_dir)``, loads both splits and keeps
    the first ``args.limit_train`` / ``args.limit_test`` images where the command has
    those options (``add_run_arguments``) and they are set.
    """
    data_dir = data_dir_from_env(args.data_dir)
    tensors: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split, data_dir)
        limit = getattr(args, f"limit_{split}", None)
        if limit:
            images, labels = images[:limit], labels[:limit]
        tensors[f"{split}_images"] = images
        tensors[f"{split}_labels"] = labels.to(torch.int64)
    return Splits(tensors, Path(data_dir))


# --- the subcommands ----------------------------------------------------------------------


def _report_lines(reports: list[FileReport]) -> list[str]:
    width = max(len(str(r.status)) for r in reports)
    name_width = max(len(r.spec.name) for r in reports)
    return [f"{r.status!s:<{width}}  {r.spec.name:<{name_width}}  {r.reason}" for r in reports]


def _verify(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    reports = verify_folder(folder)
    for line in _report_lines(reports):
        print(line)
    bad = sum(not r.ok for r in reports)
    if bad:
        print(
            f"{bad} of {len(reports)} files are not usable in {folder}; "
            f"'bnlab data download --dir {folder}' fetches the missing or damaged ones"
        )
        return 1
    print(f"all {len(reports)} Fashion-MNIST files verified in {folder}")
    return 0


def _download(args: argparse.Namespace) -> int:
    if args.dir is not None:
        folder = Path(args.dir)
    else:
        folder = Path(os.environ.get(ENV_VAR) or cache_dir_from_env())
    with _progress_bars() as progress:
        reports = download_fashion_mnist(
            folder, base_url=args.base_url, tries=args.tries, progress=progress
        )
    for line in _report_lines(reports):
        print(line)
    print(f"Fashion-MNIST ready in {folder}")
    return 0


def _where(args: argparse.Namespace) -> int:
    print(data_dir_from_env(args.data_dir, download=False))
    return 0


HELP = "find, fetch and check the Fashion-MNIST files"

#: The actions of ``bnlab data``: name -> (function, help, description).
_ACTIONS: dict[str, tuple[Callable[[argparse.Namespace], int], str, str]] = {
    "verify": (
        _verify,
        "check the four files in a folder (checksums, IDX headers)",
        "Check the four Fashion-MNIST files in DIR: the official md5 of each .gz, or the "
        "sha256 of a decompressed copy; for a file that fails, say why (missing, "
        "truncated, wrong magic number, not gzip, ...). Prints one line per file; exit "
        "status 0 when all four are good, 1 otherwise.",
    ),
    "download": (
        _download,
        "download the files that are missing or damaged",
        f"Download the Fashion-MNIST files from Zalando's mirror ({MIRROR_URL}) into "
        f"DIR (default: ${ENV_VAR} if set, else the user cache). Files that already "
        "verify are kept; each download is checked against the official md5 and only "
        "then moved into place; 3 tries per file.",
    ),
    "where": (
        _where,
        "print the folder the data are taken from (never downloads)",
        f"Print the folder that holds verified Fashion-MNIST files: --data-dir, else "
        f"${ENV_VAR}, else the user cache. When none does, say where to put the files "
        f"({', '.join(spec.name for spec in FILES)}) and exit with status 1.",
    ),
}


def add_parser(subparsers: Any) -> None:
    description = (__doc__ or "").split("\n\nOther commands")[0].replace("``", "")
    p = add_command(subparsers, "data", _usage, HELP, description, as_written=True)
    commands = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions = {name: add_command(commands, name, *entry) for name, entry in _ACTIONS.items()}
    actions["verify"].add_argument("dir", metavar="DIR", help="the folder to check")
    download = actions["download"]
    download.add_argument("--dir", metavar="DIR", default=None, help="where to put the files")
    download.add_argument(
        "--base-url", default=MIRROR_URL, help=f"mirror to download from (default {MIRROR_URL})"
    )
    download.add_argument("--tries", type=int, default=3, help="attempts per file (default 3)")
    add_data_dir_argument(actions["where"])


def _usage(args: argparse.Namespace) -> int:
    """``bnlab data`` without an action: its help, and the exit status of bad usage."""
    args.parser.print_help()
    return 2
