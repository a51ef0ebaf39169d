"""How many processes and threads a command uses: from the cores that are free.

Torch starts one thread per core it may run on, whether or not other work runs there.
Beside other jobs that is more threads than free cores: the threads of a parallel region
wait for a descheduled sibling at its end, and a step takes many times its quiet time.
The commands therefore count the free cores (the cores this process may use, less the
1-minute load average, rounded) and share them out:

- one training (``bnlab train``): one process, a thread per free core;
- independent runs (``bnlab d2l``'s variants and seeds, ``bnlab lab``'s grid cells), when
  parallel processes pay: a process per free core (at most one per run), one thread each.
  Two single-thread processes beat one process of two threads for a small network;
- an explicit ``--threads``/``--workers`` (or ``OMP_NUM_THREADS`` in the environment, for
  the threads) wins, and the other setting is derived from it.

:func:`choose_layout` is the decision on given numbers (tested); :func:`machine` reads
them; :func:`pick` does both. Each command prints :meth:`Layout.line`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Layout", "Machine", "choose_layout", "free_cores", "machine", "pick"]


@dataclass(frozen=True)
class Machine:
    """What the decision reads.

    Attributes:
        cpus: cores this process may run on (``os.sched_getaffinity``).
        load: the 1-minute load average, or None where the system has none.
        env_threads: ``OMP_NUM_THREADS`` when set to a whole number >= 1, else None.
    """

    cpus: int
    load: float | None
    env_threads: int | None = None


@dataclass(frozen=True)
class Layout:
    """Processes and threads chosen for a command.

    Attributes:
        workers: processes running independent runs at once (1: this process).
        threads: torch threads in each of them.
        free: the free cores counted.
        machine: what was read.
        why: how the choice was made, for the printed line.
    """

    workers: int
    threads: int
    free: int
    machine: Machine
    why: str

    def line(self) -> str:
        """One line for the terminal: ``cores: 2 free of 2 (load 0.1); 2 processes x 1
        thread (parallel runs)``."""
        load = "no load average" if self.machine.load is None else f"load {self.machine.load:.1f}"
        processes = f"{self.workers} process{'es' if self.workers > 1 else ''}"
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return (
            f"cores: {self.free} free of {self.machine.cpus} ({load}); "
            f"{processes} x {threads} ({self.why})"
        )

    def record(self) -> dict[str, Any]:
        """JSON-ready, for ``environment.json``."""
        return {
            "workers": self.workers,
            "threads": self.threads,
            "free_cores": self.free,
            "why": self.why,
            **{f"machine_{k}": v for k, v in asdict(self.machine).items()},
        }


def free_cores(cpus: int, load: float | None) -> int:
    """Cores not busy: ``cpus - load`` rounded, at least 1 and at most ``cpus``.

    Without a load average every core counts as free.
    """
    if cpus < 1:
        raise ValueError(f"free_cores: cpus must be >= 1, got {cpus}")
    if load is None:
        return cpus
    return max(1, min(cpus, int(cpus - load + 0.5)))


def choose_layout(
    machine: Machine,
    *,
    runs: int = 1,
    parallel_pays: bool = True,
    threads: int | None = None,
    workers: int | None = None,
) -> Layout:
    """Processes and threads for ``runs`` independent runs on ``machine``.

    Args:
        machine: cores, load and the environment's thread setting.
        runs: independent runs the command has (1 for one training).
        parallel_pays: whether starting processes pays for these runs (each spawned
            process costs a few seconds to import torch: not for runs of a few seconds).
        threads: an explicit ``--threads``.
        workers: an explicit ``--workers``.

    Raises:
        ValueError: a setting below 1.
    """
    for name, value in (("runs", runs), ("threads", threads), ("workers", workers)):
        if value is not None and value < 1:
            raise ValueError(f"choose_layout: {name} must be >= 1, got {value}")
    free = free_cores(machine.cpus, machine.load)
    if threads is None and machine.env_threads is not None:
        threads, source = machine.env_threads, "OMP_NUM_THREADS"
    else:
        source = "--threads"
    if workers is not None:
        workers = min(workers, runs)
        if threads is None:
            return Layout(workers, max(1, free // workers), free, machine, "--workers")
        return Layout(workers, threads, free, machine, f"--workers, {source}")
    if threads is not None:
        fit = max(1, free // threads) if parallel_pays else 1
        return Layout(min(runs, fit), threads, free, machine, source)
    if parallel_pays and runs > 1 and free > 1:
        count = min(runs, free)
        return Layout(count, max(1, free // count), free, machine, "parallel runs")
    return Layout(1, free, free, machine, "free cores" if runs == 1 else "one process")


def machine(environ: Mapping[str, str] | None = None) -> Machine:
    """Read the cores this process may use, the 1-minute load and ``OMP_NUM_THREADS``."""
    environ = os.environ if environ is None else environ
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    text = environ.get("OMP_NUM_THREADS", "").strip()
    env_threads = int(text) if text.isdigit() and int(text) >= 1 else None
    return Machine(cpus=max(1, cpus), load=load, env_threads=env_threads)


def pick(
    *,
    runs: int = 1,
    parallel_pays: bool = True,
    threads: int | None = None,
    workers: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Layout:
    """:func:`choose_layout` on this machine now."""
    return choose_layout(
        machine(environ), runs=runs, parallel_pays=parallel_pays, threads=threads, workers=workers
    )
