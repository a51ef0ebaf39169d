"""How many processes and threads a command uses: from the cores that are free.

Torch starts one thread per core it may run on, whether or not other work runs there.
Beside other jobs that is more threads than free cores: the threads of a parallel region
wait for a descheduled sibling at its end, and a step takes many times its quiet time.
The commands therefore count the free cores and share them out. A free core is one this
process may use that is not busy now: the busy share is read from ``/proc/stat`` over a
short window (:data:`SAMPLE_S`), counting user, system, interrupt and steal time but not
work at a lower priority than ours (a niced job yields its core to a normal one) nor I/O
wait. Where ``/proc/stat`` is missing the 1-minute load average stands in; it lags a
minute behind and counts tasks waiting on disk, so a job that just ended, or an idle
machine with a busy disk, would read as busy:

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
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = [
    "Layout",
    "Machine",
    "busy_cores",
    "choose_layout",
    "cpu_ticks",
    "free_cores",
    "machine",
    "pick",
]

#: Seconds over which :func:`busy_cores` samples ``/proc/stat`` (ticks are 10 ms: a
#: resolution of a twentieth of a core).
SAMPLE_S = 0.2


@dataclass(frozen=True)
class Machine:
    """What the decision reads.

    Attributes:
        cpus: cores this process may run on (``os.sched_getaffinity``).
        load: the 1-minute load average, or None where the system has none.
        env_threads: ``OMP_NUM_THREADS`` when set to a whole number >= 1, else None.
        busy: cores busy now among ``cpus`` (:func:`busy_cores`), or None where it
            cannot be read; when given, it decides the free cores instead of ``load``.
    """

    cpus: int
    load: float | None
    env_threads: int | None = None
    busy: float | None = None


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
        """One line for the terminal: ``cores: 2 free of 2 (busy 0.1); 2 processes x 1
        thread (parallel runs)``."""
        if self.machine.busy is not None:
            load = f"busy {self.machine.busy:.1f}"
        elif self.machine.load is not None:
            load = f"load {self.machine.load:.1f}"
        else:
            load = "no load average"
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

    ``load``: the busy cores (:func:`busy_cores`) or the load average; without either
    every core counts as free.
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
    busy = machine.load if machine.busy is None else machine.busy
    free = free_cores(machine.cpus, busy)
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


def cpu_ticks(stat: str, cores: set[int] | None, count_nice: bool) -> tuple[int, int] | None:
    """``(busy, total)`` ticks of ``cores`` (all cores: None) in the text of
    ``/proc/stat``; None where it names none of them."""
    busy = total = 0
    for line in stat.splitlines():
        name, *fields = line.split() or [""]
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        if cores is not None and int(name[3:]) not in cores:
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user).
        ticks = [int(v) for v in fields[:8]]
        ticks += [0] * (8 - len(ticks))
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
        busy += user + system + irq + softirq + steal + (nice if count_nice else 0)
        total += sum(ticks)
    return (busy, total) if total else None


def _read_ticks(cores: set[int] | None, count_nice: bool) -> tuple[int, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            return cpu_ticks(f.read(), cores, count_nice)
    except (OSError, ValueError):
        return None


def busy_cores(cores: set[int] | None = None, seconds: float = SAMPLE_S) -> float | None:
    """How many of ``cores`` were busy over the next ``seconds`` (``/proc/stat``).

    Busy: user, system, interrupt and steal time; work at a lower priority than this
    process's (nice) counts only when this process is niced itself, since otherwise it
    yields its core. None where ``/proc/stat`` cannot be read (not Linux).
    """
    try:
        count_nice = os.getpriority(os.PRIO_PROCESS, 0) > 0
    except (AttributeError, OSError):
        count_nice = False
    before = _read_ticks(cores, count_nice)
    if before is None:
        return None
    time.sleep(seconds)
    after = _read_ticks(cores, count_nice)
    if after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return share * (len(cores) if cores is not None else os.cpu_count() or 1)


def _affinity() -> set[int] | None:
    """The cores this process may run on; None where the system does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return None


def machine(environ: Mapping[str, str] | None = None, *, sample: bool = True) -> Machine:
    """Read the cores this process may use, how many are busy (``sample``: over
    :data:`SAMPLE_S`), the 1-minute load and ``OMP_NUM_THREADS``."""
    environ = os.environ if environ is None else environ
    affinity = _affinity()
    cpus = (os.cpu_count() or 1) if affinity is None else len(affinity)
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    text = environ.get("OMP_NUM_THREADS", "").strip()
    env_threads = int(text) if text.isdigit() and int(text) >= 1 else None
    busy = busy_cores(affinity) if sample else None
    return Machine(cpus=max(1, cpus), load=load, env_threads=env_threads, busy=busy)


def pick(
    *,
    runs: int = 1,
    parallel_pays: bool = True,
    threads: int | None = None,
    workers: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Layout:
    """:func:`choose_layout` on this machine now (the busy cores sampled only when the
    choice depends on them)."""
    environ = os.environ if environ is None else environ
    here = machine(environ, sample=False)
    # The free cores matter unless the threads are given and the process count follows:
    # given, or one process (one run, or runs too short for processes).
    threads_given = threads is not None or here.env_threads is not None
    one_process = runs == 1 or not parallel_pays
    if not (threads_given and (workers is not None or one_process)):
        here = replace(here, busy=busy_cores(_affinity()))
    return choose_layout(
        here,
        runs=runs,
        parallel_pays=parallel_pays,
        threads=threads,
        workers=workers,
    )
