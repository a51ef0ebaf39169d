"""Batch Renormalization as pure functions.

Paper: Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
Batch-Normalized Models", arXiv 1702.03275.

Training normalizes with the batch statistics and then corrects towards the running
ones, per channel::

    sigma_B = sqrt(var + eps),  sigma = sqrt(running_var + eps)
    r = clip(sigma_B / sigma, 1 / r_max, r_max)                 (no gradient)
    d = clip((mean - running_mean) / sigma, -d_max, d_max)      (no gradient)
    y = weight * (x_hat * r + d) + bias

Unclipped, ``x_hat * r + d = (x - running_mean) / sigma``: the training output is the
inference output, which is the point of the method. Inference is BatchNorm's (the
running statistics). With ``r_max = 1`` and ``d_max = 0``, ``r = 1`` and ``d = 0``
exactly and batch renorm *is* batch norm.

Conventions (otherwise those of ``bnlab.functional.batch_norm``):
    * ``running_mean``/``running_var`` are torch's buffers: the running variance is the
      moving average of the *unbiased* batch variance, updated once per call with
      ``momentum`` (the weight of the new batch; ``None`` is the cumulative average),
      after ``r`` and ``d`` were computed from the old values. The paper averages
      ``sigma`` rather than the variance; keeping torch's ``running_var`` keeps the
      ``state_dict`` interchangeable with ``torch.nn.BatchNorm*d``.
    * ``sigma_B`` uses the biased batch variance (what the batch is normalized with) and
      ``sigma`` the unbiased running one: unclipped, the correction then reproduces
      inference exactly, so with small batches ``r`` sits below 1 by about
      ``sqrt((n - 1) / n)`` by design.
    * Running statistics are required in training (they are what ``r`` and ``d``
      correct towards); without them the functions raise ``ValueError``.
"""

from __future__ import annotations

import math
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
from bnlab.functional.moments import centered_moments

__all__ = [
    "RENORM_D_MAX_STEPS",
    "RENORM_R_MAX_STEPS",
    "RENORM_WARMUP_STEPS",
    "batch_renorm",
    "batch_renorm_with",
    "check_renorm_clipping",
    "renorm_clipping",
    "renorm_correction",
]

# The paper's schedule (section 4.1): r_max = 1, d_max = 0 for the first 5k steps, then
# relaxed to r_max = 3 at 40k steps and d_max = 5 at 25k steps.
RENORM_WARMUP_STEPS = 5_000
RENORM_R_MAX_STEPS = 40_000
RENORM_D_MAX_STEPS = 25_000


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_renorm_clipping(r_max: float, d_max: float, name: str) -> None:
    """Raise unless ``r_max >= 1`` and ``d_max >= 0`` (``math.inf`` means unclipped).

    Raises:
        TypeError: a bound that is not a number.
        ValueError: ``r_max < 1``, ``d_max < 0``, or NaN.
    """
    for what, v in (("r_max", r_max), ("d_max", d_max)):
        if not _is_number(v):
            raise TypeError(f"{name}: {what} must be a float, got {v!r} of type {type(v).__name__}")
    if not r_max >= 1.0:  # also catches NaN
        raise ValueError(
            f"{name}: r_max must be >= 1 (r is clipped to [1/r_max, r_max]; r_max=1 is "
            f"plain batch norm), got r_max={r_max!r}"
        )
    if not d_max >= 0.0:
        raise ValueError(
            f"{name}: d_max must be >= 0 (d is clipped to [-d_max, d_max]; d_max=0 is "
            f"plain batch norm), got d_max={d_max!r}"
        )


def renorm_correction(
    mean: Tensor,
    var: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    r_max: float,
    d_max: float,
    *,
    offset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The clipped correction ``(r, d)`` of batch renorm, detached from the graph.

    Args:
        mean, var: batch mean and *biased* batch variance.
        offset: optional second part of the batch mean, which is then ``mean + offset``
            (``pivot`` and ``offset`` of ``moments.centered_moments``). ``d`` is then
            formed as ``((mean - running_mean) + offset) / sigma``: for a float32
            channel near 1e4 the rounded sum ``mean + offset`` is off by up to 1e-3,
            which can be a whole ``sigma``, while the difference of the two values near
            1e4 is exact.
        running_mean, running_var: the running statistics before this batch's update.
        eps: added to both variances.
        r_max, d_max: clipping bounds (``r_max >= 1``, ``d_max >= 0``).

    Returns:
        ``(r, d)`` in the dtype of ``mean``; neither requires grad.

    Shape:
        every tensor ``(C,)``.
    """
    with torch.no_grad():
        dtype = mean.dtype
        inv_sigma = torch.rsqrt(running_var.to(dtype) + eps)
        r = torch.sqrt(var + eps) * inv_sigma
        diff = mean - running_mean.to(dtype)
        if offset is not None:
            diff = diff + offset
        d = diff * inv_sigma
        return r.clamp(1.0 / r_max, r_max), d.clamp(-d_max, d_max)


def batch_renorm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.01,
    eps: float = 1e-5,
    num_batches_tracked: Tensor | None = None,
    *,
    r_max: float = 3.0,
    d_max: float = 5.0,
    name: str = "batch_renorm",
    train_forward: TrainForward = _train_forward_autograd,
    eval_forward: EvalForward = _batch_norm_eval,
) -> BatchNormOutput:
    """Batch renormalization, pure: returns the output and the new running statistics.

    Differentiable through torch's autograd; ``r`` and ``d`` carry no gradient.

    Why no new backward: ``y = weight * (x_hat * r + d) + bias = (weight * r) * x_hat +
    (weight * d + bias)``, and ``r``, ``d`` are constants of the derivative. Batch renorm
    is batch norm with the weight ``weight * r`` and the bias ``weight * d + bias``, so
    batch norm's forward and closed-form backward are reused unchanged and autograd
    carries the gradients of ``weight`` and ``bias`` through two ``(C,)`` products. The
    price is one extra pass for the batch moments (needed before ``r`` and ``d`` exist);
    the backward pass costs what batch norm's does. Everything else (checks, eval,
    empty batches, the running-statistics update, ``momentum=None``) is batch norm's
    :func:`~bnlab.functional.batch_norm.batch_norm_with`.

    Args:
        x: input ``(N, C, *)``, floating point.
        running_mean, running_var: running statistics ``(C,)``; required in training.
        weight, bias: affine parameters ``(C,)``, or None.
        training: batch statistics corrected by ``r``, ``d`` (and updated running
            statistics), or inference with the running statistics (as batch norm).
        momentum: weight of the new batch in the running average, or None for a
            cumulative average (then ``num_batches_tracked`` is required). The default
            0.01 is the module's; see ``bnlab.nn.renorm``.
        eps: added to the variances, > 0.
        num_batches_tracked: batch counter, returned incremented after an update.
        r_max: bound of ``r`` to ``[1/r_max, r_max]``, >= 1 (``math.inf``: unclipped).
        d_max: bound of ``d`` to ``[-d_max, d_max]``, >= 0 (``math.inf``: unclipped).
        name: prefixes error messages (modules pass their class name).
        train_forward: batch norm's training forward ``(x, weight, bias, eps) -> (y,
            mean, var)`` (default: the torch ops; ``bnlab.nn`` passes the
            closed-form-backward Function).
        eval_forward: the eval normalization (see ``batch_norm_with``).

    Returns:
        :class:`~bnlab.functional.batch_norm.BatchNormOutput`.

    Raises:
        TypeError: non-floating input, non-tensor arguments, non-numeric bounds.
        ValueError: everything batch norm rejects; ``r_max < 1``; ``d_max < 0``;
            training without running statistics.

    Shape:
        x: ``(N, C, *)``; output: like x; per-channel tensors ``(C,)``.
    """
    check_renorm_clipping(r_max, d_max, name)
    if training and (running_mean is None or running_var is None):
        raise ValueError(
            f"{name}: training needs running_mean and running_var: r and d correct the "
            f"batch statistics towards them; pass them (a module needs "
            f"track_running_stats=True), or use batch norm for batch statistics alone"
        )

    def renorm_forward(
        x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            _, pivot, offset, var = centered_moments(x.detach())
        r, d = renorm_correction(
            pivot, var, running_mean, running_var, eps, r_max, d_max, offset=offset
        )
        if weight is not None:
            scale = weight * r.to(weight.dtype)
            shift = weight * d.to(weight.dtype)
            shift = shift if bias is None else shift + bias
        else:
            scale, shift = r, (d if bias is None else d.to(bias.dtype) + bias)
        return train_forward(x, scale, shift, eps)

    return batch_norm_with(
        renorm_forward,
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


def batch_renorm_with(train_forward: TrainForward, *args: Any, **kwargs: Any) -> BatchNormOutput:
    """:func:`batch_renorm` with the batch-norm training forward passed first (the
    ``norm_with(train_forward, x, ...)`` form that ``bnlab.nn``'s batch norms call)."""
    return batch_renorm(*args, train_forward=train_forward, **kwargs)


def renorm_clipping(
    step: int,
    *,
    warmup_steps: int = RENORM_WARMUP_STEPS,
    r_max_steps: int = RENORM_R_MAX_STEPS,
    d_max_steps: int = RENORM_D_MAX_STEPS,
    r_max_final: float = 3.0,
    d_max_final: float = 5.0,
    step_scale: float = 1.0,
) -> tuple[float, float]:
    """The paper's warm-up of the clipping bounds: ``(r_max, d_max)`` at ``step``.

    ``r_max = 1`` and ``d_max = 0`` (batch norm) for the first ``warmup_steps``; then both
    grow linearly, reaching ``r_max_final`` at ``r_max_steps`` and ``d_max_final`` at
    ``d_max_steps``, and stay there. The paper says "gradually relaxed"; linear is the
    simplest such ramp. ``step_scale`` multiplies the three step counts, so a run of
    4k steps can use the paper's shape with ``step_scale=0.1``.

    Args:
        step: the training step, >= 0.
        warmup_steps, r_max_steps, d_max_steps: the schedule's steps; ``warmup_steps``
            may not exceed the other two.
        r_max_final, d_max_final: the bounds after the ramp.
        step_scale: factor applied to the step counts, > 0.

    Returns:
        ``(r_max, d_max)`` as floats.

    Raises:
        TypeError, ValueError: a bad step, schedule or bound, with the received value.
    """
    name = "renorm_clipping"
    if not isinstance(step, int) or isinstance(step, bool):
        raise TypeError(f"{name}: step must be an int, got {step!r} of type {type(step).__name__}")
    if step < 0:
        raise ValueError(f"{name}: step must be >= 0, got {step}")
    check_renorm_clipping(r_max_final, d_max_final, name)
    if not _is_number(step_scale) or not (step_scale > 0 and math.isfinite(step_scale)):
        raise ValueError(f"{name}: step_scale must be a finite number > 0, got {step_scale!r}")
    for what, v in (
        ("warmup_steps", warmup_steps),
        ("r_max_steps", r_max_steps),
        ("d_max_steps", d_max_steps),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name}: {what} must be an int >= 0, got {v!r}")
    if warmup_steps > min(r_max_steps, d_max_steps):
        raise ValueError(
            f"{name}: warmup_steps={warmup_steps} must not exceed r_max_steps={r_max_steps} "
            f"or d_max_steps={d_max_steps}: the bounds are relaxed after the warm-up"
        )

    def ramp(end: int) -> float:
        start, stop = warmup_steps * step_scale, end * step_scale
        if step <= start:
            return 0.0
        if step >= stop:
            return 1.0
        return (step - start) / (stop - start)

    def relax(start: float, final: float, t: float) -> float:
        # Exact end points (and no inf * 0 for an unclipped final bound).
        if t <= 0.0:
            return start
        if t >= 1.0:
            return final
        return start + (final - start) * t

    return (
        float(relax(1.0, r_max_final, ramp(r_max_steps))),
        float(relax(0.0, d_max_final, ramp(d_max_steps))),
    )
