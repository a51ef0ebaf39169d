"""Batch normalization with its closed-form backward, bound as a ``torch.autograd.Function``.

The maths lives in ``bnlab.functional.batch_norm``; this module only connects
:func:`~bnlab.functional.batch_norm.batch_norm_forward` and
:func:`~bnlab.functional.batch_norm.batch_norm_backward` to autograd. Compared with
differentiating the forward op by op, the closed form saves only ``x``, ``weight`` and
two ``(C,)`` vectors and computes ``grad_x`` in one full-size tensor.

Double backward (``create_graph=True``) works: the backward is written in torch ops, and
when autograd records it the batch statistics are recomputed from the saved ``x`` so
that their dependence on ``x`` is part of the second-order graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab import kernels
from bnlab.functional.batch_norm import (
    BatchNormOutput,
    BatchStats,
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_with,
)
from bnlab.functional.moments import centered_moments

__all__ = ["BatchNormFunction", "FastBatchNormFunction", "batch_norm", "fast_batch_norm_train"]


def _closed_form_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    inv_std: Tensor,
    pivot: Tensor,
    offset: Tensor,
    eps: float,
    needs_input_grad: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    if torch.is_grad_enabled():
        # create_graph=True: the saved statistics carry no graph, rebuild them from x.
        _, pivot, offset, var = centered_moments(x)
        inv_std = torch.rsqrt(var + eps)
    stats = BatchStats(None, None, inv_std, pivot, offset)  # backward needs no mean/var
    return batch_norm_backward(grad_y, x, weight, stats, needs_input_grad)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm: ``(x, weight, bias, eps) -> (y, mean, var)``.

    ``mean`` and ``var`` (biased) are returned for the running statistics and are not
    differentiable.

    Shape:
        x: ``(N, C, *)``; weight, bias: ``(C,)`` or None; y: like x; mean, var: ``(C,)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, stats = batch_norm_forward(x, weight, bias, eps)
        mean, var = stats.mean, stats.var
        ctx.save_for_backward(x, weight, stats.inv_std, stats.pivot, stats.offset)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_y: Tensor, _grad_mean: Tensor | None, _grad_var: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight, inv_std, pivot, offset = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        grad_x, grad_weight, grad_bias = _closed_form_backward(
            grad_y, x, weight, inv_std, pivot, offset, ctx.eps, (need_x, need_w, need_b)
        )
        # Cast only when needed: a no-op .to() still costs a dispatch per step.
        if grad_weight is not None and grad_weight.dtype != weight.dtype:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None and grad_bias.dtype != ctx.bias_dtype:
            grad_bias = grad_bias.to(ctx.bias_dtype)
        return grad_x, grad_weight, grad_bias, None


class FastBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm of a module on the fused kernels: ``(x, weight, bias,
    eps, running) -> y``.

    The lean path of ``bnlab.nn``'s batch-norm modules: the caller has checked that the
    call is eligible for ``bnlab.kernels`` (CPU: float32/float64, contiguous,
    every per-channel tensor ``(C,)`` of ``x``'s dtype; CUDA: float16/bfloat16/float32,
    per-channel tensors of any of these on ``x``'s device) and passes its own buffers as
    ``running = (running_mean, running_var, num_batches_tracked, momentum)`` (or None),
    which the kernel updates in place, so the running statistics cost no torch op.
    Same maths and backward as :class:`BatchNormFunction` (double backward included).

    Shape:
        x: ``(N, C, *)``; weight, bias: ``(C,)`` or None; y: like x.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        running: tuple[Tensor, Tensor, Tensor | None, float | None] | None,
    ) -> Tensor:
        y, stats = kernels.train_forward(x, weight, bias, eps, running)
        ctx.save_for_backward(x, weight, stats)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_y: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight, stats = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        fast = (
            kernels._enabled
            and not torch.is_grad_enabled()
            and grad_y.dtype == x.dtype
            and grad_y.shape == x.shape
            and grad_y.device == x.device
            and grad_y.is_contiguous()
        )  # what batch_norm_backward would check, minus what forward already did
        if fast and not x.is_cuda:
            # The CPU kernel reads the rows of stats in place (no views to make).
            grad_x, grad_weight, grad_bias = kernels.train_backward(
                grad_y, x, weight, None, None, None, needs, stats=stats
            )
        else:
            # stats rows: mean, var, inv_std, pivot, offset (see kernels.train_forward).
            _, _, inv_std, pivot, offset = stats.unbind(0)
            if fast:
                grad_x, grad_weight, grad_bias = kernels.train_backward(
                    grad_y, x, weight, inv_std, pivot, offset, needs
                )
            else:
                grad_x, grad_weight, grad_bias = _closed_form_backward(
                    grad_y, x, weight, inv_std, pivot, offset, ctx.eps, needs
                )
        # The CUDA kernels give float32 per-channel gradients; parameters may be 16-bit.
        if grad_weight is not None and grad_weight.dtype != weight.dtype:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None and grad_bias.dtype != ctx.bias_dtype:
            grad_bias = grad_bias.to(ctx.bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None


def _cpp_apply(cls: type[torch.autograd.Function]) -> Any:
    """The C++ ``apply`` of autograd Functions bound to ``cls``; None where torch has none
    (or lacks the functorch checks that decide when it may be called directly)."""
    base = getattr(torch._C, "_FunctionBase", None)
    method = None if base is None else base.__dict__.get("apply")
    functorch = getattr(torch._C, "_functorch", None)
    if (
        method is None
        or not hasattr(torch._C, "_are_functorch_transforms_active")
        or not hasattr(functorch, "is_functorch_wrapped_tensor")
    ):
        return None
    return method.__get__(None, cls)


_fast_apply = _cpp_apply(FastBatchNormFunction)


def fast_batch_norm_train(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    running: tuple[Tensor, Tensor, Tensor | None, float | None] | None,
) -> Tensor:
    """``FastBatchNormFunction.apply(x, weight, bias, eps, running)``, the modules' lean path.

    ``Function.apply``'s Python wrapper costs about 8 us per call (measured: 256x120,
    one thread), 4% of a small training step; outside functorch transforms, and for an
    input that is not a functorch wrapper, it only forwards to the C++ ``apply``, which
    this calls directly.
    """
    if (
        _fast_apply is None
        or torch._C._are_functorch_transforms_active()
        or torch._C._functorch.is_functorch_wrapped_tensor(x)
    ):
        return FastBatchNormFunction.apply(x, weight, bias, eps, running)
    return _fast_apply(x, weight, bias, eps, running)


def _train_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return BatchNormFunction.apply(x, weight, bias, eps)


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    num_batches_tracked: Tensor | None = None,
    *,
    name: str = "batch_norm",
) -> BatchNormOutput:
    """:func:`bnlab.functional.batch_norm` with the closed-form backward.

    Same arguments, result and errors; ``name`` prefixes error messages (modules pass
    their class name).
    """
    return batch_norm_with(
        _train_forward,
        x,
        running_mean,
        running_var,
        weight,
        bias,
        training,
        momentum,
        eps,
        num_batches_tracked,
        name=name,
    )
