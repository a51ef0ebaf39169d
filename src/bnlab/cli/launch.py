"""``bnlab train --nproc N``: start N training processes with torchrun's machinery.

The run is what ``torchrun --standalone --nproc-per-node N -m bnlab train ...`` does,
started from inside ``bnlab``: the same elastic agent (``torch.distributed.launcher.
elastic_launch``) with a standalone c10d rendezvous on localhost (a free port), no
restarts, and its failure handling (when a worker exits with an error, the agent stops
the others at once). Each worker is the ``bnlab train`` command itself, with the same
flags minus ``--nproc``, and finds its rank in the variables the agent sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

Why the function entry point rather than a ``python -m bnlab`` child per rank: workers
are forked from a ``forkserver`` that imported torch and bnlab once (and ran no torch
op, so no thread pool or CUDA context is inherited), which starts N workers in well under
a second instead of N fresh interpreters importing torch (seconds each, more on a busy
machine). ``spawn`` is used where forkserver does not exist.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from bnlab.cli.main import SUBCOMMANDS

__all__ = [
    "LOST_CONTACT_STATUS",
    "PRELOAD",
    "WORKER",
    "adopt",
    "launch",
    "threads_per_worker",
    "worker_argv",
    "worker_main",
]

#: Exit status of a rank whose collective failed because another rank was gone or stuck
#: (``bnlab train`` prints a line saying so); the launcher names the other rank.
LOST_CONTACT_STATUS = 3

#: Seconds the workers get to exit after Ctrl-C before they are killed.
SHUTDOWN_TIMEOUT_S = 5

#: Modules the forkserver imports once for all workers: torch with the parts a training
#: step imports on first use (building an optimizer imports torch._dynamo, seconds), and
#: every subcommand (a worker's parser imports them all).
PRELOAD = [
    "torch",
    "torch.distributed",
    "torch._dynamo",
    "torch.fx.experimental.symbolic_shapes",
    "bnlab.cli.main",
    *(f"bnlab.cli.{name}" for name in SUBCOMMANDS),
]


def adopt(environ: dict[str, str], cwd: str) -> None:
    """Take the launcher's environment and working folder (forked workers start with the
    forkserver's); the variables the agent set for this rank (``RANK``, ...) stay."""
    agent_set = {
        k: v for k, v in os.environ.items() if k in _AGENT_VARS or k.startswith("TORCHELASTIC_")
    }
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)
    os.environ.update(agent_set)
    os.chdir(cwd)


def worker_main(argv: list[str], environ: dict[str, str], cwd: str) -> None:
    """One rank: run ``bnlab`` with ``argv`` in the launcher's environment and folder;
    exit with its status when it is not 0."""
    from bnlab.cli.main import main

    adopt(environ, cwd)
    status = main(argv)
    if status:
        sys.exit(status)


#: The function each worker runs with ``(argv, environ, cwd)`` (tests put a hook here).
WORKER: Callable[[list[str], dict[str, str], str], None] = worker_main
# What torchrun's agent sets for each worker (kept when the launcher's environment is adopted).
_AGENT_VARS = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
        "ROLE_NAME",
        "MASTER_ADDR",
        "MASTER_PORT",
        "OMP_NUM_THREADS",
    }
)


def worker_argv(
    parser: argparse.ArgumentParser, args: argparse.Namespace, command: str
) -> list[str]:
    """The command line that parses to ``args`` again, without ``--nproc``.

    Every option whose value differs from its default is written out (lists and tuples
    comma-separated, flags without a value).
    """
    argv = [command]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "nproc"):
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


@contextlib.contextmanager
def _agent_scope() -> Iterator[None]:
    """Run torchrun's agent in this process and leave the process as it was.

    The agent's log lines stay off the console (a failed worker reports its own error, and
    the launcher says which rank failed); the
    signal handlers and environment variables it installs for its own shutdown are
    put back afterwards, so a caller (a test, a notebook) keeps its Ctrl-C.
    """
    logger = logging.getLogger("torch.distributed.elastic")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    environ = dict(os.environ)
    main_thread = threading.current_thread() is threading.main_thread()
    signals = [signal.SIGTERM, signal.SIGINT]
    signals += [getattr(signal, name) for name in ("SIGHUP", "SIGQUIT") if hasattr(signal, name)]
    handlers = {sig: signal.getsignal(sig) for sig in signals} if main_thread else {}
    try:
        yield
    finally:
        logger.setLevel(level)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)


def _start_method() -> str:
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
        return "forkserver"
    return "spawn"


def launch(argv: Sequence[str], nproc: int, *, resume_hint: str = "") -> dict[int, Any]:
    """Run ``WORKER(argv, environ, cwd)`` in ``nproc`` processes here, as torchrun does.

    Each worker runs with this process's environment variables and working folder (as a
    torchrun child would), plus the variables the agent sets for its rank.

    Args:
        argv: the worker's command line (``bnlab`` arguments, without ``--nproc``).
        nproc: number of processes, >= 1.
        resume_hint: appended to the failure message (how to continue the run).

    Returns:
        The workers' return values by rank.

    Raises:
        RuntimeError: a worker failed (the message names the first failed rank and its
            exit status; its own error was printed above by the worker); the other
            workers have been stopped.
        KeyboardInterrupt: the launcher was interrupted (Ctrl-C, SIGTERM); the workers
            have been stopped.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"launch: nproc must be >= 1, got {nproc}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"bnlab-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,
        monitor_interval=0.1,
        start_method=_start_method(),
        # After Ctrl-C, a rank blocked inside a collective sees its KeyboardInterrupt only
        # when the collective returns: it gets this long, then SIGKILL (torch: 30 s).
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    environ, cwd = dict(os.environ), os.getcwd()
    with _agent_scope():
        try:
            return elastic_launch(config, WORKER)(list(argv), environ, cwd)
        except ChildFailedError as exc:
            # The rank that failed by itself, not one that lost contact with it.
            causes = {r: f for r, f in exc.failures.items() if f.exitcode != LOST_CONTACT_STATUS}
            rank, failure = min(
                (causes or exc.failures).items(), key=lambda item: (item[1].timestamp, item[0])
            )
            status = failure.exitcode
            if status is not None and status < 0:
                how = f"was killed by signal {-status}"
            elif status == LOST_CONTACT_STATUS:
                how = "lost contact with the other processes (one hung or was stopped)"
            else:
                how = f"exited with status {status}"
            raise RuntimeError(
                f"rank {rank} of {nproc} {how} (its error is printed above); the other "
                f"ranks were stopped{resume_hint}"
            ) from None
        except SignalException as exc:
            raise KeyboardInterrupt(f"stopped by {exc.sigval.name}") from None


def threads_per_worker(nproc: int) -> int:
    """CPU threads each of ``nproc`` workers uses by default: the cores shared out."""
    return max(1, torch.get_num_threads() // nproc)
