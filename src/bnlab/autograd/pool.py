"""2x2 average pooling on the kernels: LeNet's ``AvgPool2d(2, 2)``, about five times
faster than torch's generic CPU kernel on LeNet's shapes, with torch's results.

``torch.nn.functional.avg_pool2d`` on the CPU walks every window with per-element index
arithmetic; LeNet's pools (kernel 2, stride 2, no padding) take 20% of a one-thread
training step there (``benchmarks/bench_d2l_floor.py``'s recipe; profile in the README).
The kernel sums each window in torch's order and divides by 4, so the outputs equal
torch's, and the gradient is ``grad_y / 4`` on each window's four inputs, as torch's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab import kernels

__all__ = ["AvgPool2x2Function", "avg_pool2d"]


class AvgPool2x2Function(torch.autograd.Function):
    """``(N, C, H, W) -> (N, C, H/2, W/2)`` on the kernels (the caller checked
    ``bnlab.kernels.avg_pool2_eligible``); twice differentiable."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.shape = x.shape
        return kernels.avg_pool2_forward(x)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> Tensor:  # type: ignore[override]
        # grad_y has the output's dtype and device (autograd's contract).
        if not torch.is_grad_enabled() and not kernels.is_transformed(grad_y):
            return kernels.avg_pool2_backward(grad_y.contiguous(), ctx.shape)
        # Double backward (create_graph): the same values by differentiable ops.
        return (grad_y / 4).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _pair(value: int | tuple[int, ...] | None) -> tuple[int, ...] | None:
    return (value, value) if isinstance(value, int) else None if value is None else tuple(value)


def avg_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """``torch.nn.functional.avg_pool2d`` (same arguments, results and errors), on the
    kernels for 2x2 windows of stride 2 without padding over an eligible input."""
    if (
        _pair(kernel_size) == (2, 2)
        and _pair(stride) in ((2, 2), None)
        and _pair(padding) == (0, 0)
        and divisor_override is None
        and kernels.avg_pool2_eligible(x)
    ):
        # ceil_mode changes nothing: H and W are even. count_include_pad neither: no padding.
        return AvgPool2x2Function.apply(x)
    return F.avg_pool2d(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
