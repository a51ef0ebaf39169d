"""Batch normalization as pure functions.

Paper: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167.

Conventions (the same as ``torch.nn.functional.batch_norm``; stated once here):
    * Inputs are ``(N, C, *)``; statistics are per channel (dim 1) over all other dims.
    * Training normalizes with the *biased* batch variance.
    * ``running_var`` is updated with the *unbiased* batch variance, ``var * n / (n - 1)``.
    * ``momentum`` is the weight of the new batch:
      ``running = (1 - momentum) * running + momentum * batch``; ``momentum=None`` is the
      cumulative average, with weight ``1 / num_batches_tracked`` (after the increment).
    * Pure functions never mutate: running statistics are returned, not updated in place
      (only ``bnlab.nn`` modules copy them into their buffers).
    * An empty batch (``N == 0``) returns an empty output and the statistics unchanged.
    * float16/bfloat16 inputs: statistics and arithmetic in float32, output in the input
      dtype.

``batch_norm`` here is differentiable through torch's autograd (every op is a torch
op, so second derivatives work); ``bnlab.autograd.batch_norm`` has the same signature
and uses the closed-form backward of :func:`batch_norm_backward`.

Everything here is torch ops. The fused kernels of ``bnlab.kernels`` compute the same
formulas; ``bnlab.autograd`` decides when a call takes them, and passes its own training
and eval forwards to :func:`batch_norm_with`. ``momentum`` becomes the weight of the new
batch in one place, :func:`running_update_factor`, for both paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from bnlab.functional.moments import (
    accumulation_dtype,
    centered_moments,
    channel_shape,
    per_channel_dot,
    per_channel_sum,
    records_grad,
)

__all__ = [
    "BatchNormOutput",
    "BatchStats",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_eval",
    "batch_norm_forward",
    "check_channel_args",
    "check_eps",
    "check_input",
    "check_momentum",
    "check_per_channel",
    "check_values_per_channel",
    "running_stats_update",
    "running_update_factor",
]

TrainForward = Callable[
    [Tensor, Tensor | None, Tensor | None, float], tuple[Tensor, Tensor, Tensor]
]
EvalForward = Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, float], Tensor]


class BatchNormOutput(NamedTuple):
    """What :func:`batch_norm` returns: the output and the (new) running statistics.

    ``running_mean``, ``running_var`` and ``num_batches_tracked`` are the values passed in
    when nothing was updated (eval mode, empty batch, or statistics not tracked).
    """

    output: Tensor
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None


# ---------------------------------------------------------------------------- checks


def check_eps(eps: float, name: str) -> None:
    """Raise ``ValueError`` unless ``eps`` is a finite number > 0."""
    if type(eps) is float and 0.0 < eps < math.inf:
        return  # the common case, first (it runs on every call of the modules)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise TypeError(
            f"{name}: eps must be a float > 0, got {eps!r} of type {type(eps).__name__}"
        )
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(
            f"{name}: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got {eps!r}"
        )


def check_momentum(momentum: float | None, name: str) -> None:
    """Raise ``ValueError`` unless ``momentum`` is ``None`` or in ``[0, 1]``."""
    if momentum is None or (type(momentum) is float and 0.0 <= momentum <= 1.0):
        return  # the common cases, first (it runs on every call of the modules)
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
        raise TypeError(
            f"{name}: momentum must be a float in [0, 1] or None, got {momentum!r} "
            f"of type {type(momentum).__name__}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"{name}: momentum must be in [0, 1] (the weight of the new batch, PyTorch's "
            f"convention; a decay of 0.9 is momentum=0.1), or None for a cumulative "
            f"average, got {momentum!r}"
        )


def check_input(x: Tensor, num_features: int | None, name: str) -> None:
    """Check that ``x`` is a floating tensor of shape ``(N, C, *)`` with ``C == num_features``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor input, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point input (float16, bfloat16, float32 or float64), "
            f"got dtype {x.dtype}; convert it first, for example with x.float()"
        )
    if x.dim() < 2:
        raise ValueError(
            f"{name}: expected an input of shape (N, C, *) with at least 2 dims, "
            f"got {x.dim()}D input of shape {tuple(x.shape)}"
        )
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"{name}: expected {num_features} channels in dim 1, got {x.shape[1]} "
            f"(input of shape {tuple(x.shape)}); the layer was built with "
            f"num_features={num_features}"
        )


def check_per_channel(t: Tensor | None, num_features: int, what: str, name: str) -> None:
    """Check that an optional per-channel tensor (weight, bias, running stat) has shape ``(C,)``."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != (num_features,):
        raise ValueError(
            f"{name}: {what} must have shape ({num_features},), one value per channel of the "
            f"input, got shape {tuple(t.shape)}"
        )


def check_channel_args(
    num_features: int,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    name: str,
) -> None:
    """Check the per-channel arguments of a functional norm: each ``(C,)`` or None, and
    the running statistics both given or both None."""
    for t, what in (
        (weight, "weight"),
        (bias, "bias"),
        (running_mean, "running_mean"),
        (running_var, "running_var"),
    ):
        check_per_channel(t, num_features, what, name)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: pass both running_mean and running_var, or neither")


def check_values_per_channel(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` when training would see a single value per channel."""
    if x.numel() // x.shape[1] == 1 and x.numel() > 0:
        raise ValueError(
            f"{name}: expected more than 1 value per channel when training, got input of shape "
            f"{tuple(x.shape)}; a batch of one has no batch variance. Use a batch of at least "
            f"2, or call .eval() to normalize with the running statistics"
        )


# ---------------------------------------------------------------------------- maths


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, without a dispatcher call when it already is (hot path)."""
    return t if t.dtype == dtype else t.to(dtype)


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    """A ``(C,)`` vector shaped to broadcast against ``like`` ``(N, C, *)``."""
    return v if like.dim() == 2 else v.view(channel_shape(like.dim(), v.shape[0]))


# One fused addcmul beats mul_ + add_ (fewer dispatches) only when the channel is the
# innermost dim, i.e. (N, C) inputs, and below this many elements; with a (1, C, 1, 1)
# operand, or above it, addcmul's broadcasting kernel is 2-3x slower than two
# streaming passes (measured on CPU, torch 2.13: 256x120, 256x16x8x8, 51 MB tensors).
_FUSED_AFFINE_MAX_NUMEL = 1 << 20


def _affine(t: Tensor, scale: Tensor | None, shift: Tensor | None, *, inplace: bool) -> Tensor:
    """``t * scale + shift`` per channel; ``inplace`` overwrites ``t`` (a temporary)."""
    s = None if scale is None else _per_channel(scale, t)
    b = None if shift is None else _per_channel(shift, t)
    if not inplace:
        out = t if s is None else t * s
        return out if b is None else out + b
    if s is None:
        return t if b is None else t.add_(b)
    if b is None:
        return t.mul_(s)
    # Not while torch.compile/export traces: a graph holding an out= op cannot run
    # under autograd (the exported training graph would fail).
    if t.dim() == 2 and t.numel() <= _FUSED_AFFINE_MAX_NUMEL and not torch.compiler.is_compiling():
        return torch.addcmul(b, t, s, out=t)
    return t.mul_(s).add_(b)


class BatchStats(NamedTuple):
    """Per-channel statistics of a training batch, all ``(C,)``.

    ``mean = pivot + offset``: ``pivot`` is a per-channel value near the data that was
    subtracted from ``x`` (the rounded first-pass mean; the channel's first element on
    the fast path), ``offset`` the mean of ``x - pivot``. The backward pass
    recentres ``x`` on the same ``pivot`` and corrects by ``offset``, which keeps the
    precision of the corrected two-pass algorithm (see ``moments.centered_moments``).
    """

    mean: Tensor
    var: Tensor
    inv_std: Tensor
    pivot: Tensor
    offset: Tensor


def batch_norm_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, BatchStats]:
    """Training-mode forward: normalize with the batch statistics.

    ``y = (x - mean) * inv_std * weight + bias`` with ``inv_std = 1 / sqrt(var + eps)``
    and the biased batch variance (corrected two pass, see ``moments``). Computed as
    ``y = d * scale + shift`` on ``d = x - pivot``, with ``scale = weight * inv_std`` and
    ``shift = bias - offset * scale``: one full-size tensor, written twice at most.

    Args:
        x: input, at least one element per channel.
        weight: scale gamma, or None for 1.
        bias: shift beta, or None for 0.
        eps: added to the variance.

    Returns:
        ``(y, stats)``: ``y`` in ``x.dtype``; :class:`BatchStats` in
        ``accumulation_dtype(x.dtype)``.

    Shape:
        x: ``(N, C, *)``; weight, bias: ``(C,)``; y: like x; statistics: ``(C,)``.
    """
    acc = accumulation_dtype(x.dtype)
    grad = records_grad(x, weight, bias)
    d, pivot, offset, var = centered_moments(x)
    inv_std = torch.rsqrt(var + eps)
    scale = inv_std if weight is None else _cast(weight, acc) * inv_std
    # shift = bias - offset * scale, fused.
    shift = torch.addcmul(
        torch.zeros_like(offset) if bias is None else _cast(bias, acc), offset, scale, value=-1.0
    )
    y = _affine(d, scale, shift, inplace=not grad)
    return _cast(y, x.dtype), BatchStats(pivot + offset, var, inv_std, pivot, offset)


def batch_norm_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: BatchStats,
    needs_input_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Closed-form backward of :func:`batch_norm_forward` (training mode).

    Derivation, per channel, with ``n`` values, ``d = x - mean``, ``x_hat = d * inv_std``,
    ``y = weight * x_hat + bias`` and ``g = grad_y``. Since ``mean`` and ``var`` depend on
    every ``x`` of the channel, ``d mean / d x_i = 1/n`` and ``d var / d x_i = 2 d_i / n``:

        grad_bias   = sum(g)
        grad_weight = sum(g * x_hat) = inv_std * sum(g * d)
        grad_x      = weight * inv_std / n * (n * g - sum(g) - x_hat * sum(g * x_hat))
                    = k1 * g + k2 * d + k3,   with
        k1 = weight * inv_std,  k2 = -k1 * inv_std**2 * sum(g * d) / n,  k3 = -k1 * sum(g) / n.

    ``d`` is formed as ``(x - pivot) - offset`` (see :class:`BatchStats`), and
    ``sum(g * d) = sum(g * (x - pivot)) - offset * sum(g)``, never as
    ``sum(g * x) - mean * sum(g)``, which cancels catastrophically when ``|mean| >> std``.
    Only the requested gradients are computed: ``grad_x`` costs one full-size tensor,
    ``grad_weight`` and ``grad_bias`` only reductions.

    Args:
        grad_y: gradient of the loss w.r.t. ``y``.
        x: the forward input.
        weight: the forward weight, or None.
        stats: the batch statistics of the forward pass.
        needs_input_grad: which of ``(grad_x, grad_weight, grad_bias)`` to compute.

    Returns:
        ``(grad_x, grad_weight, grad_bias)``, ``None`` where not requested; ``grad_x`` in
        ``x.dtype``, the others in the accumulation dtype.

    Shape:
        grad_y, x: ``(N, C, *)``; weight and the statistics: ``(C,)``.
    """
    need_x, need_w, need_b = needs_input_grad
    inv_std, offset = stats.inv_std, stats.offset
    acc = accumulation_dtype(x.dtype)
    count = x.numel() // x.shape[1]
    grad = records_grad(grad_y, x, weight, *stats)
    g = _cast(grad_y, acc)

    grad_x = grad_weight = grad_bias = None
    g_sum = per_channel_sum(g, acc) if (need_x or need_w or need_b) else None
    if need_x or need_w:
        d = x - _per_channel(stats.pivot, x)  # fresh; becomes grad_x below
        gd = per_channel_dot(g, d) - offset * g_sum
    if need_b:
        grad_bias = g_sum
    if need_w:
        grad_weight = gd * inv_std
    if need_x:
        k1 = inv_std if weight is None else _cast(weight, acc) * inv_std
        k1_over_n = k1 / -count
        k2 = gd * inv_std * inv_std * k1_over_n
        k3 = g_sum * k1_over_n - k2 * offset
        # grad_x = k2 * (x - pivot) + k3 + k1 * g, in two full-size passes over d.
        grad_x = _affine(d, k2, k3, inplace=not grad)
        if grad:
            grad_x = grad_x + g * _per_channel(k1, g)
        else:
            grad_x.addcmul_(g, _per_channel(k1, g))
        grad_x = _cast(grad_x, x.dtype)
    return grad_x, grad_weight, grad_bias


def batch_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Inference-mode forward: normalize with fixed statistics (arguments checked).

    The maths of :func:`_batch_norm_eval`, after the checks of :func:`batch_norm`:
    ``x`` floating point ``(N, C, *)``, statistics and affine ``(C,)``, ``eps > 0``.

    Raises:
        TypeError: a non-floating input or a non-tensor argument.
        ValueError: a bad shape, a per-channel tensor of another length, eps <= 0.

    Shape:
        x: ``(N, C, *)``; running_mean, running_var, weight, bias: ``(C,)``; y: like x.
    """
    name = "batch_norm_eval"
    check_input(x, None, name)
    check_eps(eps, name)
    for t, what in ((running_mean, "running_mean"), (running_var, "running_var")):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{name}: {what} must be a tensor of shape (C,), got {type(t).__name__}"
            )
    check_channel_args(x.shape[1], weight, bias, running_mean, running_var, name)
    return _batch_norm_eval(x, running_mean, running_var, weight, bias, eps)


def _batch_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Inference-mode forward: normalize with fixed statistics; callers check arguments.

    ``y = (x - running_mean) * scale + bias`` with ``scale = weight / sqrt(running_var +
    eps)``. The mean is subtracted before scaling: folding it into one affine map
    ``x * scale + (bias - running_mean * scale)`` rounds a shift of size
    ``|mean| * scale`` (1e7 for a float32 channel 1e4 + 1e-3 * noise), which costs a
    whole standard deviation. Differentiable through torch's autograd.

    Shape:
        x: ``(N, C, *)``; running_mean, running_var, weight, bias: ``(C,)``; y: like x.
    """
    acc = accumulation_dtype(x.dtype)
    scale = torch.rsqrt(_cast(running_var, acc) + eps)
    if weight is not None:
        scale = scale * _cast(weight, acc)
    shift = None if bias is None else _cast(bias, acc)
    # A fresh tensor in acc dtype: x itself is never written.
    d = x - _per_channel(_cast(running_mean, acc), x)
    y = _affine(
        d, scale, shift, inplace=not records_grad(x, weight, bias, running_mean, running_var)
    )
    return _cast(y, x.dtype)


def running_stats_update(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    factor: float,
) -> tuple[Tensor, Tensor]:
    """New running statistics after one batch: ``(1 - factor) * running + factor * batch``.

    Args:
        running_mean, running_var: current running statistics.
        mean, var: the batch mean and *biased* batch variance.
        count: values per channel in the batch (``n``); the running variance takes the
            unbiased ``var * n / (n - 1)``.
        factor: weight of the new batch (``momentum``, or ``1 / num_batches_tracked``).

    Returns:
        ``(new_running_mean, new_running_var)`` in the dtype of the running statistics.

    Shape:
        every tensor ``(C,)``.
    """
    unbiased = var.detach() * (count / (count - 1))
    new_mean = torch.lerp(running_mean, _cast(mean.detach(), running_mean.dtype), factor)
    new_var = torch.lerp(running_var, _cast(unbiased, running_var.dtype), factor)
    return new_mean, new_var


def running_update_factor(
    momentum: float | None, num_batches_tracked: Tensor | int | None, name: str
) -> float:
    """The weight of the new batch in the running statistics: the one place where
    ``momentum`` becomes it (the torch-ops path and the kernels both use it).

    Args:
        momentum: PyTorch's momentum, or None for the cumulative average.
        num_batches_tracked: the batch counter *including* this batch (after its
            increment), an int or a 0-dim tensor; read only for ``momentum=None``.
        name: prefixes the error message.

    Returns:
        ``momentum``, or ``1 / num_batches_tracked`` for ``momentum=None``.

    Raises:
        ValueError: ``momentum=None`` without a counter.
    """
    if momentum is not None:
        return momentum
    if num_batches_tracked is None:
        raise ValueError(
            f"{name}: momentum=None (cumulative average) needs num_batches_tracked; "
            f"pass the batch counter, or a momentum in [0, 1]"
        )
    return 1.0 / float(num_batches_tracked)


def _train_forward_autograd(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    y, stats = batch_norm_forward(x, weight, bias, eps)
    return y, stats.mean, stats.var


def batch_norm_with(
    train_forward: TrainForward,
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
    eval_forward: EvalForward = _batch_norm_eval,
) -> BatchNormOutput:
    """:func:`batch_norm` with the training (and eval) forward passed in.

    ``train_forward(x, weight, bias, eps) -> (y, mean, var)`` computes the training-mode
    output; ``bnlab.autograd`` passes its closed-form-backward Function here, so both
    entry points share the checks and the running-statistics logic.
    ``eval_forward(x, running_mean, running_var, weight, bias, eps) -> y`` normalizes
    with the running statistics after the checks (default: the torch ops here;
    ``bnlab.autograd`` passes one that may take the kernels).
    """
    check_input(x, None, name)
    num_features = x.shape[1]
    check_eps(eps, name)
    check_momentum(momentum, name)
    check_channel_args(num_features, weight, bias, running_mean, running_var, name)

    if not training:
        if running_mean is None or running_var is None:
            raise ValueError(
                f"{name}: training=False normalizes with running_mean and running_var, but "
                f"they are None; pass them, or use training=True for batch statistics"
            )
        y = eval_forward(x, running_mean, running_var, weight, bias, eps)
        return BatchNormOutput(y, running_mean, running_var, num_batches_tracked)

    if x.numel() == 0:
        # Nothing to measure: keep the statistics, and keep the graph to weight and bias.
        shape = channel_shape(x.dim(), num_features)
        y = x * (weight.view(shape) if weight is not None else 1.0)
        if bias is not None:
            y = y + bias.view(shape)
        return BatchNormOutput(y.to(x.dtype), running_mean, running_var, num_batches_tracked)

    check_values_per_channel(x, name)
    y, mean, var = train_forward(x, weight, bias, eps)
    if running_mean is None or running_var is None:
        return BatchNormOutput(y, None, None, num_batches_tracked)

    if num_batches_tracked is not None:
        num_batches_tracked = num_batches_tracked + 1
    factor = running_update_factor(momentum, num_batches_tracked, name)
    new_mean, new_var = running_stats_update(
        running_mean, running_var, mean, var, x.numel() // num_features, factor
    )
    return BatchNormOutput(y, new_mean, new_var, num_batches_tracked)


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
) -> BatchNormOutput:
    """Batch normalization, pure: the twin of ``torch.nn.functional.batch_norm``.

    Unlike torch's, it does not update ``running_mean``/``running_var`` in place: the
    new values come back in the result. Differentiable through torch's autograd,
    including second derivatives.

    Args:
        x: input ``(N, C, *)``, floating point.
        running_mean, running_var: running statistics ``(C,)``, or None to not track.
        weight, bias: affine parameters ``(C,)``, or None.
        training: normalize with the batch statistics (and return updated running
            statistics) or with the running statistics.
        momentum: weight of the new batch in the running average, or None for a
            cumulative average (then ``num_batches_tracked`` is required).
        eps: added to the variance, > 0.
        num_batches_tracked: batch counter (0-dim long tensor); returned incremented
            when the running statistics are updated.

    Returns:
        :class:`BatchNormOutput` ``(output, running_mean, running_var, num_batches_tracked)``.

    Raises:
        TypeError: non-floating input or non-tensor arguments.
        ValueError: bad shapes, a single value per channel in training, eps <= 0,
            momentum outside [0, 1], missing running statistics in eval.

    Shape:
        x: ``(N, C, *)``; output: like x; per-channel tensors ``(C,)``.
    """
    return batch_norm_with(
        _train_forward_autograd,
        x,
        running_mean,
        running_var,
        weight,
        bias,
        training,
        momentum,
        eps,
        num_batches_tracked,
    )
