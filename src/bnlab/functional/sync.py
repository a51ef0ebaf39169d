"""Synchronized batch norm, pure maths: per-rank moments, their merge, global-sum gradients.

Papers: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167; statistics synchronized across
devices ("cross-GPU BN") as in Zhang et al., "Context Encoding for Semantic
Segmentation", arXiv 1803.08904.

Each of ``K`` ranks holds a slice of one global batch. SyncBN normalizes every slice
with the statistics of the *concatenated* batch, and its backward gives each rank the
slice of the gradient of BN over the concatenated batch. Nothing here communicates:
``bnlab.autograd.sync_batch_norm`` moves the tensors built here between ranks.

Forward protocol (one collective): each rank packs ``(count, mean, M2)`` of its slice
(``M2 = sum((x - mean)**2)``, per channel) into one float64 vector of ``2 * C + 1``
values (:func:`pack_moments`); an all-gather gives every rank the ``(K, 2 * C + 1)``
table, and every rank merges it the same way (:func:`merge_moments`, Chan et al.'s
parallel formula), so all ranks hold bit-identical global statistics and running
statistics. Why gather and merge rather than all-reduce ``(count, sum, sum of squares)``:
``E[x**2] - E[x]**2`` cancels catastrophically for a channel ``1e4 + 1e-3 * noise``,
while Chan's merge only adds centred quantities. Why float64: the count is exact up to
2**53 (float32 stops at 2**24 values per channel, a 3D batch reaches that), and the
per-rank means are merged without rounding them first.

Backward protocol (one collective, only when ``grad_x`` is needed): each rank computes
the two per-channel sums ``sum(grad_y)`` and ``sum(grad_y * (x - mean))`` of its slice
(:func:`local_grad_sums`); an all-reduce (sum) of their concatenation (``2 * C`` values
in the accumulation dtype) gives the global sums, from which
:func:`batch_norm_grad_input` forms the rank's slice of ``grad_x``. ``grad_weight`` and
``grad_bias`` are the *local* sums: their sum over ranks is the gradient of BN over the
concatenated batch, and DistributedDataParallel averages them as for any parameter (as
``torch.nn.SyncBatchNorm`` does).

A rank with an empty slice packs count 0 (and zeros), which the merge weighs 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from bnlab.functional.batch_norm import BatchStats, _affine, _cast, _per_channel
from bnlab.functional.moments import (
    accumulation_dtype,
    centered_moments,
    per_channel_dot,
    per_channel_sum,
)

__all__ = [
    "PACK_DTYPE",
    "LocalMoments",
    "MergedMoments",
    "batch_norm_grad_input",
    "check_global_count",
    "local_grad_sums",
    "local_moments",
    "merge_moments",
    "pack_moments",
    "sync_batch_stats",
    "sync_normalize",
    "unpack_moments",
]

# The dtype of the packed per-rank moments (see the module docstring).
PACK_DTYPE = torch.float64


class MergedMoments(NamedTuple):
    """Statistics of a concatenation of parts: ``count`` (0-dim), ``mean`` and ``m2`` ``(C,)``.

    ``m2`` is the sum of squared deviations from ``mean``; the biased variance is
    ``m2 / count`` and the unbiased one ``m2 / (count - 1)``.
    """

    count: Tensor
    mean: Tensor
    m2: Tensor


def merge_moments(counts: Tensor, means: Tensor, m2s: Tensor) -> MergedMoments:
    """Merge per-part ``(count, mean, M2)`` into those of the concatenation (Chan's formula).

    Chan, Golub & LeVeque's parallel update for two parts ``a`` and ``b``,
    ``M2 = M2_a + M2_b + delta**2 * n_a * n_b / n`` with ``delta = mean_b - mean_a``,
    applied to ``K`` parts at once: ``mean = ref + sum(n_k * (mean_k - ref)) / n`` and
    ``M2 = sum(M2_k) + sum(n_k * (mean_k - mean)**2)``, which equals the pairwise
    recursion in exact arithmetic. ``ref`` is the mean of the first non-empty part, so
    the weighted average adds small centred numbers even when the channel sits at 1e4.
    Parts with count 0 have weight 0 (their mean and M2 are ignored, even if NaN).
    With no values at all the result is count 0, mean 0 and M2 0.

    Args:
        counts: values per channel in each part (>= 0).
        means: per-part means.
        m2s: per-part sums of squared deviations from the part mean.

    Returns:
        :class:`MergedMoments` in the dtype of ``means``.

    Shape:
        counts: ``(K,)``; means, m2s: ``(K, C)`` -> count ``()``, mean and m2 ``(C,)``.
    """
    dtype = means.dtype
    n_k = counts.to(dtype)
    present = (n_k > 0).unsqueeze(1)  # (K, 1)
    # Empty parts may carry anything (NaN from 0/0): zero them before they are weighed.
    means = torch.where(present, means, torch.zeros((), dtype=dtype, device=means.device))
    m2s = torch.where(present, m2s, torch.zeros((), dtype=dtype, device=m2s.device))
    n = n_k.sum()
    # A tensor index (no host sync on GPU); 0 when all parts are empty.
    first = torch.argmax((n_k > 0).to(torch.int8))
    ref = means[first]
    weights = n_k.unsqueeze(1)  # (K, 1)
    mean = ref + (weights * (means - ref)).sum(0) / n.clamp_min(1)
    m2 = m2s.sum(0) + (weights * (means - mean).square()).sum(0)
    return MergedMoments(n, mean, m2)


class LocalMoments(NamedTuple):
    """One rank's moments and what its normalization reuses.

    ``d`` is ``x - pivot`` (fresh, accumulation dtype, may be overwritten), ``pivot``
    ``(C,)`` the first-pass mean subtracted from ``x`` (see ``moments.centered_moments``),
    ``packed`` the ``(2 * C + 1,)`` float64 vector ``[count, mean, M2]`` to gather.
    """

    d: Tensor
    pivot: Tensor
    packed: Tensor


def local_moments(x: Tensor) -> LocalMoments:
    """Moments of this rank's slice, packed for the all-gather (see :func:`pack_moments`).

    An empty slice (``N == 0``) packs count 0 and zeros; its ``pivot`` is 0.

    Shape:
        x: ``(N, C, *)`` -> d: like x; pivot ``(C,)``; packed ``(2 * C + 1,)``.
    """
    c = x.shape[1]
    count = x.numel() // c if c else 0
    acc = accumulation_dtype(x.dtype)
    if count == 0:
        pivot = torch.zeros(c, dtype=acc, device=x.device)
        d = x.to(acc) if x.dtype != acc else x.clone()
        zeros = torch.zeros(c, dtype=PACK_DTYPE, device=x.device)
        return LocalMoments(d, pivot, pack_moments(0, zeros, zeros))
    d, pivot, offset, var = centered_moments(x)
    # The mean in float64 keeps the offset that pivot + offset would round away in float32.
    mean = pivot.to(PACK_DTYPE) + offset.to(PACK_DTYPE)
    m2 = var.to(PACK_DTYPE) * count
    return LocalMoments(d, pivot, pack_moments(count, mean, m2))


def pack_moments(count: int, mean: Tensor, m2: Tensor) -> Tensor:
    """``[count, mean_0 .. mean_{C-1}, M2_0 .. M2_{C-1}]`` as one float64 vector.

    Shape:
        mean, m2: ``(C,)`` -> ``(2 * C + 1,)``.
    """
    head = torch.full((1,), float(count), dtype=PACK_DTYPE, device=mean.device)
    return torch.cat([head, mean.to(PACK_DTYPE), m2.to(PACK_DTYPE)])


def unpack_moments(table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a gathered ``(K, 2 * C + 1)`` table into ``(counts, means, m2s)``.

    Shape:
        table: ``(K, 2 * C + 1)`` -> counts ``(K,)``, means ``(K, C)``, m2s ``(K, C)``.
    """
    if table.dim() != 2 or table.shape[1] % 2 != 1:
        raise ValueError(
            f"unpack_moments: expected a (K, 2 * C + 1) table of packed moments, got shape "
            f"{tuple(table.shape)}; build each row with pack_moments"
        )
    c = (table.shape[1] - 1) // 2
    return table[:, 0], table[:, 1 : 1 + c], table[:, 1 + c :]


def check_global_count(count: int, x: Tensor, world_size: int, name: str) -> None:
    """Raise ``ValueError`` when the whole global batch has one value per channel.

    Every rank calls this after the all-gather with the same ``count``, so every rank
    raises together (none is left waiting in a collective).
    """
    if count == 1:
        raise ValueError(
            f"{name}: expected more than 1 value per channel when training, got 1 value per "
            f"channel in the global batch over {world_size} ranks (this rank's input has "
            f"shape {tuple(x.shape)}); a batch of one has no batch variance. Use a larger "
            f"global batch, or call .eval() to normalize with the running statistics"
        )


def sync_batch_stats(
    local: LocalMoments, merged: MergedMoments, eps: float, dtype: torch.dtype
) -> BatchStats:
    """Global statistics, expressed against this rank's ``pivot``.

    ``offset = mean - pivot`` is taken in float64 before rounding, so ``d - offset``
    (``d = x - pivot``) is the deviation from the global mean to the precision of the
    corrected two-pass algorithm.

    Args:
        local: this rank's :class:`LocalMoments`.
        merged: the merged moments of all ranks (count > 0).
        eps: added to the variance.
        dtype: the accumulation dtype of the input.

    Returns:
        :class:`BatchStats` (global ``mean`` and biased ``var``, ``inv_std``, this rank's
        ``pivot`` and ``offset``), all ``(C,)`` in ``dtype``.
    """
    count = merged.count.clamp_min(1)
    var64 = (merged.m2 / count).clamp_min(0.0)
    offset = _cast(merged.mean - local.pivot.to(PACK_DTYPE), dtype)
    var = _cast(var64, dtype)
    inv_std = torch.rsqrt(var + eps)
    return BatchStats(_cast(merged.mean, dtype), var, inv_std, local.pivot, offset)


def sync_normalize(
    d: Tensor, weight: Tensor | None, bias: Tensor | None, stats: BatchStats, out_dtype: torch.dtype
) -> Tensor:
    """``y = (d - offset) * inv_std * weight + bias``, overwriting ``d`` (a temporary).

    As ``batch_norm_forward``: ``y = d * scale + shift`` with ``scale = weight * inv_std``
    and ``shift = bias - offset * scale``.

    Shape:
        d: ``(N, C, *)``; weight, bias and the statistics ``(C,)``; y: like d.
    """
    acc = d.dtype
    scale = stats.inv_std if weight is None else _cast(weight, acc) * stats.inv_std
    base = torch.zeros_like(stats.offset) if bias is None else _cast(bias, acc)
    shift = torch.addcmul(base, stats.offset, scale, value=-1.0)
    return _cast(_affine(d, scale, shift, inplace=True), out_dtype)


def local_grad_sums(grad_y: Tensor, x: Tensor, stats: BatchStats) -> tuple[Tensor, Tensor]:
    """This rank's ``sum(grad_y)`` and ``sum(grad_y * (x - mean))``, per channel.

    ``mean`` is the global mean; the second sum is formed as
    ``sum(g * (x - pivot)) - offset * sum(g)`` (centred on this rank's pivot), never as
    ``sum(g * x) - mean * sum(g)``, which cancels when ``|mean| >> std``. An empty slice
    gives zeros. Their sums over ranks are the sums of BN's backward over the
    concatenated batch.

    Returns:
        ``(g_sum, gd_sum)``, each ``(C,)`` in the accumulation dtype.

    Shape:
        grad_y, x: ``(N, C, *)``; statistics ``(C,)``.
    """
    acc = accumulation_dtype(x.dtype)
    if x.numel() == 0:
        zeros = torch.zeros(x.shape[1], dtype=acc, device=x.device)
        return zeros, zeros.clone()
    g = _cast(grad_y, acc)
    g_sum = per_channel_sum(g, acc)
    d = x - _per_channel(stats.pivot, x)
    gd_sum = per_channel_dot(g, _cast(d, acc)) - stats.offset * g_sum
    return g_sum, gd_sum


def batch_norm_grad_input(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: BatchStats,
    g_sum: Tensor,
    gd_sum: Tensor,
    count: int,
) -> Tensor:
    """``grad_x`` of BN from the (global) sums, for this rank's slice.

    The closed form of ``batch_norm_backward`` with the sums and the count of the
    concatenated batch: with ``d = x - mean`` and ``k1 = weight * inv_std``,

        grad_x = k1 * g + k2 * d + k3,
        k2 = -k1 * inv_std**2 * gd_sum / count,   k3 = -k1 * g_sum / count,

    where ``g_sum = sum(g)`` and ``gd_sum = sum(g * d)`` run over *all* ranks' values.
    With one rank (local sums and count) it equals ``batch_norm_backward``'s ``grad_x``.

    Args:
        grad_y: this rank's gradient w.r.t. ``y``.
        x: this rank's forward input.
        weight: the forward weight, or None.
        stats: the global statistics against this rank's pivot (:func:`sync_batch_stats`).
        g_sum, gd_sum: global sums (all-reduced :func:`local_grad_sums`).
        count: values per channel in the global batch (> 0).

    Returns:
        ``grad_x`` in ``x.dtype``.

    Shape:
        grad_y, x: ``(N, C, *)``; the rest ``(C,)``; grad_x: like x.
    """
    acc = accumulation_dtype(x.dtype)
    inv_std, offset = stats.inv_std, stats.offset
    k1 = inv_std if weight is None else _cast(weight, acc) * inv_std
    k1_over_n = k1 / -count
    k2 = gd_sum * inv_std * inv_std * k1_over_n
    k3 = g_sum * k1_over_n - k2 * offset
    d = x - _per_channel(stats.pivot, x)  # fresh; becomes grad_x
    grad_x = _affine(_cast(d, acc), k2, k3, inplace=True)
    grad_x.addcmul_(_cast(grad_y, acc), _per_channel(k1, grad_y))
    return _cast(grad_x, x.dtype)
