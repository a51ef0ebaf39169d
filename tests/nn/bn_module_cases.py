"""Case table of the batch-norm modules, walked by the generic tests of ``tests/nn``.

One row = constructor kwargs + input shape + input layout + ``desc`` (the pattern of
PyTorch's ``module_inputs_torch_nn_BatchNorm2d`` in ``common_modules.py``). Inputs are
built as ``view(leaf)``: ``leaf`` is the tensor that requires grad (its ``.grad`` is
compared), ``view`` turns it into the non-contiguous / channels_last input under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import bnlab.nn

# Layouts of the input tensor (all have the logical shape of the case).
CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"  # NHWC / NDHWC strides; output must keep them
PERMUTED = "permuted"  # every dim's stride reversed, e.g. (N, L, C) transposed to (N, C, L)
SLICED = "sliced"  # every other element of a twice-as-long last dim
EXPANDED = "expanded"  # last dim broadcast from size 1 (stride 0)


@dataclass(frozen=True)
class BNCase:
    cls: str  # "BatchNorm1d" | "BatchNorm2d" | "BatchNorm3d"
    shape: tuple[int, ...]
    desc: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    layout: str = CONTIGUOUS

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.desc}"

    @property
    def num_features(self) -> int:
        return self.shape[1]

    def ours(self, **extra: Any) -> torch.nn.Module:
        return getattr(bnlab.nn, self.cls)(self.num_features, **self.kwargs, **extra)

    def theirs(self, **extra: Any) -> torch.nn.Module:
        return getattr(torch.nn, self.cls)(self.num_features, **self.kwargs, **extra)


CASES: list[BNCase] = [
    BNCase("BatchNorm1d", (8, 3), "2d_input"),
    BNCase("BatchNorm1d", (4, 3, 5), "3d_input"),
    BNCase("BatchNorm1d", (2, 3), "batch_of_two"),
    BNCase("BatchNorm1d", (4, 3, 5), "3d_input_permuted", layout=PERMUTED),
    BNCase("BatchNorm1d", (6, 4), "2d_input_transposed", layout=PERMUTED),
    BNCase("BatchNorm1d", (6, 4), "2d_input_sliced", layout=SLICED),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "default"),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "affine_off", {"affine": False}),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "bias_off", {"bias": False}),
    BNCase(
        "BatchNorm1d", (8, 3), "bias_off_untracked", {"bias": False, "track_running_stats": False}
    ),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "untracked", {"track_running_stats": False}),
    BNCase(
        "BatchNorm2d",
        (4, 3, 5, 6),
        "untracked_affine_off",
        {"affine": False, "track_running_stats": False},
    ),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "momentum_none", {"momentum": None}),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "momentum_0", {"momentum": 0.0}),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "momentum_1", {"momentum": 1.0}),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "eps_1e-1_momentum_0.3", {"eps": 0.1, "momentum": 0.3}),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "channels_last", layout=CHANNELS_LAST),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "permuted", layout=PERMUTED),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "sliced", layout=SLICED),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "expanded", layout=EXPANDED),
    BNCase("BatchNorm2d", (1, 3, 2, 2), "batch_of_one_spatial_2x2"),
    BNCase("BatchNorm3d", (3, 2, 3, 4, 5), "default"),
    BNCase("BatchNorm3d", (3, 2, 3, 4, 5), "momentum_none", {"momentum": None}),
    BNCase("BatchNorm3d", (3, 2, 3, 4, 5), "channels_last_3d", layout=CHANNELS_LAST),
    BNCase("BatchNorm3d", (3, 2, 3, 4, 5), "sliced", layout=SLICED),
]

CASE_IDS = [c.id for c in CASES]


def make_input(
    case: BNCase, dtype: torch.dtype, generator: torch.Generator
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``(leaf, view)``: ``view(leaf)`` has ``case.shape`` and ``case.layout``."""
    shape = case.shape
    ndim = len(shape)

    def randn(*size: int) -> Tensor:
        # Non-zero mean and non-unit scale per channel exercise the centring.
        return torch.randn(size, generator=generator, dtype=torch.float64).to(dtype) * 2 + 1

    if case.layout == CONTIGUOUS:
        return randn(*shape), lambda t: t
    if case.layout == CHANNELS_LAST:
        fmt = torch.channels_last if ndim == 4 else torch.channels_last_3d
        return randn(*shape).contiguous(memory_format=fmt), lambda t: t
    if case.layout == PERMUTED:
        order = tuple(reversed(range(ndim)))
        return randn(*reversed(shape)), lambda t: t.permute(order)
    if case.layout == SLICED:
        return randn(*shape[:-1], 2 * shape[-1]), lambda t: t[..., ::2]
    if case.layout == EXPANDED:
        return randn(*shape[:-1], 1), lambda t: t.expand(shape)
    raise AssertionError(f"unknown layout {case.layout!r}")


def check_layout(case: BNCase, x: Tensor) -> None:
    """The view really has the layout the case claims (guards the table itself)."""
    assert tuple(x.shape) == case.shape
    if case.layout == CONTIGUOUS:
        assert x.is_contiguous()
    elif case.layout == CHANNELS_LAST:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert x.is_contiguous(memory_format=fmt)
        assert not x.is_contiguous()
    else:
        assert not x.is_contiguous()


def randomize_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial parameters and statistics, so that a swapped or ignored one shows."""
    with torch.no_grad():
        if getattr(module, "weight", None) is not None:
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(
                torch.rand(module.running_var.shape, generator=generator) * 1.5 + 0.5
            )
            module.num_batches_tracked.fill_(3)


def train_step(module, leaf, view, grad_y):
    """One forward/backward of ``module`` on a fresh copy of ``leaf``: output and grads."""
    leaf = leaf.detach().clone().requires_grad_()
    for p in module.parameters():
        p.grad = None
    y = module(view(leaf))
    y.backward(grad_y)
    return y, leaf.grad, {n: p.grad for n, p in module.named_parameters()}


def assert_twins(ours, theirs, case, dtype, gen, steps=3, tol=1e-10):
    """``steps`` train steps and one eval step of two modules from the same state:
    outputs, input and parameter grads, and state_dicts agree within ``tol``."""
    for mode in ["train"] * steps + ["eval"]:
        ours.train(mode == "train")
        theirs.train(mode == "train")
        leaf, view = make_input(case, dtype, gen)
        grad_y = torch.randn(case.shape, generator=gen, dtype=torch.float64).to(dtype)
        y, gx, grads = train_step(ours, leaf, view, grad_y)
        y_t, gx_t, grads_t = train_step(theirs, leaf, view, grad_y)
        torch.testing.assert_close(y, y_t, rtol=tol, atol=tol)
        torch.testing.assert_close(gx, gx_t, rtol=tol, atol=tol)
        assert list(grads) == list(grads_t)
        for name in grads:
            torch.testing.assert_close(grads[name], grads_t[name], rtol=tol, atol=tol)
        sd, sd_t = ours.state_dict(), theirs.state_dict()
        assert list(sd) == list(sd_t)
        for key in sd:
            torch.testing.assert_close(sd[key], sd_t[key], rtol=tol, atol=tol)
        if case.layout == CHANNELS_LAST:
            fmt = torch.channels_last if y.dim() == 4 else torch.channels_last_3d
            assert y.is_contiguous(memory_format=fmt)


def eval_atol(module: torch.nn.Module, x: Tensor, ulps: int = 8) -> float:
    """Rounding bound of an eval-mode batch norm of ``x`` in ``x``'s dtype.

    ``y = (x - running_mean) * scale + bias`` with ``scale = weight / sqrt(running_var
    + eps)`` is a few roundings of terms no larger than ``(|x| + |running_mean|) * |scale|
    + |bias|``: ``ulps`` units (float eps) of the largest one cover any order of the
    operations (folded into one affine map or not, with or without FMA, any vector
    width). A wrong statistic or parameter moves ``y`` by O(1), far above this bound.
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)

    def per_channel(t: Tensor | None, default: float) -> Tensor:
        if t is None:
            return torch.full((x.shape[1],), default, dtype=torch.float64).view(shape)
        return t.detach().double().abs().view(shape)

    scale = per_channel(module.weight, 1.0) / torch.sqrt(
        per_channel(module.running_var, 1.0) + module.eps
    )
    terms = (x.detach().double().abs() + per_channel(module.running_mean, 0.0)) * scale
    terms = terms + per_channel(module.bias, 0.0)
    return ulps * torch.finfo(x.dtype).eps * float(terms.max())
