"""Layer, group and instance normalization as pure functions, on one moments core.

Papers: Ba, Kiros & Hinton, "Layer Normalization", arXiv 1607.06450; Wu & He, "Group
Normalization", arXiv 1803.08494; Ulyanov, Vedaldi & Lempitsky, "Instance
Normalization: The Missing Ingredient for Fast Stylization", arXiv 1607.08022.

Every norm here is "choose the reduction dims" (Flax ``flax/linen/normalization.py``):

    * ``layer_norm``: the trailing ``len(normalized_shape)`` dims of each sample;
    * ``group_norm``: the channels of one group and all spatial dims, per sample;
    * ``instance_norm``: the spatial dims, per sample and channel;

then :func:`moments_over` (the corrected two-pass algorithm of
``bnlab.functional.moments.centered_moments``, over arbitrary dims) and
:func:`normalize_over`. Conventions as in ``bnlab.functional.batch_norm``: biased
variance for normalizing, unbiased for the running variance, ``momentum`` the weight of
the new batch; float16/bfloat16 inputs are reduced and normalized in float32 and
returned in the input dtype. Pure: nothing is mutated, new running statistics are
returned. Differentiable through torch's autograd (every op is a torch op).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from bnlab.functional.batch_norm import (
    _batch_norm_eval,
    check_channel_args,
    check_eps,
    check_input,
    check_momentum,
    check_per_channel,
)
from bnlab.functional.moments import accumulation_dtype, channel_shape, checked_variance

__all__ = [
    "InstanceNormOutput",
    "check_floating_input",
    "check_positive_int",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments_over",
    "normalize_over",
]


class InstanceNormOutput(NamedTuple):
    """What :func:`instance_norm` returns: the output and the (new) running statistics.

    The running statistics are the tensors passed in when nothing was updated (running
    statistics used for normalizing, or not tracked).
    """

    output: Tensor
    running_mean: Tensor | None
    running_var: Tensor | None


# ---------------------------------------------------------------------------- checks


def check_floating_input(x: Tensor, min_dim: int, layout: str, name: str) -> None:
    """Check that ``x`` is a floating tensor with at least ``min_dim`` dims.

    The type errors are batch norm's (``check_input``); the rank error names ``layout``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        check_input(x, None, name)  # raises its TypeError for either case
    if x.dim() < min_dim:
        raise ValueError(
            f"{name}: expected an input of shape {layout} with at least {min_dim} dims, "
            f"got {x.dim()}D input of shape {tuple(x.shape)}"
        )


def check_positive_int(value: object, what: str, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is an int > 0 (a bool is not)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}: {what} must be an int > 0, got {value!r}")


def _check_shaped(t: Tensor | None, shape: tuple[int, ...], what: str, name: str) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: {what} must have shape {shape}, got shape {tuple(t.shape)}")


# ---------------------------------------------------------------------------- maths


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def moments_over(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean and biased variance over ``dims`` by the corrected two-pass algorithm.

    Pass 1: ``pivot = mean(x)``; pass 2 on ``d = x - pivot``: ``offset = mean(d)`` and
    ``var = mean(d**2) - offset**2``; the mean is ``pivot + offset`` and ``d - offset``
    the exact deviation from it (see ``moments.centered_moments`` for why: a float32
    value near 1e4 rounds its mean by about 1e-3, which may be a whole std).

    Args:
        x: input, at least one element in the reduced dims.
        dims: the dims to reduce (any order, negative allowed).

    Returns:
        ``(d, pivot, offset, var)`` in ``accumulation_dtype(x.dtype)``: ``d`` like ``x``,
        the rest with the reduced dims kept as size 1.

    Shape:
        x: ``(*)``; statistics: ``x.shape`` with ``dims`` set to 1.
    """
    acc = accumulation_dtype(x.dtype)
    dims = tuple(dims)
    count = math.prod(x.shape[i] for i in dims)
    pivot = x.sum(dims, keepdim=True, dtype=acc) / count
    d = x - pivot  # fresh tensor in acc dtype
    offset = d.sum(dims, keepdim=True) / count
    var = (d * d).sum(dims, keepdim=True) / count - offset * offset
    return d, pivot, offset, checked_variance(var)


def normalize_over(x: Tensor, dims: Sequence[int], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``x_hat = (x - mean) / sqrt(var + eps)`` with statistics over ``dims``.

    Returns:
        ``(x_hat, mean, var)`` in the accumulation dtype; statistics keep the reduced dims.

    Shape:
        x, x_hat: ``(*)``; mean, var: ``x.shape`` with ``dims`` set to 1.
    """
    d, pivot, offset, var = moments_over(x, dims)
    x_hat = (d - offset) * torch.rsqrt(var + eps)
    return x_hat, pivot + offset, var


def _affine(t: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``t * weight + bias``; weight and bias already shaped to broadcast against ``t``."""
    if weight is not None:
        t = t * _cast(weight, t.dtype)
    if bias is not None:
        t = t + _cast(bias, t.dtype)
    return t


def _channel_params(
    x: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """Per-channel ``weight`` and ``bias`` ``(C,)`` shaped to broadcast against ``x``."""
    shape = channel_shape(x.dim(), x.shape[1])
    return (
        None if weight is None else weight.view(shape),
        None if bias is None else bias.view(shape),
    )


def _empty_output(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """The output for an input with no elements: ``x * weight + bias``, which keeps the
    graph to the parameters (weight and bias shaped to broadcast against ``x``)."""
    return _cast(_affine(x.to(accumulation_dtype(x.dtype)), weight, bias), x.dtype)


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    name: str = "layer_norm",
) -> Tensor:
    """Layer normalization: the twin of ``torch.nn.functional.layer_norm``.

    Normalizes over the trailing ``len(normalized_shape)`` dims of ``x``, whose sizes must
    equal ``normalized_shape``; then ``y = x_hat * weight + bias`` elementwise.

    Args:
        x: floating input ``(*, *normalized_shape)``.
        normalized_shape: the trailing shape to normalize over (an int is one dim).
        weight, bias: elementwise affine parameters of shape ``normalized_shape``, or None.
        eps: added to the variance, > 0.
        name: prefixes error messages (modules pass their class name).

    Returns:
        The output, like ``x`` (same dtype).

    Raises:
        TypeError: non-tensor or non-floating input.
        ValueError: trailing dims that differ from ``normalized_shape``, badly shaped
            weight or bias, eps <= 0.

    Shape:
        x: ``(*, *normalized_shape)``; weight, bias: ``normalized_shape``; output: like x.
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    check_floating_input(x, len(shape), f"(*, {', '.join(map(str, shape))})", name)
    check_eps(eps, name)
    if len(shape) == 0 or tuple(x.shape[x.dim() - len(shape) :]) != shape:
        raise ValueError(
            f"{name}: normalized_shape={list(shape)} must equal the trailing dims of the "
            f"input, got input of shape {tuple(x.shape)}; expected an input of shape "
            f"(*, {', '.join(map(str, shape))})"
        )
    _check_shaped(weight, shape, "weight", name)
    _check_shaped(bias, shape, "bias", name)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    if x.numel() == 0:
        return _empty_output(x, weight, bias)
    x_hat, _, _ = normalize_over(x, dims, eps)
    return _cast(_affine(x_hat, weight, bias), x.dtype)


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    name: str = "group_norm",
) -> Tensor:
    """Group normalization: the twin of ``torch.nn.functional.group_norm``.

    The ``C`` channels are split into ``num_groups`` consecutive groups; each sample's
    group is normalized over its channels and all spatial dims; then a per-channel
    ``y = x_hat * weight + bias``.

    Args:
        x: floating input ``(N, C, *)``.
        num_groups: number of groups, dividing ``C``.
        weight, bias: per-channel affine parameters ``(C,)``, or None.
        eps: added to the variance, > 0.
        name: prefixes error messages (modules pass their class name).

    Returns:
        The output, like ``x`` (same dtype).

    Raises:
        TypeError: non-tensor or non-floating input.
        ValueError: ``num_groups`` not dividing ``C``, fewer than 2 dims, bad weight or
            bias shapes, eps <= 0.

    Shape:
        x: ``(N, C, *)``; weight, bias: ``(C,)``; output: like x.
    """
    check_floating_input(x, 2, "(N, C, *)", name)
    check_eps(eps, name)
    num_channels = x.shape[1]
    check_positive_int(num_groups, "num_groups", name)
    if num_channels % num_groups != 0:
        raise ValueError(
            f"{name}: num_groups={num_groups} must divide the {num_channels} channels of the "
            f"input of shape {tuple(x.shape)}; choose a divisor of {num_channels}"
        )
    check_per_channel(weight, num_channels, "weight", name)
    check_per_channel(bias, num_channels, "bias", name)
    w, b = _channel_params(x, weight, bias)
    if x.numel() == 0:
        return _empty_output(x, w, b)
    # (N, C, *) -> (N, G, C/G * prod(*)): one row per (sample, group).
    grouped = x.reshape(x.shape[0], num_groups, -1)
    x_hat, _, _ = normalize_over(grouped, (2,), eps)
    return _cast(_affine(x_hat.view(x.shape), w, b), x.dtype)


def instance_norm(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    name: str = "instance_norm",
) -> InstanceNormOutput:
    """Instance normalization, pure: the twin of ``torch.nn.functional.instance_norm``.

    With ``use_input_stats`` each ``(sample, channel)`` is normalized over its spatial
    dims, and, when running statistics are given, they are updated as torch does:
    ``running = (1 - momentum) * running + momentum * batch``, where the batch mean and
    variance of a channel are the averages over the samples of the per-instance mean
    and *unbiased* per-instance variance. Without ``use_input_stats`` the running
    statistics normalize, per channel. Unlike torch's, nothing is updated in place.

    Args:
        x: floating input ``(N, C, *)`` with at least one spatial dim.
        running_mean, running_var: ``(C,)`` running statistics, or None.
        weight, bias: per-channel affine parameters ``(C,)``, or None.
        use_input_stats: normalize with the statistics of each instance.
        momentum: weight of the new batch in the running statistics, in [0, 1].
        eps: added to the variance, > 0.
        name: prefixes error messages (modules pass their class name).

    Returns:
        :class:`InstanceNormOutput` ``(output, running_mean, running_var)``.

    Raises:
        TypeError: non-tensor or non-floating input.
        ValueError: fewer than 3 dims, one spatial element with input statistics, bad
            per-channel shapes, missing running statistics without input statistics,
            eps <= 0, momentum outside [0, 1].

    Shape:
        x: ``(N, C, *)``; per-channel tensors ``(C,)``; output: like x.
    """
    check_floating_input(x, 3, "(N, C, L), (N, C, H, W) or (N, C, D, H, W)", name)
    check_eps(eps, name)
    if momentum is None:
        raise ValueError(f"{name}: momentum must be a float in [0, 1], got None")
    check_momentum(momentum, name)
    num_channels = x.shape[1]
    check_channel_args(num_channels, weight, bias, running_mean, running_var, name)

    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(
                f"{name}: use_input_stats=False normalizes with running_mean and "
                f"running_var, but they are None; pass them, or use use_input_stats=True"
            )
        y = _batch_norm_eval(x, running_mean, running_var, weight, bias, eps)
        return InstanceNormOutput(y, running_mean, running_var)

    w, b = _channel_params(x, weight, bias)
    if x.numel() == 0:
        return InstanceNormOutput(_empty_output(x, w, b), running_mean, running_var)
    count = math.prod(x.shape[2:])
    if count == 1:
        raise ValueError(
            f"{name}: expected more than 1 spatial element per instance when using input "
            f"statistics, got input of shape {tuple(x.shape)}; feed it larger feature maps "
            "(resize the images) or use another norm there"
        )
    dims = tuple(range(2, x.dim()))
    x_hat, mean, var = normalize_over(x, dims, eps)  # stats (N, C, 1, ...)
    y = _cast(_affine(x_hat, w, b), x.dtype)
    if running_mean is None or running_var is None:
        return InstanceNormOutput(y, running_mean, running_var)
    # (N, C, 1, ...) -> (C,): average of the per-instance statistics over the batch.
    batch_mean = mean.detach().reshape(x.shape[0], num_channels).mean(0)
    batch_var = (var.detach() * (count / (count - 1))).reshape(x.shape[0], num_channels).mean(0)
    new_mean = torch.lerp(running_mean, _cast(batch_mean, running_mean.dtype), momentum)
    new_var = torch.lerp(running_var, _cast(batch_var, running_var.dtype), momentum)
    return InstanceNormOutput(y, new_mean, new_var)
