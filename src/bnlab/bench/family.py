"""The normalization family benchmark: each bnlab layer against its torch twin.

A training step (forward + backward with a fixed ``grad_y``, gradients reset before each
step) of each bnlab layer and of its reference, float32 on the CPU, timed interleaved
in one process (:func:`bnlab.bench.timing.time_interleaved`). Layers without a torch
twin are timed against the torch layer they reduce to:

============================  =================================================
bnlab layer                   reference
============================  =================================================
BatchNorm2d                   torch.nn.BatchNorm2d
LayerNorm (N, C)              torch.nn.LayerNorm(C)
layer norm over (C, H, W)     torch.nn.LayerNorm((C, H, W)) (bnlab: GroupNorm(1, C))
GroupNorm                     torch.nn.GroupNorm
InstanceNorm2d (affine)       torch.nn.InstanceNorm2d (affine)
FrozenBatchNorm2d             torch.nn.BatchNorm2d in eval mode (same map)
BatchRenorm2d                 torch.nn.BatchNorm2d (renorm = BN plus r, d)
GhostBatchNorm2d              torch.nn.BatchNorm2d (one batch instead of chunks)
SyncBatchNorm (one process)   torch.nn.BatchNorm2d (SyncBN falls back to BN)
============================  =================================================

Before timing, each case checks that both sides compute the same output (max abs
difference; for renorm with r_max=1, d_max=0 and ghost with one virtual batch, where
they equal BN) and records it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import bnlab.nn
from bnlab.bench.timing import Timing, calibrate_number, time_interleaved

__all__ = [
    "CASES",
    "DEFAULT_SHAPES",
    "FamilyCase",
    "ratio",
    "run_family_case",
    "run_family_suite",
]


@dataclass(frozen=True)
class FamilyCase:
    """A bnlab layer, its reference and the input ranks it takes.

    ``make(C, shape) -> (ours, reference)`` builds a pair that gives equal outputs (for
    layers with extra options, in the setting where they equal the reference);
    ``ranks`` are the input ranks the case runs on; ``reference_eval`` puts the
    reference in eval mode (the frozen layer's map).
    """

    name: str
    make: Callable[[int, tuple[int, ...]], tuple[nn.Module, nn.Module]]
    ranks: tuple[int, ...] = (4,)
    reference_eval: bool = False


def _pair(ours: nn.Module, ref: nn.Module) -> tuple[nn.Module, nn.Module]:
    return ours, ref


CASES: dict[str, FamilyCase] = {
    c.name: c
    for c in (
        FamilyCase("batchnorm", lambda c, s: _pair(bnlab.nn.BatchNorm2d(c), nn.BatchNorm2d(c))),
        FamilyCase(
            "layernorm", lambda c, s: _pair(bnlab.nn.LayerNorm(c), nn.LayerNorm(c)), ranks=(2,)
        ),
        FamilyCase(
            "layernorm-chw",
            lambda c, s: _pair(bnlab.nn.create_norm("layernorm", c, dim=2), nn.LayerNorm(s[1:])),
        ),
        FamilyCase(
            "groupnorm",
            lambda c, s: _pair(bnlab.nn.GroupNorm(min(c, 8), c), nn.GroupNorm(min(c, 8), c)),
        ),
        FamilyCase(
            "instancenorm",
            lambda c, s: _pair(
                bnlab.nn.InstanceNorm2d(c, affine=True), nn.InstanceNorm2d(c, affine=True)
            ),
        ),
        FamilyCase(
            "frozen",
            lambda c, s: _pair(bnlab.nn.FrozenBatchNorm2d(c), nn.BatchNorm2d(c)),
            reference_eval=True,
        ),
        FamilyCase(
            "batchrenorm",
            lambda c, s: _pair(bnlab.nn.BatchRenorm2d(c, r_max=1.0, d_max=0.0), nn.BatchNorm2d(c)),
        ),
        FamilyCase(
            "ghost",
            lambda c, s: _pair(
                bnlab.nn.GhostBatchNorm2d(c, virtual_batch_size=s[0]), nn.BatchNorm2d(c)
            ),
        ),
        FamilyCase("sync", lambda c, s: _pair(bnlab.nn.SyncBatchNorm(c), nn.BatchNorm2d(c))),
    )
}

# A LeNet-sized and a ResNet-sized activation, and an MLP-sized (N, C) for LayerNorm(C).
DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = ((256, 16, 12, 12), (64, 64, 28, 28), (256, 512))


def _train_step(module: nn.Module, x: Tensor, grad_y: Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(grad_y)

    return step


def run_family_case(
    case: FamilyCase,
    shape: Sequence[int],
    *,
    repeats: int,
    warmup: int,
    target_ms: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``case`` on one input shape (training step, float32, CPU).

    Returns:
        ``{"layer", "shape", "max_abs_diff", "timings": {"ours", "torch"}: Timing}``.

    Raises:
        ValueError: the case does not take inputs of this rank.
    """
    shape = tuple(shape)
    if len(shape) not in case.ranks:
        raise ValueError(f"{case.name} takes {case.ranks}-D inputs, got shape {shape}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).requires_grad_(True)
    grad_y = torch.randn(shape, generator=gen)
    ours, ref = case.make(shape[1], shape)
    ref.train(not case.reference_eval)
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    steps = {"ours": _train_step(ours, x, grad_y), "torch": _train_step(ref, x, grad_y)}
    for step in steps.values():
        step()
    number = min(calibrate_number(step, target_ms=target_ms) for step in steps.values())
    timings = time_interleaved(steps, repeats=repeats, warmup=warmup, number=number)
    return {"layer": case.name, "shape": shape, "max_abs_diff": diff, "timings": timings}


def run_family_suite(
    names: Iterable[str],
    shapes: Iterable[Sequence[int]],
    *,
    repeats: int,
    warmup: int,
    target_ms: float,
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every case of ``names`` on every shape of a rank it takes.

    Raises:
        ValueError: an unknown layer name (the message lists them).
    """
    shapes = [tuple(s) for s in shapes]
    results = []
    for name in names:
        if name not in CASES:
            raise ValueError(f"unknown layer {name!r}; choose from: {', '.join(CASES)}")
        case = CASES[name]
        for shape in shapes:
            if len(shape) not in case.ranks:
                continue
            result = run_family_case(
                case, shape, repeats=repeats, warmup=warmup, target_ms=target_ms
            )
            if on_case is not None:
                on_case(result)
            results.append(result)
    return results


def ratio(timings: dict[str, Timing]) -> float:
    """``median(ours) / median(torch)``."""
    return timings["ours"].median_ms / timings["torch"].median_ms
