"""The BatchNorm benchmark suite: ours, torch's native kernels and the textbook version.

Variants (all float32 on the CPU, default-initialised, so they start in the same state):
    ``ours``      ``bnlab.nn.BatchNorm1d/2d`` (closed-form backward in Python/torch ops)
    ``native``    ``torch.nn.BatchNorm1d/2d`` (ATen's fused kernels)
    ``textbook``  ``bnlab.textbook.BatchNorm`` (the d2l scratch layer, autograd backward)
Modes:
    ``train``  forward + backward: the input requires grad, a fixed random ``grad_y`` is
               back-propagated, grads are reset (set to None) before every step, as
               ``optimizer.zero_grad()`` does, so each step allocates its gradients.
    ``eval``   forward under ``torch.no_grad()`` with the running statistics.

Each (shape, mode) case is timed with :func:`bnlab.bench.timing.time_interleaved`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import bnlab.nn
from bnlab.bench.timing import Timing, calibrate_number, time_interleaved
from bnlab.textbook import BatchNorm

__all__ = [
    "DEFAULT_SHAPES",
    "MODES",
    "VARIANTS",
    "make_modules",
    "make_step",
    "ratio",
    "run_case",
    "run_suite",
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
VARIANTS = ("ours", "native", "textbook")
MODES = ("train", "eval")


def make_modules(num_features: int, ndim: int) -> dict[str, nn.Module]:
    """The three variants for ``(N, C)`` (``ndim=2``) or ``(N, C, H, W)`` (``ndim=4``) inputs.

    Raises:
        ValueError: ``ndim`` is not 2 or 4.
    """
    if ndim not in (2, 4):
        raise ValueError(f"make_modules: ndim must be 2 (N, C) or 4 (N, C, H, W), got {ndim}")
    if ndim == 2:
        ours, native = bnlab.nn.BatchNorm1d(num_features), nn.BatchNorm1d(num_features)
    else:
        ours, native = bnlab.nn.BatchNorm2d(num_features), nn.BatchNorm2d(num_features)
    return {"ours": ours, "native": native, "textbook": BatchNorm(num_features, ndim)}


def make_step(module: nn.Module, x: Tensor, grad_y: Tensor, mode: str) -> Callable[[], None]:
    """One timed step of ``module`` in ``mode`` (``"train"`` or ``"eval"``); sets the mode.

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode == "train":
        module.train()
        x.requires_grad_(True)

        def train_step() -> None:
            x.grad = None
            module.zero_grad(set_to_none=True)
            module(x).backward(grad_y)

        return train_step
    if mode == "eval":
        module.eval()

        def eval_step() -> None:
            with torch.no_grad():
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
) -> dict[str, Any]:
    """Time every variant on one (shape, mode) case.

    The number of calls per sample is calibrated once on the fastest variant so that a
    sample lasts at least about ``target_ms``, and shared by all variants.

    Returns:
        ``{"shape", "mode", "max_abs_diff_vs_native", "timings": {variant: Timing}}``.
    """
    shape = tuple(shape)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    grad_y = torch.randn(shape, generator=gen)
    modules = make_modules(shape[1], len(shape))
    modules = {name: modules[name] for name in variants}
    diffs = _max_abs_diff_vs_native(modules, x, mode) if "native" in modules else {}
    steps = {name: make_step(module, x, grad_y, mode) for name, module in modules.items()}
    for step in steps.values():
        step()  # first call: lazy initialisation, not part of the calibration
    number = min(calibrate_number(step, target_ms=target_ms) for step in steps.values())
    timings = time_interleaved(steps, repeats=repeats, warmup=warmup, number=number)
    return {"shape": shape, "mode": mode, "max_abs_diff_vs_native": diffs, "timings": timings}


def run_suite(
    shapes: Iterable[Sequence[int]],
    *,
    repeats: int,
    warmup: int,
    target_ms: float,
    modes: Iterable[str] = MODES,
    seed: int = 0,
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run :func:`run_case` for every shape and mode; ``on_case`` sees each result."""
    results = []
    for shape in shapes:
        for mode in modes:
            result = run_case(
                shape, mode, repeats=repeats, warmup=warmup, target_ms=target_ms, seed=seed
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
