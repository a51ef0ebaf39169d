"""Per-channel reductions shared by every normalization layer.

Every norm in bnlab is "choose the reduction dims, then moments, then normalize"
(the design of Flax's ``flax/linen/normalization.py``). This module holds the
reductions; they are pure functions that never mutate their inputs.

Conventions:
    * The channel dim is 1: inputs are ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or
      ``(N, C, D, H, W)``, and per-channel statistics reduce every other dim.
    * Variance is the biased (population) variance, ``mean((x - mean)**2)``.
    * Statistics of float16/bfloat16 inputs are accumulated and returned in float32.

Numerics: the statistics are computed in two passes (a mean first, then sums of the
deviations from it, corrected for the rounding of that mean), so a float32 channel
``1e4 + 1e-3 * noise`` has the mean and variance of the noise, which the one-pass
``E[x^2] - E[x]^2`` loses to cancellation.

Speed: on CPU, ``torch.var_mean`` over several dims is an order of magnitude slower
than a plain sum of a contiguous tensor (it runs a scalar Welford loop), so the sums
here view the tensor so that the reduced elements of a channel are contiguous rows
and reduce those rows first.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "accumulation_dtype",
    "batch_moments",
    "centered_moments",
    "channel_shape",
    "checked_variance",
    "per_channel_dot",
    "per_channel_sum",
    "per_channel_sum_sq",
    "records_grad",
    "reduction_dims",
]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float32 for 16-bit floats, else ``dtype``."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def reduction_dims(ndim: int) -> tuple[int, ...]:
    """Dims reduced for per-channel statistics of a rank-``ndim`` input: all but dim 1."""
    return (0, *range(2, ndim))


def channel_shape(ndim: int, num_channels: int) -> tuple[int, ...]:
    """Shape that broadcasts a ``(C,)`` vector against a rank-``ndim`` input: ``(1, C, 1, ...)``."""
    return (1, num_channels) + (1,) * (ndim - 2)


def _rows(x: Tensor) -> Tensor | None:
    """A view of ``x`` as ``(rows, C, S)`` or ``(R, C)`` whose per-channel reduction is fast.

    Returns ``(N, C, S)`` for a contiguous input (S = spatial size), ``(N*S, C)`` for a
    channels-last input, and ``None`` when no such view exists (other strides).
    """
    if x.dim() == 2:
        return x
    n, c = x.shape[0], x.shape[1]
    if x.is_contiguous():
        return x.view(n, c, -1)
    # channels_last / channels_last_3d: C is the innermost dim.
    moved = x.movedim(1, -1)
    if moved.is_contiguous():
        return moved.view(-1, c)
    return None


def checked_variance(var: Tensor) -> Tensor:
    """``var`` clamped at 0 (rounding), NaN kept, and +inf made NaN.

    The variance of finite data is +inf only when ``sum(d**2)`` overflowed the
    accumulation dtype (float32 data spread beyond about 1e19): ``rsqrt(inf + eps) = 0``
    would give the finite, wrong ``y = bias`` with zero gradients, so the statistics are
    NaN instead, as torch's are on most paths (data holding inf or NaN give a NaN
    variance already: ``inf - inf``).
    """
    return var.clamp_min(0.0).nan_to_num(nan=float("nan"), posinf=float("nan"))


def records_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records ops on these tensors.

    Fast paths mutate their own temporaries and use kernels without double backward;
    when autograd records, the plain differentiable ops are used instead.
    """
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def per_channel_sum(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Sum over every dim but 1.

    Shape:
        x: ``(N, C, *)`` -> ``(C,)``
    """
    dtype = dtype or accumulation_dtype(x.dtype)
    rows = _rows(x)
    if rows is None:
        return x.sum(reduction_dims(x.dim()), dtype=dtype)
    if rows.dim() == 3:
        return rows.sum(2, dtype=dtype).sum(0)
    return rows.sum(0, dtype=dtype)


def per_channel_sum_sq(d: Tensor) -> Tensor:
    """Sum of squares over every dim but 1, without a full-size temporary where possible.

    Shape:
        d: ``(N, C, *)`` -> ``(C,)``
    """
    rows = _rows(d)
    if rows is not None and rows.dim() == 3 and not records_grad(d):
        # Row norms read d once; squaring the (N, C) norms is cheap.
        return torch.linalg.vector_norm(rows, dim=2).square().sum(0)
    return (d * d).sum(reduction_dims(d.dim()))


def per_channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a * b)`` over every dim but 1, without a full-size temporary where possible.

    Shape:
        a, b: ``(N, C, *)`` (same shape) -> ``(C,)``
    """
    if a.dim() > 2 and a.is_contiguous() and b.is_contiguous() and not records_grad(a, b):
        n, c = a.shape[0], a.shape[1]
        # One dot product per (n, c) row: a batched (1, S) @ (S, 1) product.
        dots = torch.bmm(a.reshape(n * c, 1, -1), b.reshape(n * c, -1, 1))
        return dots.view(n, c).sum(0)
    return (a * b).sum(reduction_dims(a.dim()))


def centered_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-channel statistics by the corrected two-pass algorithm, and the centred input.

    Pass 1: ``pivot = sum(x) / n``. Pass 2 on ``d = x - pivot``: ``offset = sum(d) / n``
    and ``var = sum(d**2) / n - offset**2``. The batch mean is ``pivot + offset``; the
    pair keeps it exactly. In float32 the rounded ``pivot`` of a channel near 1e4 is off
    by up to one float32 step (about 1e-3), which can be a whole standard deviation of
    the data; ``offset`` measures that error from the centred values, where it is
    representable, so ``d - offset`` is the exact deviation from the mean.
    (Chan, Golub & LeVeque, "Algorithms for computing the sample variance", 1983.)
    This is the per-channel case of ``bnlab.functional.norms.moments_over`` (any dims)
    with the fast row reductions of this module; a test keeps the two equal.

    Returns:
        ``(d, pivot, offset, var)``: ``d`` a fresh ``(N, C, *)`` tensor in the
        accumulation dtype (callers may overwrite it), the rest ``(C,)``.
    """
    acc = accumulation_dtype(x.dtype)
    count = x.numel() // x.shape[1]
    pivot = per_channel_sum(x, acc) / count
    shape = channel_shape(x.dim(), x.shape[1])
    d = x - (pivot if x.dim() == 2 else pivot.view(shape))
    offset = per_channel_sum(d, acc) / count
    # var = sum(d**2) / n - offset**2, as one fused op (small per-channel ops cost a
    # dispatch each, which dominates small inputs).
    var = torch.addcmul(per_channel_sum_sq(d) / count, offset, offset, value=-1.0)
    return d, pivot, offset, checked_variance(var)


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance (corrected two-pass, see ``centered_moments``).

    Args:
        x: input of shape ``(N, C, *)`` with at least one element per channel.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``, in ``accumulation_dtype(x.dtype)``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``x`` has fewer than 2 dims, or no element per channel.

    Shape:
        x: ``(N, C, *)`` -> ``(C,)``, ``(C,)``
    """
    # The public entry point checks its input; centered_moments (the hot path under
    # batch_norm, which checks before) does not.
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if isinstance(x, Tensor) else f"a {type(x).__name__}"
        raise TypeError(
            f"batch_moments: expected a floating-point tensor (float16, bfloat16, float32 or "
            f"float64), got {got}; convert it first, for example with x.float()"
        )
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(
            f"batch_moments: expected an input of shape (N, C, *) with at least one element "
            f"per channel, got shape {tuple(x.shape)}"
        )
    _, pivot, offset, var = centered_moments(x)
    return pivot + offset, var
