"""Ghost batch normalization as pure functions: batch norm per virtual batch.

Paper: Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
generalization gap in large batch training of neural networks", arXiv 1705.08741.

Training splits the batch along dim 0 into virtual ("ghost") batches of
``virtual_batch_size`` samples and normalizes each with its own statistics, so a large
batch sees the noise of small-batch statistics. Inference is batch norm's (the running
statistics). Conventions are those of ``bnlab.functional.batch_norm``.

Rules (each tested):
    * Chunks: ``N // virtual_batch_size`` chunks of ``virtual_batch_size`` samples, then
      the remainder as one smaller chunk (``torch.split``). A remainder with a single
      value per channel (one sample, no spatial dims) has no variance, so it is merged
      into the chunk before it, which then has ``virtual_batch_size + 1`` samples.
      ``N <= virtual_batch_size`` is one chunk: exactly batch norm.
    * ``virtual_batch_size`` whose chunks hold one value per channel
      (``virtual_batch_size * H * W ... == 1``) is an error when there is more than one
      chunk; with spatial dims a virtual batch of one sample has a variance and works.
    * Running statistics: updated once per call, as one batch norm step of ``momentum``
      (so ``momentum`` and ``num_batches_tracked`` mean what they mean for batch norm),
      with the batch mean (the count-weighted mean of the chunk means) and the pooled
      within-chunk unbiased variance ``sum_i n_i var_i / (n - k)`` (``n_i`` values and
      biased variance ``var_i`` in chunk ``i``, ``k`` chunks), which is the mean of the
      chunks' unbiased variances when the chunks are equal. It is the variance the
      chunks were normalized with, without the between-chunk spread of the means, and
      unbiased. Some implementations instead run batch norm's update once per chunk:
      then ``momentum`` compounds to ``1 - (1 - momentum)**k`` per call, depends on the
      batch size, and weights the last chunk most.

Vectorized: the ``k`` equal chunks are folded into the channel dim, ``(k * vbs, C, *)
-> (vbs, k * C, *)``, and normalized by *one* batch norm call with the weight and bias
repeated ``k`` times: batch norm per (chunk, channel) pair is ghost batch norm. This
reuses batch norm's forward, numerics and closed-form backward unchanged (autograd sums
the gradients of the repeated weight), at the price of two copies (in and out).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab.functional.batch_norm import (
    BatchNormOutput,
    EvalForward,
    TrainForward,
    _batch_norm_eval,
    _train_forward_autograd,
    batch_norm_with,
)

__all__ = [
    "check_virtual_batch_size",
    "ghost_batch_norm",
    "ghost_batch_norm_with",
    "ghost_chunk_sizes",
]


def check_virtual_batch_size(virtual_batch_size: object, name: str) -> int:
    """Return ``virtual_batch_size`` if it is an int >= 1, else raise with the value."""
    if not isinstance(virtual_batch_size, int) or isinstance(virtual_batch_size, bool):
        raise TypeError(
            f"{name}: virtual_batch_size must be an int (samples per virtual batch), "
            f"got {virtual_batch_size!r} of type {type(virtual_batch_size).__name__}"
        )
    if virtual_batch_size < 1:
        raise ValueError(
            f"{name}: virtual_batch_size must be >= 1 (samples per virtual batch), "
            f"got {virtual_batch_size}"
        )
    return virtual_batch_size


def ghost_chunk_sizes(
    batch_size: int, virtual_batch_size: int, values_per_sample: int = 1
) -> list[int]:
    """Sizes of the virtual batches along dim 0 (see the module docstring for the rule).

    Args:
        batch_size: ``N``.
        virtual_batch_size: samples per virtual batch, >= 1.
        values_per_sample: values of one channel in one sample (the spatial size).

    Returns:
        The chunk sizes, summing to ``batch_size``; ``[batch_size]`` for one chunk.
    """
    if batch_size <= virtual_batch_size:
        return [batch_size]
    full, rest = divmod(batch_size, virtual_batch_size)
    sizes = [virtual_batch_size] * full
    if rest * values_per_sample == 1:
        sizes[-1] += 1  # a single value has no variance: merge it into the chunk before
    elif rest:
        sizes.append(rest)
    return sizes


def _folded_forward(
    train_forward: TrainForward,
    x: Tensor,
    k: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm of ``k`` equal chunks of ``x`` in one call, chunks folded into channels.

    Shape:
        x: ``(k * vbs, C, *)`` -> y: like x; mean, var: ``(k, C)``.
    """
    if k == 1:
        y, mean, var = train_forward(x, weight, bias, eps)
        return y, mean.view(1, -1), var.view(1, -1)
    n, c, rest = x.shape[0], x.shape[1], tuple(x.shape[2:])
    vbs = n // k
    # (k*vbs, C, *) -> (k, vbs, C, *) -> (vbs, k, C, *) -> (vbs, k*C, *): channel j*C + c
    # of the folded batch is channel c of chunk j.
    xf = x.reshape(k, vbs, c, *rest).transpose(0, 1).reshape(vbs, k * c, *rest)
    wf = None if weight is None else weight.repeat(k)
    bf = None if bias is None else bias.repeat(k)
    yf, mean, var = train_forward(xf, wf, bf, eps)
    y = yf.reshape(vbs, k, c, *rest).transpose(0, 1).reshape(n, c, *rest)
    return y, mean.view(k, c), var.view(k, c)


def ghost_batch_norm(
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
    virtual_batch_size: int,
    name: str = "ghost_batch_norm",
    train_forward: TrainForward = _train_forward_autograd,
    eval_forward: EvalForward = _batch_norm_eval,
) -> BatchNormOutput:
    """Ghost batch normalization, pure: returns the output and the new running statistics.

    Differentiable through torch's autograd. Checks, eval, empty batches and the
    running-statistics update are batch norm's ``batch_norm_with``.

    Args:
        x: input ``(N, C, *)``, floating point.
        running_mean, running_var: running statistics ``(C,)``, or None to not track.
        weight, bias: affine parameters ``(C,)``, or None.
        training: per-virtual-batch statistics (and updated running statistics), or
            the running statistics.
        momentum: weight of the new batch (one step per call), or None for a cumulative
            average (then ``num_batches_tracked`` is required).
        eps: added to the variance, > 0.
        num_batches_tracked: batch counter, returned incremented (once per call).
        virtual_batch_size: samples per virtual batch, an int >= 1.
        name: prefixes error messages (modules pass their class name).
        train_forward: batch norm's training forward ``(x, weight, bias, eps) -> (y,
            mean, var)`` (default: the torch ops; ``bnlab.nn`` passes the
            closed-form-backward Function).
        eval_forward: the eval normalization (see ``batch_norm_with``).

    Returns:
        :class:`~bnlab.functional.batch_norm.BatchNormOutput`.

    Raises:
        TypeError: non-floating input, non-tensor arguments, a non-int
            ``virtual_batch_size``.
        ValueError: everything batch norm rejects; ``virtual_batch_size < 1``; virtual
            batches of a single value per channel in training.

    Shape:
        x: ``(N, C, *)``; output: like x; per-channel tensors ``(C,)``.
    """
    vbs = check_virtual_batch_size(virtual_batch_size, name)

    def ghost_forward(
        x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = x.shape[0]
        per_sample = x.numel() // (n * x.shape[1])
        sizes = ghost_chunk_sizes(n, vbs, per_sample)
        if len(sizes) == 1:
            return train_forward(x, weight, bias, eps)
        if vbs * per_sample == 1:
            raise ValueError(
                f"{name}: virtual_batch_size={vbs} gives virtual batches with a single value "
                f"per channel (input of shape {tuple(x.shape)}), which have no variance; use "
                f"virtual_batch_size >= 2, or call .eval() to normalize with the running "
                f"statistics"
            )
        k = len(sizes) if sizes[-1] == vbs else len(sizes) - 1  # leading equal chunks
        head = k * vbs
        y, mean, var = _folded_forward(train_forward, x[:head], k, weight, bias, eps)
        counts = [vbs] * k
        if head < n:
            y_tail, mean_tail, var_tail = train_forward(x[head:], weight, bias, eps)
            y = torch.cat([y, y_tail])
            mean = torch.cat([mean, mean_tail.view(1, -1)])
            var = torch.cat([var, var_tail.view(1, -1)])
            counts.append(n - head)
        if x.dim() in (4, 5) and not x.is_contiguous():
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            if x.is_contiguous(memory_format=fmt):
                y = y.contiguous(memory_format=fmt)  # keep the input's memory format
        with torch.no_grad():
            # Statistics for the running update (see the module docstring): batch mean
            # and pooled within-chunk unbiased variance. batch_norm_with applies the
            # Bessel factor m / (m - 1) of the whole batch (m values per channel), so
            # pass the pooled estimate divided by it.
            m = n * per_sample
            w = torch.tensor(counts, dtype=mean.dtype, device=mean.device).view(-1, 1) * per_sample
            batch_mean = (w * mean).sum(0) / m
            pooled = (w * var).sum(0) / (m - len(counts))
            var_for_update = pooled * ((m - 1) / m)
        return y, batch_mean, var_for_update

    return batch_norm_with(
        ghost_forward,
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
        eval_forward=eval_forward,
    )


def ghost_batch_norm_with(
    train_forward: TrainForward, *args: Any, **kwargs: Any
) -> BatchNormOutput:
    """:func:`ghost_batch_norm` with the batch-norm training forward passed first (the
    ``norm_with(train_forward, x, ...)`` form that ``bnlab.nn``'s batch norms call)."""
    return ghost_batch_norm(*args, train_forward=train_forward, **kwargs)
