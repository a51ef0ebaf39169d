"""Synchronized batch norm over ``torch.distributed``, bound as a ``torch.autograd.Function``.

Papers: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167; statistics
synchronized across devices as in Zhang et al., "Context Encoding for Semantic
Segmentation", arXiv 1803.08904. The maths is ``bnlab.functional.sync`` (its module
docstring derives the protocol); this module owns the collectives. It works with any
backend that has all-gather and all-reduce: gloo on CPU, nccl on GPU.

Collective protocol, per SyncBN layer and training step, on every rank of the group,
in this order (a rank with an empty batch takes part too, so no rank waits forever):

1. forward, one all-gather (``all_gather_single``, formerly ``all_gather_into_tensor``): every rank sends its float64 vector
   ``[count, mean (C), M2 (C)]`` (``2 * C + 1`` values) and receives the
   ``(world_size, 2 * C + 1)`` table; every rank merges it identically (Chan's parallel
   formula), so statistics and running statistics are bit-identical across ranks.
2. backward, one ``all_reduce`` (sum), only when the input needs a gradient: every rank
   sends ``[sum(grad_y), sum(grad_y * (x - mean))]`` (``2 * C`` values, accumulation
   dtype) and receives the global sums. ``grad_weight``/``grad_bias`` stay local sums
   (their sum over ranks is BN's over the concatenated batch); DistributedDataParallel
   averages them over ranks like any other parameter gradient, as it does for
   ``torch.nn.SyncBatchNorm``, so they get the same 1/world_size scale as the rest of
   the model.

When the whole global batch is empty, forward returns an empty output and the backward
skips its collective (every rank knows the global count). When it has one value per
channel, every rank raises the same ``ValueError`` after the all-gather. Double backward
is not supported (the global statistics are not part of the graph).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from bnlab.functional.batch_norm import (
    BatchNormOutput,
    BatchStats,
    check_channel_args,
    check_eps,
    check_input,
    check_momentum,
    running_stats_update,
    running_update_factor,
)
from bnlab.functional.moments import accumulation_dtype
from bnlab.functional.sync import (
    batch_norm_grad_input,
    check_global_count,
    local_grad_sums,
    local_moments,
    merge_moments,
    sync_batch_stats,
    sync_normalize,
    unpack_moments,
)

__all__ = [
    "Collectives",
    "LocalCollectives",
    "ProcessGroupCollectives",
    "SyncBatchNormFunction",
    "sync_batch_norm",
]


class Collectives(Protocol):
    """The two collectives SyncBN needs, over a fixed group of ``world_size`` ranks."""

    world_size: int

    def all_gather(self, t: Tensor) -> Tensor:
        """Every rank's ``t`` stacked in rank order: ``(C,) -> (world_size, C)``."""
        ...

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """The sum of every rank's ``t`` (may reuse ``t``'s storage)."""
        ...


# torch 2.13 renamed all_gather_into_tensor (now deprecated); older torch has only the old name.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class ProcessGroupCollectives:
    """:class:`Collectives` over a ``torch.distributed`` process group.

    Args:
        group: the process group, or None for the default (world) group.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group)

    def all_gather(self, t: Tensor) -> Tensor:
        # A flat output: gloo accepts only (world_size * numel,), nccl both layouts.
        out = t.new_empty(self.world_size * t.numel())
        _all_gather_single(out, t.contiguous().view(-1), group=self.group)
        return out.view(self.world_size, *t.shape)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        t = t.contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t


class LocalCollectives:
    """:class:`Collectives` of a single rank (identity): SyncBN's maths without communication."""

    world_size = 1

    def all_gather(self, t: Tensor) -> Tensor:
        return t.unsqueeze(0)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        return t


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode SyncBN: ``(x, weight, bias, eps, collectives, name) -> (y, mean, var, count)``.

    ``mean`` and the biased ``var`` are the global statistics (accumulation dtype),
    ``count`` the global number of values per channel (0-dim float64); none of them is
    differentiable. Collectives: see the module docstring.

    Shape:
        x: ``(N, C, *)`` (``N`` may be 0); weight, bias: ``(C,)`` or None; y: like x;
        mean, var: ``(C,)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        collectives: Collectives,
        name: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        acc = accumulation_dtype(x.dtype)
        local = local_moments(x)
        merged = merge_moments(*unpack_moments(collectives.all_gather(local.packed)))
        count = int(merged.count)
        check_global_count(count, x, collectives.world_size, name)
        ctx.collectives = collectives
        ctx.count = count
        ctx.dtypes = (
            None if weight is None else weight.dtype,
            None if bias is None else bias.dtype,
        )
        if count == 0:
            # Nothing anywhere: an empty output, and no collective in backward.
            ctx.save_for_backward(x, weight)
            mean = torch.zeros(x.shape[1], dtype=acc, device=x.device)
            var = torch.zeros_like(mean)
            ctx.mark_non_differentiable(mean, var, merged.count)
            return x.clone(), mean, var, merged.count
        stats = sync_batch_stats(local, merged, eps, acc)
        y = sync_normalize(local.d, weight, bias, stats, x.dtype)
        ctx.save_for_backward(x, weight, stats.inv_std, stats.pivot, stats.offset)
        mean, var = stats.mean, stats.var
        ctx.mark_non_differentiable(mean, var, merged.count)
        return y, mean, var, merged.count

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_y: Tensor, *_unused: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        w_dtype, b_dtype = ctx.dtypes
        if ctx.count == 0:
            x, weight = ctx.saved_tensors
            c = x.shape[1]
            grad_x = torch.zeros_like(x) if need_x else None
            grad_w = torch.zeros(c, dtype=w_dtype, device=x.device) if need_w else None
            grad_b = torch.zeros(c, dtype=b_dtype, device=x.device) if need_b else None
            return grad_x, grad_w, grad_b, None, None, None
        x, weight, inv_std, pivot, offset = ctx.saved_tensors
        stats = BatchStats(None, None, inv_std, pivot, offset)  # backward needs no mean/var
        g_sum, gd_sum = local_grad_sums(grad_y, x, stats)
        grad_x = grad_w = grad_b = None
        if need_w:
            grad_w = (gd_sum * inv_std).to(w_dtype)
        if need_b:
            grad_b = g_sum.to(b_dtype)
        if need_x:
            c = x.shape[1]
            sums = ctx.collectives.all_reduce_sum(torch.cat([g_sum, gd_sum]))
            grad_x = batch_norm_grad_input(grad_y, x, weight, stats, sums[:c], sums[c:], ctx.count)
        return grad_x, grad_w, grad_b, None, None, None


def sync_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    num_batches_tracked: Tensor | None = None,
    *,
    collectives: Collectives,
    name: str = "sync_batch_norm",
) -> BatchNormOutput:
    """Training-mode batch norm over the concatenation of every rank's ``x``; pure.

    The running statistics are returned, not updated in place; they move with the
    global mean and the unbiased global variance ``var * n / (n - 1)`` (``n`` the global
    count), and do not move when the global batch is empty. Every rank of the group
    must call this (with the same channels, dtype and running statistics), also with
    an empty ``x``.

    Args:
        x: this rank's input ``(N, C, *)``, floating point; ``N`` may be 0.
        running_mean, running_var: running statistics ``(C,)``, or None to not track.
        weight, bias: affine parameters ``(C,)``, or None.
        momentum: weight of the new batch in the running average, or None for a
            cumulative average (then ``num_batches_tracked`` is required).
        eps: added to the variance, > 0.
        num_batches_tracked: batch counter (0-dim long tensor), returned incremented
            when the running statistics are updated.
        collectives: :class:`ProcessGroupCollectives` (or :class:`LocalCollectives`).
        name: prefixes error messages.

    Returns:
        :class:`~bnlab.functional.batch_norm.BatchNormOutput`.

    Raises:
        TypeError: non-floating input or non-tensor arguments.
        ValueError: bad shapes, eps <= 0, momentum outside [0, 1], and (on every rank)
            a global batch with a single value per channel.

    Shape:
        x: ``(N, C, *)``; output: like x; per-channel tensors ``(C,)``.
    """
    check_input(x, None, name)
    num_features = x.shape[1]
    check_eps(eps, name)
    check_momentum(momentum, name)
    check_channel_args(num_features, weight, bias, running_mean, running_var, name)
    if running_mean is not None and num_batches_tracked is None:
        # Before the collectives, so that every rank raises instead of waiting: the
        # update's own check (momentum=None needs the counter).
        running_update_factor(momentum, None, name)

    y, mean, var, count_t = SyncBatchNormFunction.apply(x, weight, bias, eps, collectives, name)
    count = int(count_t)
    if count == 0:
        # An empty global batch: nothing measured, the statistics stay (as BatchNorm's).
        return BatchNormOutput(y, running_mean, running_var, num_batches_tracked)
    if running_mean is None or running_var is None:
        return BatchNormOutput(y, None, None, num_batches_tracked)

    if num_batches_tracked is not None:
        num_batches_tracked = num_batches_tracked + 1
    factor = running_update_factor(momentum, num_batches_tracked, name)
    new_mean, new_var = running_stats_update(running_mean, running_var, mean, var, count, factor)
    return BatchNormOutput(y, new_mean, new_var, num_batches_tracked)
