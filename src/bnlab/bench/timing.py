"""Timing helpers: interleaved wall-clock timing with medians and spread, and an
environment record to save next to the numbers.

Variants are timed round-robin (a, b, c, a, b, c, ...), each round starting one variant
later than the previous one, so that slow drift of the machine (frequency, other
processes, memory state) and order effects (running right after a variant that dirtied
the cache or freed a lot of memory) hit all variants alike. Warm-up rounds are run the
same way and discarded. Results are per call, in milliseconds: median and the
interquartile range (IQR = q3 - q1), which a few outliers do not move.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Timing",
    "calibrate_number",
    "environment_record",
    "interleaved_schedule",
    "load_average",
    "quantile",
    "spread",
    "time_interleaved",
]

Clock = Callable[[], float]

# Environment variables that change how memory is allocated or how many threads run.
_ENV_PREFIXES = ("MALLOC_",)
_ENV_NAMES = ("GLIBC_TUNABLES", "LD_PRELOAD", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` with linear interpolation (numpy's default).

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside ``[0, 1]``.
    """
    if not values:
        raise ValueError("quantile: expected at least one value, got an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: q must be in [0, 1], got {q!r}")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Timing:
    """Samples of one variant, each the mean time of ``number`` calls, in ms per call."""

    samples_ms: tuple[float, ...]
    number: int

    @property
    def median_ms(self) -> float:
        return quantile(self.samples_ms, 0.5)

    @property
    def q1_ms(self) -> float:
        return quantile(self.samples_ms, 0.25)

    @property
    def q3_ms(self) -> float:
        return quantile(self.samples_ms, 0.75)

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary; every time key names its unit."""
        return {
            "median_time_ms": self.median_ms,
            "q1_time_ms": self.q1_ms,
            "q3_time_ms": self.q3_ms,
            "iqr_time_ms": self.iqr_ms,
            "min_time_ms": self.min_ms,
            "max_time_ms": self.max_ms,
            "samples_time_ms": list(self.samples_ms),
            "calls_per_sample": self.number,
            "repeats": len(self.samples_ms),
        }


def spread(values: Sequence[float]) -> dict[str, float]:
    """The 10th percentile, median and 90th percentile of ``values`` (a benchmark's
    spread, not only its median)."""
    return {
        "p10": quantile(values, 0.1),
        "median": quantile(values, 0.5),
        "p90": quantile(values, 0.9),
    }


def interleaved_schedule(names: Sequence[str], rounds: int, *, rotate: bool = True) -> list[str]:
    """The order in which :func:`time_interleaved` runs the variants.

    Round ``r`` runs every variant once, starting with ``names[r % len(names)]`` when
    ``rotate`` is true (so no variant always runs first, or always after the same one),
    with ``names[0]`` otherwise.
    """
    k = len(names)
    order: list[str] = []
    for r in range(rounds):
        start = r % k if rotate and k else 0
        order.extend(names[start:])
        order.extend(names[:start])
    return order


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    number: int = 1,
    rotate: bool = True,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] | None = None,
    disable_gc: bool = True,
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, round-robin over the variants.

    Each sample calls a variant ``number`` times between two reads of ``clock`` (exactly
    two reads per sample, none during warm-up) and records the mean per call. ``warmup``
    whole rounds are run first and discarded.

    Args:
        fns: variant name -> callable taking no arguments.
        repeats: timed rounds, >= 1.
        warmup: untimed rounds before them, >= 0.
        number: calls per sample, >= 1 (raise it for calls much shorter than 1 ms).
        rotate: start each round one variant later (see :func:`interleaved_schedule`).
        clock: seconds, monotonic; ``time.perf_counter`` by default.
        sync: called before each clock read, e.g. ``torch.cuda.synchronize``.
        disable_gc: switch Python's garbage collector off while timing (as ``timeit``).

    Returns:
        variant name -> :class:`Timing`, in the order of ``fns``.

    Raises:
        ValueError: no variants, ``repeats < 1``, ``warmup < 0`` or ``number < 1``.
    """
    if not fns:
        raise ValueError("time_interleaved: expected at least one callable, got none")
    if repeats < 1:
        raise ValueError(f"time_interleaved: repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"time_interleaved: warmup must be >= 0, got {warmup}")
    if number < 1:
        raise ValueError(f"time_interleaved: number must be >= 1, got {number}")
    names = list(fns)
    schedule = interleaved_schedule(names, warmup + repeats, rotate=rotate)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        for i, name in enumerate(schedule):
            fn = fns[name]
            if i < warmup * len(names):
                for _ in range(number):
                    fn()
                continue
            if sync is not None:
                sync()
            start = clock()
            for _ in range(number):
                fn()
            if sync is not None:
                sync()
            samples[name].append((clock() - start) * 1e3 / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(tuple(samples[name]), number) for name in names}


def calibrate_number(
    fn: Callable[[], object],
    *,
    target_ms: float,
    max_number: int = 10_000,
    clock: Clock = time.perf_counter,
) -> int:
    """Calls per sample so that one sample of ``fn`` lasts about ``target_ms``.

    Times one call (call it once beforehand to warm it up) and returns
    ``ceil(target_ms / elapsed)``, between 1 and ``max_number``.
    """
    start = clock()
    fn()
    elapsed_ms = (clock() - start) * 1e3
    if elapsed_ms <= 0:
        return max_number
    # The small slack keeps a clock's rounding (10.000000001) from adding a call.
    return max(1, min(max_number, math.ceil(target_ms / elapsed_ms - 1e-9)))


def _cpu_model(cpuinfo: Path) -> str | None:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Processor", "cpu model"):
            return value.strip()
    return platform.processor() or None


def _git(repo_dir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none).

    Timings from a machine whose load is near its core count are not worth much:
    OpenMP threads wait at barriers for threads that other processes have descheduled.
    """
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment_record(
    *,
    environ: Mapping[str, str],
    repo_dir: str | Path | None = None,
    cpuinfo: str | Path = "/proc/cpuinfo",
) -> dict[str, Any]:
    """What to save next to timings so that they can be compared and reproduced.

    Args:
        environ: the process environment (pass ``os.environ``); only the allocator and
            thread settings are kept (``MALLOC_*``, ``GLIBC_TUNABLES``, ``LD_PRELOAD``,
            ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``). Passed in because library code
            does not read the environment itself.
        repo_dir: a directory inside the git checkout to record the revision of;
            ``git_revision`` and ``git_dirty`` are None when it is None or not a checkout.
        cpuinfo: where to read the CPU model (Linux).

    Returns:
        JSON-ready dict: python, platform, CPU model and count, torch version and threads,
        allocator settings, load average, git revision.
    """
    settings = {
        key: value
        for key, value in sorted(environ.items())
        if key.startswith(_ENV_PREFIXES) or key in _ENV_NAMES
    }
    revision = dirty = None
    if repo_dir is not None:
        revision = _git(Path(repo_dir), "rev-parse", "HEAD")
        if revision is not None:
            status = _git(Path(repo_dir), "status", "--porcelain", "--untracked-files=no")
            dirty = bool(status) if status is not None else None
    libc, libc_version = platform.libc_ver()
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "libc": f"{libc} {libc_version}".strip() or None,
        "cpu_model": _cpu_model(Path(cpuinfo)),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "cuda_available": torch.cuda.is_available(),
        "allocator_and_thread_env": settings,
        "load_average_1_5_15_min": load_average(),
        "git_revision": revision,
        "git_dirty": dirty,
    }
