"""The BatchNorm benchmark suite: ours, torch's native kernels and the textbook version.

Variants (all float32 on the CPU, default-initialised, so they start in the same state):
    ``ours``       ``bnlab.nn.BatchNorm1d/2d`` with the fast path off (closed-form
                   backward in Python/torch ops)
    ``ours-fast``  ``bnlab.nn.BatchNorm1d/2d`` with the fast path on (the fused C++
                   kernels of ``bnlab.kernels``; a training step on an input below
                   ``kernels.POOL_MIN_BYTES`` runs through the C++ autograd node)
    ``ours-function``  the fast path with the C++ autograd node off: the kernels
                   inside a Python ``autograd.Function``
    ``native``     ``torch.nn.BatchNorm1d/2d`` (ATen's fused kernels)
    ``textbook``   ``bnlab.textbook.BatchNorm`` (the d2l scratch layer, autograd backward)
Modes:
    ``train``  forward + backward: the input requires grad, a fixed random ``grad_y`` is
               back-propagated, grads are reset (set to None) before every step, as
               ``optimizer.zero_grad()`` does, so each step allocates its gradients.
    ``eval``   forward under ``torch.no_grad()`` with the running statistics.

Each (shape, mode) case is timed with :func:`bnlab.bench.timing.time_interleaved`.

Bandwidth bound (:func:`step_bytes`, :func:`measure_bandwidth`): a step must move at
least its compulsory bytes, the full-size tensors each read or written once (the
per-channel vectors are negligible): training = forward reads ``x`` and writes ``y``,
backward reads ``grad_y`` and ``x`` and writes ``grad_x`` (5 tensors); eval = reads ``x``
and writes ``y`` (2 tensors). The bound is those bytes over the machine's bandwidth,
measured in the same run as a ``copy_`` between two pre-touched buffers much larger than
the caches, counting read + write bytes. ``fraction_of_bound = bound / median time``;
inputs that fit in the caches can exceed 1. (``ours-fast`` itself makes 2 passes per
direction: forward reads ``x`` twice and writes ``y`` once, backward reads ``grad_y``
and ``x`` twice and writes ``grad_x`` once, 8 tensors in all, so on this model it tops
out at 5/8 of the bound for inputs larger than the caches.)

Memory: :func:`minor_faults_per_call` counts page faults per step (fresh mappings of
large outputs fault on first touch), :func:`peak_rss_growth` measures how far the
resident set grows during one step (Linux), and :func:`fresh_output_ms` the cost of one
freshly allocated, first-touched full-size tensor over filling an existing one.
"""

from __future__ import annotations

import contextlib
import gc
import math
import resource
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import bnlab.nn
from bnlab import kernels
from bnlab.bench.timing import Timing, calibrate_number, time_interleaved
from bnlab.textbook import BatchNorm

__all__ = [
    "DEFAULT_SHAPES",
    "MODES",
    "SWITCHES",
    "VARIANTS",
    "fraction_of_bound",
    "fresh_output_ms",
    "make_modules",
    "make_step",
    "measure_bandwidth",
    "minor_faults_per_call",
    "peak_rss_growth",
    "ratio",
    "run_case",
    "run_suite",
    "step_bytes",
]

# LeNet's BatchNorm inputs on Fashion-MNIST at batch 256 (the d2l chapter), then
# ResNet-sized ones.
DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = (
    (256, 6, 24, 24),
    (256, 16, 8, 8),
    (256, 120),
    (256, 84),
    (256, 64, 28, 28),
    (128, 128, 14, 14),
    (64, 64, 112, 112),
)
VARIANTS = ("ours", "ours-fast", "ours-function", "native", "textbook")
# The switches each bnlab.nn variant runs under: the fast path, and batch norm's C++
# autograd node (kernels.enabled's ``node``; None: left as it is). Variants not listed
# are not bnlab.nn modules and run without a switch.
SWITCHES: dict[str, tuple[bool, bool | None]] = {
    "ours": (False, None),
    "ours-fast": (True, True),
    "ours-function": (True, False),
}
_NO_SWITCH: tuple[None, None] = (None, None)
MODES = ("train", "eval")


def make_modules(num_features: int, ndim: int) -> dict[str, nn.Module]:
    """The three variants for ``(N, C)`` (``ndim=2``) or ``(N, C, H, W)`` (``ndim=4``) inputs.

    Raises:
        ValueError: ``ndim`` is not 2 or 4.
    """
    if ndim not in (2, 4):
        raise ValueError(f"make_modules: ndim must be 2 (N, C) or 4 (N, C, H, W), got {ndim}")
    ours_cls = bnlab.nn.BatchNorm1d if ndim == 2 else bnlab.nn.BatchNorm2d
    native = nn.BatchNorm1d(num_features) if ndim == 2 else nn.BatchNorm2d(num_features)
    return {
        "ours": ours_cls(num_features),
        "ours-fast": ours_cls(num_features),
        "ours-function": ours_cls(num_features),
        "native": native,
        "textbook": BatchNorm(num_features, ndim),
    }


def _switch(fast: bool | None, node: bool | None) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if fast is None else kernels.enabled(fast, node=node)


def make_step(
    module: nn.Module,
    x: Tensor,
    grad_y: Tensor,
    mode: str,
    *,
    fast: bool | None = None,
    node: bool | None = None,
) -> Callable[[], None]:
    """One timed step of ``module`` in ``mode`` (``"train"`` or ``"eval"``); sets the mode.

    ``fast`` runs the step (forward and backward) with bnlab's fast path switched on or
    off, ``node`` (with ``fast``) batch norm's C++ autograd node; None leaves a switch as
    it is.

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode == "train":
        module.train()
        x.requires_grad_(True)

        def train_step() -> None:
            x.grad = None
            module.zero_grad(set_to_none=True)
            with _switch(fast, node):
                module(x).backward(grad_y)

        return train_step
    if mode == "eval":
        module.eval()

        def eval_step() -> None:
            with torch.no_grad(), _switch(fast, node):
                module(x)

        return eval_step
    raise ValueError(f"make_step: mode must be one of {', '.join(MODES)}, got {mode!r}")


def _max_abs_diff_vs_native(
    modules: dict[str, nn.Module], x: Tensor, mode: str
) -> dict[str, float]:
    # One forward each from the same state: checks that the variants compute the same thing.
    with torch.no_grad():
        outputs = {}
        for name, module in modules.items():
            module.train(mode == "train")
            with _switch(*SWITCHES.get(name, _NO_SWITCH)):
                outputs[name] = module(x)
    return {
        name: (outputs[name] - outputs["native"]).abs().max().item()
        for name in modules
        if name != "native"
    }


def run_case(
    shape: Sequence[int],
    mode: str,
    *,
    repeats: int,
    warmup: int,
    target_ms: float,
    seed: int = 0,
    variants: Iterable[str] = VARIANTS,
    measure_memory: bool = False,
) -> dict[str, Any]:
    """Time every variant on one (shape, mode) case.

    The number of calls per sample is calibrated once on the fastest variant so that a
    sample lasts at least about ``target_ms``, and shared by all variants.

    Returns:
        ``{"shape", "mode", "max_abs_diff_vs_native", "timings": {variant: Timing},
        "minor_faults_per_call": {variant: float}}``, plus ``"peak_rss_growth_bytes":
        {variant: int | None}`` with ``measure_memory``.
    """
    shape = tuple(shape)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    grad_y = torch.randn(shape, generator=gen)
    modules = make_modules(shape[1], len(shape))
    modules = {name: modules[name] for name in variants}
    diffs = _max_abs_diff_vs_native(modules, x, mode) if "native" in modules else {}
    steps = {}
    for name, module in modules.items():
        fast, node = SWITCHES.get(name, _NO_SWITCH)
        steps[name] = make_step(module, x, grad_y, mode, fast=fast, node=node)
    for step in steps.values():
        step()  # first call: lazy initialisation, not part of the calibration
    number = min(calibrate_number(step, target_ms=target_ms) for step in steps.values())
    timings = time_interleaved(steps, repeats=repeats, warmup=warmup, number=number)
    result: dict[str, Any] = {
        "shape": shape,
        "mode": mode,
        "max_abs_diff_vs_native": diffs,
        "timings": timings,
        "minor_faults_per_call": {n: minor_faults_per_call(s) for n, s in steps.items()},
    }
    if measure_memory:
        result["peak_rss_growth_bytes"] = {n: peak_rss_growth(s) for n, s in steps.items()}
    return result


def run_suite(
    shapes: Iterable[Sequence[int]],
    *,
    repeats: int,
    warmup: int,
    target_ms: float,
    modes: Iterable[str] = MODES,
    seed: int = 0,
    on_case: Callable[[dict[str, Any]], None] | None = None,
    measure_memory: bool = False,
) -> list[dict[str, Any]]:
    """Run :func:`run_case` for every shape and mode; ``on_case`` sees each result.

    ``measure_memory`` measures the peak resident-set growth of the training steps.
    """
    results = []
    for shape in shapes:
        for mode in modes:
            result = run_case(
                shape,
                mode,
                repeats=repeats,
                warmup=warmup,
                target_ms=target_ms,
                seed=seed,
                measure_memory=measure_memory and mode == "train",
            )
            if on_case is not None:
                on_case(result)
            results.append(result)
    return results


def ratio(timings: dict[str, Timing], name: str, base: str = "native") -> float:
    """``median(name) / median(base)``; NaN when either is missing or the base is 0."""
    if name not in timings or base not in timings or timings[base].median_ms == 0:
        return math.nan
    return timings[name].median_ms / timings[base].median_ms


# ---------------------------------------------------------------- bandwidth and memory


def step_bytes(shape: Sequence[int], mode: str, itemsize: int = 4) -> int:
    """Compulsory bytes of one step: 5 full-size tensors in training, 2 in eval.

    Training: forward reads ``x``, writes ``y``; backward reads ``grad_y`` and ``x``,
    writes ``grad_x``. Eval: reads ``x``, writes ``y``. Per-channel vectors are ignored.

    Raises:
        ValueError: unknown ``mode``.
    """
    tensors = {"train": 5, "eval": 2}.get(mode)
    if tensors is None:
        raise ValueError(f"step_bytes: mode must be one of {', '.join(MODES)}, got {mode!r}")
    return tensors * math.prod(shape) * itemsize


def fraction_of_bound(nbytes: int, bandwidth_gb_per_s: float, time_ms: float) -> float:
    """``(nbytes / bandwidth) / time``: 1 means the step ran at the measured bandwidth."""
    if bandwidth_gb_per_s <= 0 or time_ms <= 0:
        return math.nan
    return nbytes / (bandwidth_gb_per_s * 1e6) / time_ms


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 9) -> dict[str, float]:
    """Memory bandwidth with torch's current thread count, on buffers beyond the caches.

    ``copy_gb_per_s``: ``dst.copy_(src)`` between two pre-touched float32 buffers of
    ``nbytes`` each, counting read + write bytes (``2 * nbytes`` per copy);
    ``read_gb_per_s``: ``src.sum()``. Medians of ``repeats`` runs.
    """
    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src), repeats)
    read_ms = _median_ms(src.sum, repeats)
    return {
        "copy_gb_per_s": 2 * nbytes / (copy_ms * 1e6),
        "read_gb_per_s": nbytes / (read_ms * 1e6),
        "buffer_mib": nbytes / (1 << 20),
        "threads": torch.get_num_threads(),
    }


def fresh_output_ms(shape: Sequence[int], repeats: int = 7) -> dict[str, float]:
    """Time to fill a fresh ``torch.empty(shape)`` vs an existing buffer (float32).

    The difference is what allocating one full-size output costs (page faults of a new
    mapping when it is above glibc's mmap threshold).
    """
    buf = torch.zeros(tuple(shape))
    existing = _median_ms(lambda: buf.fill_(1.0), repeats)
    fresh = _median_ms(lambda: torch.empty(tuple(shape)).fill_(1.0), repeats)
    return {
        "fill_existing_ms": existing,
        "fill_fresh_ms": fresh,
        "fresh_extra_ms": fresh - existing,
    }


def minor_faults_per_call(step: Callable[[], object], calls: int = 3) -> float:
    """Minor page faults of this process per call of ``step`` (``getrusage``)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def _status_kib(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def peak_rss_growth(step: Callable[[], object]) -> int | None:
    """Bytes the resident set grows above its level before one call of ``step``, at peak.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, Linux); None where
    that is not possible. Memory that the allocator kept from earlier steps is reused
    without growth, so small tensors may read as 0; large ones (fresh mappings) count.
    """
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        step()
        peak = _status_kib("VmHWM")
    except OSError:
        return None
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024
