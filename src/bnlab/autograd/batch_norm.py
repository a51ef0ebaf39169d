"""Batch normalization with its closed-form backward, bound as a ``torch.autograd.Function``.

The maths lives in ``bnlab.functional.batch_norm``; this module connects
:func:`~bnlab.functional.batch_norm.batch_norm_forward` and
:func:`~bnlab.functional.batch_norm.batch_norm_backward` to autograd, and decides, with
the dispatch of ``bnlab.kernels`` (:func:`bnlab.kernels.batch_norm_eligible`), which
calls run on the fused kernels instead (same formulas). Compared with differentiating
the forward op by op, the closed form saves only ``x``, ``weight`` and two ``(C,)``
vectors and computes ``grad_x`` in one full-size tensor.

Entry points: :func:`batch_norm` (pure, as ``bnlab.functional.batch_norm``) and
:func:`batch_norm_inplace`, the one forward of ``bnlab.nn``'s batch-norm modules, which
updates the running statistics in place (inside the training kernel when the call is
eligible, so the update costs no torch op on small inputs).

Double backward (``create_graph=True``) works: the backward is written in torch ops, and
when autograd records it the batch statistics are recomputed from the saved ``x`` so
that their dependence on ``x`` is part of the second-order graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab import kernels
from bnlab.autograd._layout import torch_layout
from bnlab.functional.batch_norm import (
    BatchNormOutput,
    BatchStats,
    _batch_norm_eval,
    batch_norm_forward,
    batch_norm_with,
    check_eps,
    check_momentum,
    running_update_factor,
)
from bnlab.functional.batch_norm import (
    batch_norm_backward as _torch_ops_backward,
)
from bnlab.functional.batch_norm import (
    batch_norm_eval as _checked_eval,
)
from bnlab.functional.moments import centered_moments

__all__ = [
    "BatchNormFunction",
    "FastBatchNormFunction",
    "batch_norm",
    "batch_norm_eval",
    "batch_norm_eval_forward",
    "batch_norm_inplace",
]


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


def batch_norm_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: BatchStats,
    needs_input_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``bnlab.functional.batch_norm.batch_norm_backward`` (same arguments and results),
    on the backward kernel where ``bnlab.kernels.batch_norm_eligible`` accepts the call
    and autograd does not record it."""
    if any(needs_input_grad) and kernels.batch_norm_eligible(
        x, grad_y, per_channel=(weight, stats.inv_std, stats.pivot, stats.offset)
    ):
        return kernels.train_backward(
            grad_y, x, weight, stats.inv_std, stats.pivot, stats.offset, needs_input_grad
        )
    return _torch_ops_backward(grad_y, x, weight, stats, needs_input_grad)


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
        if kernels.batch_norm_eligible(x, per_channel=(weight, bias), wrapped=True):
            y, rows = kernels.train_forward(x, weight, bias, eps)
            stats = BatchStats(*rows.unbind(0))
        else:
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

    The kernel path of :func:`batch_norm_inplace`: the caller has checked the call with
    ``bnlab.kernels.batch_norm_eligible`` and passes the module's buffers as ``running =
    (running_mean, running_var, num_batches_tracked, factor)`` (or None), which the
    kernel updates in place, so the running statistics cost no torch op. Same maths and
    backward as :class:`BatchNormFunction` (double backward included).

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
        running: tuple[Tensor, Tensor, Tensor | None, float] | None,
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
        fast = not torch.is_grad_enabled() and kernels.batch_norm_eligible(
            x, grad_y, after_forward=True
        )
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
    (or lacks the functorch checks that decide when it may be called directly).

    ``Function.apply``'s Python wrapper costs about 8 us per call (measured: 256x120,
    one thread), 4% of a small training step; outside functorch transforms, and for an
    input that is not a functorch wrapper, it only forwards to the C++ ``apply``, which
    :func:`batch_norm_inplace` calls directly (``tests/kernels/test_internals.py`` fails
    if a torch upgrade removes it or changes what it computes).
    """
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


_kernel_apply = _cpp_apply(FastBatchNormFunction)


def _node_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    eps: float,
    needs: list[bool],
) -> list[Tensor]:
    """The backward of ``bnlab.kernels.train_node``'s C++ node where the kernel does not
    take it: autograd records it (``create_graph=True``: torch ops, differentiable) or
    ``grad_y`` is not a contiguous tensor like ``x``. The same computation as
    ``FastBatchNormFunction.backward`` there; a gradient not asked for is an empty
    placeholder (an operator returns tensors)."""
    _, _, inv_std, pivot, offset = stats.unbind(0)
    grads = _closed_form_backward(
        grad_y, x, weight, inv_std, pivot, offset, eps, (needs[0], needs[1], needs[2])
    )
    return [x.new_empty(0) if g is None else g for g in grads]


# The node's backward calls this operator by name through torch's dispatcher; defined
# here, with its torch-ops implementation, whether or not the node is ever built.
_LIBRARY = torch.library.Library("bnlab_kernels", "FRAGMENT")
_LIBRARY.define(
    "batch_norm_train_backward(Tensor grad_y, Tensor x, Tensor? weight, Tensor stats, "
    "float eps, bool[3] needs) -> Tensor[]"
)
_LIBRARY.impl("batch_norm_train_backward", _node_backward, "CompositeImplicitAutograd")


def batch_norm_eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Normalization with the running statistics, arguments already checked (the
    ``eval_forward`` of ``bnlab.functional``'s ``batch_norm_with`` and its ghost and
    renorm variants): the eval kernel where eligible (and not recorded by autograd),
    else the torch ops of ``bnlab.functional``."""
    if kernels.batch_norm_eligible(x, per_channel=(running_mean, running_var, weight, bias)):
        return kernels.eval_forward(x, running_mean, running_var, weight, bias, eps)
    return _batch_norm_eval(x, running_mean, running_var, weight, bias, eps)


def _train_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    if _functorch(x, weight, bias):
        # torch.func transforms (vmap, grad, vjp, jvp, jacrev) need a Function with
        # setup_context and vmap/jvp rules; the torch-ops forward is differentiable op by
        # op (torch's own batch norm decomposes the same way under them).
        y, stats = batch_norm_forward(x, weight, bias, eps)
        return y, stats.mean.detach(), stats.var.detach()
    return BatchNormFunction.apply(x, weight, bias, eps)


def _functorch(*tensors: Tensor | None) -> bool:
    """Whether a torch.func transform is active or any tensor is one of its wrappers."""
    return torch._C._are_functorch_transforms_active() or any(
        t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors
    )


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
    result = batch_norm_with(
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
        eval_forward=batch_norm_eval_forward,
    )
    return result._replace(output=torch_layout(result.output, x, keep_channels_last=True))


def batch_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``bnlab.functional.batch_norm.batch_norm_eval`` (same arguments, result and
    errors), on the eval kernel where eligible."""
    if (
        isinstance(running_mean, Tensor)
        and isinstance(running_var, Tensor)
        and kernels.batch_norm_eligible(x, per_channel=(running_mean, running_var, weight, bias))
    ):
        check_eps(eps, "batch_norm_eval")
        return kernels.eval_forward(x, running_mean, running_var, weight, bias, eps)
    y = _checked_eval(x, running_mean, running_var, weight, bias, eps)
    return torch_layout(y, x, keep_channels_last=True)


def _running(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    momentum: float | None,
    name: str,
) -> tuple[Tensor, Tensor, Tensor | None, float] | None:
    """The kernels' ``running`` argument: the module's buffers and the weight of the new
    batch in their update, or None without running statistics."""
    if running_mean is None:
        return None
    # The counter is read only for momentum=None (this batch included).
    counted = (
        None
        if momentum is not None or num_batches_tracked is None
        else int(num_batches_tracked) + 1
    )
    factor = float(running_update_factor(momentum, counted, name))
    return (running_mean, running_var, num_batches_tracked, factor)


def batch_norm_inplace(
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
    """:func:`batch_norm` for modules that own their running statistics: in training,
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` are updated *in place*,
    and the result carries these same tensors.

    Calls that ``bnlab.kernels.batch_norm_eligible`` accepts run on the kernels (the
    training kernel updates the statistics as it computes them, with the weight of the
    new batch from ``running_update_factor``); the others run :func:`batch_norm` and copy
    its new statistics into the given tensors. Same arguments, results and errors as
    :func:`batch_norm` (the kernel path runs the same argument checks).
    """
    if training:
        # The statistics both given or both None (else the torch path raises).
        paired = (running_mean is None) == (running_var is None)
        if paired and torch.is_grad_enabled():
            # The C++ autograd node checks the rest of the kernels' conditions itself and
            # returns None for a call it does not take.
            node = kernels.train_node(x)
            # torch.jit.trace records ops, and cannot record one that may return None.
            if node is not None and not kernels.is_transformed(x) and not torch.jit.is_tracing():
                check_eps(eps, name)
                check_momentum(momentum, name)
                running = _running(running_mean, running_var, num_batches_tracked, momentum, name)
                y = node(x, weight, bias, eps, *(running or (None, None, None, 0.0)))
                if y is not None:
                    return BatchNormOutput(y, running_mean, running_var, num_batches_tracked)
        # More than one value per channel (else the torch path raises).
        if (
            paired
            and kernels.batch_norm_eligible(
                x,
                per_channel=(weight, bias, running_mean, running_var),
                counter=num_batches_tracked,
                wrapped=True,
            )
            and x.numel() > x.shape[1]
        ):
            check_eps(eps, name)
            check_momentum(momentum, name)
            running = _running(running_mean, running_var, num_batches_tracked, momentum, name)
            if not torch.is_grad_enabled():
                y = kernels.train_forward(x, weight, bias, eps, running)[0]
            elif (
                _kernel_apply is None
                or torch._C._are_functorch_transforms_active()
                or torch._C._functorch.is_functorch_wrapped_tensor(x)
            ):
                y = FastBatchNormFunction.apply(x, weight, bias, eps, running)
            else:
                # FastBatchNormFunction.apply without its Python wrapper (see _cpp_apply).
                y = _kernel_apply(x, weight, bias, eps, running)
            return BatchNormOutput(y, running_mean, running_var, num_batches_tracked)
    elif (
        running_mean is not None
        and running_var is not None
        and kernels.batch_norm_eligible(x, per_channel=(running_mean, running_var, weight, bias))
    ):
        check_eps(eps, name)
        y = kernels.eval_forward(x, running_mean, running_var, weight, bias, eps)
        return BatchNormOutput(y, running_mean, running_var, num_batches_tracked)
    result = batch_norm(
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
    if running_mean is not None and result.running_mean is not running_mean:
        with torch.no_grad():
            running_mean.copy_(result.running_mean)
            running_var.copy_(result.running_var)
            if num_batches_tracked is not None:
                num_batches_tracked.copy_(result.num_batches_tracked)
    y = torch_layout(result.output, x, keep_channels_last=True)
    return BatchNormOutput(y, running_mean, running_var, num_batches_tracked)
