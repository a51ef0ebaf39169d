"""Batch normalization from scratch, as taught in Dive into Deep Learning (d2l), fixed.

Paper: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167. Book: Zhang, Lipton, Li & Smola,
"Dive into Deep Learning", section "Batch Normalization", implementation from scratch.

This file keeps the book's shape so that a learner can read the two side by side: a
function ``batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum)`` that does
the maths and returns the new moving statistics, and a module ``BatchNorm(num_features,
num_dims)`` that owns ``gamma``, ``beta`` and the moving statistics. It depends on torch
only. For real work use ``bnlab.nn.BatchNorm1d/2d`` (or ``torch.nn``): same numbers,
faster, and every input rank and option.

Differences from the book, and why:

================  ============================  ===================================================
topic             book                          here
================  ============================  ===================================================
train or eval     ``torch.is_grad_enabled()``   ``training`` argument, from ``self.training``. The
                  picks the mode                book's test gets eval wrong under grad (e.g. an
                                                input gradient of a trained net) and train wrong
                                                under ``torch.no_grad()``.
moving stats      plain attributes, moved to    registered buffers: ``.to(device)``, ``.double()``,
                  the input's device by hand    ``state_dict()`` and ``copy.deepcopy`` carry them;
                  in ``forward``                the module copies the function's new values into
                                                them in place.
``moving_var``    starts at 0                   starts at 1 (a unit variance, as in torch.nn); 0
initial value                                   makes an untrained net divide by ``sqrt(eps)`` in
                                                eval.
``momentum``      0.9, the decay of the old     0.1, PyTorch's weight of the new batch (bnlab's
                  value: ``m * old +``          convention): ``(1 - m) * old + m * new``. The same
                  ``(1 - m) * new``             update: book 0.9 == here 0.1.
``eps``,          hard-coded in ``forward``     constructor arguments (keyword-only), checked:
``momentum``      (1e-5 and 0.9)                ``eps > 0``, ``0 <= momentum <= 1``.
moving variance   biased batch variance         unbiased batch variance, ``var * n / (n - 1)``, as
update            (divide by ``n``)             torch.nn does, so the module matches
                                                ``torch.nn.BatchNorm1d/2d`` exactly. Normalizing
                                                still uses the biased one.
bad input         ``assert`` on the rank; none  ``ValueError`` showing the received value: rank,
                  on channels or ``num_dims``   ``num_dims``, channel count, one value per channel
                  (3 is taken as 4)             in training (the unbiased variance needs 2).
detaching         ``.data``                     ``.detach()`` (``.data`` hides in-place changes
                                                from autograd).
================  ============================  ===================================================

Kept from the book: the names ``X``, ``gamma``, ``beta``, ``moving_mean``,
``moving_var``; parameters of shape ``(1, C)`` after a Linear layer (``num_dims=2``) or
``(1, C, 1, 1)`` after a Conv2d layer (``num_dims=4``); ``gamma`` starts at 1 and
``beta`` at 0. Not supported (use ``bnlab.nn``): ``(N, C, L)`` and 5D inputs,
``momentum=None`` (cumulative average), ``affine=False``, ``track_running_stats=False``,
and ``torch.nn``'s parameter names (``weight``/``bias``, shape ``(C,)``), so a
``state_dict`` does not load into ``torch.nn.BatchNorm2d`` as it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["BatchNorm", "batch_norm"]


def batch_norm(
    X: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float,
    momentum: float,
    *,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize ``X`` per channel, scale by ``gamma`` and shift by ``beta``.

    Training mode normalizes with the statistics of this batch and returns updated
    moving statistics; eval mode normalizes with the moving statistics and returns
    them unchanged. Nothing is modified in place.

    Args:
        X: the batch, ``(N, C)`` or ``(N, C, H, W)``.
        gamma: scale, ``(1, C)`` or ``(1, C, 1, 1)``.
        beta: shift, same shape as ``gamma``.
        moving_mean: moving average of the batch means, same shape as ``gamma``.
        moving_var: moving average of the unbiased batch variances, same shape.
        eps: added to the variance before the square root, > 0.
        momentum: weight of the new batch in the moving averages (PyTorch's convention;
            the book's decay 0.9 is ``momentum=0.1``).
        training: use batch statistics and update the moving ones (``True``), or use
            the moving statistics (``False``). Pass ``module.training``.

    Returns:
        ``(Y, moving_mean, moving_var)``: the output, shaped like ``X``, and the new
        moving statistics, detached from the autograd graph.

    Raises:
        ValueError: ``X`` is not 2D or 4D, or has a single value per channel in training.

    Shape:
        ``X``, ``Y``: ``(N, C)`` or ``(N, C, H, W)``; the rest: ``(1, C)`` or
        ``(1, C, 1, 1)``.
    """
    if X.dim() not in (2, 4):
        raise ValueError(
            f"batch_norm: expected a 2D input (N, C) or a 4D input (N, C, H, W), "
            f"got {X.dim()}D input of shape {tuple(X.shape)}"
        )
    if not training:
        # Eval (prediction) mode: use the moving averages gathered during training.
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        # n values per channel: N for (N, C), N * H * W for (N, C, H, W).
        n = X.numel() // X.shape[1]
        if n < 2:
            raise ValueError(
                f"batch_norm: expected more than 1 value per channel in training (the "
                f"unbiased variance divides by n - 1), got input of shape {tuple(X.shape)}"
            )
        if X.dim() == 2:
            # After a fully connected layer: statistics over the batch, per feature.
            mean = X.mean(dim=0, keepdim=True)
            var = ((X - mean) ** 2).mean(dim=0, keepdim=True)
        else:
            # After a 2D convolution: statistics per channel (dim 1) over N, H and W,
            # keeping the dims so that (1, C, 1, 1) broadcasts against (N, C, H, W).
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        # Training mode: normalize with the batch's own mean and (biased) variance.
        X_hat = (X - mean) / torch.sqrt(var + eps)
        # Update the moving averages; the variance is the unbiased one, as in torch.nn.
        unbiased_var = var * n / (n - 1)
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean
        moving_var = (1.0 - momentum) * moving_var + momentum * unbiased_var
    Y = gamma * X_hat + beta  # scale and shift
    return Y, moving_mean.detach(), moving_var.detach()


class BatchNorm(nn.Module):
    """The book's batch-norm layer: ``gamma``, ``beta`` and two moving-statistics buffers.

    Args:
        num_features: outputs of the Linear layer, or output channels of the Conv2d
            layer, before this one.
        num_dims: 2 after a Linear layer (inputs ``(N, C)``), 4 after a Conv2d layer
            (inputs ``(N, C, H, W)``).
        eps: added to the variance, > 0.
        momentum: weight of the new batch in the moving averages, in ``[0, 1]``
            (PyTorch's convention; the book's 0.9 is 0.1 here).

    Attributes:
        gamma: scale parameter, starts at 1, shape ``(1, C)`` or ``(1, C, 1, 1)``.
        beta: shift parameter, starts at 0, same shape.
        moving_mean: buffer, starts at 0, same shape.
        moving_var: buffer, starts at 1, same shape.

    Raises:
        TypeError: ``num_features`` is not an int, or eps/momentum not numbers.
        ValueError: ``num_features <= 0``, ``num_dims`` not 2 or 4, ``eps <= 0`` or
            ``momentum`` outside ``[0, 1]``; in ``forward``, an input whose rank is not
            ``num_dims`` or whose dim 1 is not ``num_features``.

    Shape:
        input: ``(N, C)`` when ``num_dims=2``, ``(N, C, H, W)`` when ``num_dims=4``;
        output: the same.
    """

    def __init__(
        self,
        num_features: int,
        num_dims: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        _check_config(num_features, num_dims, eps, momentum)
        # (1, C) after a Linear layer, (1, C, 1, 1) after a Conv2d layer (broadcasting).
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.num_features = num_features
        self.num_dims = num_dims
        self.eps = eps
        self.momentum = momentum
        # The scale and shift are learned: they take part in gradients and updates.
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        # The moving statistics are not learned, but belong to the module's state.
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, X: Tensor) -> Tensor:
        self._check_input(X)
        Y, moving_mean, moving_var = batch_norm(
            X,
            self.gamma,
            self.beta,
            self.moving_mean,
            self.moving_var,
            eps=self.eps,
            momentum=self.momentum,
            training=self.training,
        )
        if self.training:
            # Copy in place: the buffers stay the same tensors (device, dtype, references).
            self.moving_mean.copy_(moving_mean)
            self.moving_var.copy_(moving_var)
        return Y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )

    def _check_input(self, X: Tensor) -> None:
        if X.dim() != self.num_dims:
            layout = "(N, C)" if self.num_dims == 2 else "(N, C, H, W)"
            raise ValueError(
                f"BatchNorm: expected {self.num_dims}D input {layout} "
                f"(num_dims={self.num_dims}), got {X.dim()}D input of shape {tuple(X.shape)}"
            )
        if X.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm: expected {self.num_features} channels in dim 1, got "
                f"{X.shape[1]} (input of shape {tuple(X.shape)}); the layer was built with "
                f"num_features={self.num_features}"
            )


def _check_config(num_features: int, num_dims: int, eps: float, momentum: float) -> None:
    if not isinstance(num_features, int) or isinstance(num_features, bool):
        raise TypeError(
            f"BatchNorm: num_features must be an int (the number of channels), "
            f"got {num_features!r} of type {type(num_features).__name__}"
        )
    if num_features <= 0:
        raise ValueError(
            f"BatchNorm: num_features must be > 0 (the number of channels), got {num_features}"
        )
    if num_dims not in (2, 4):
        raise ValueError(
            f"BatchNorm: num_dims must be 2 (after a Linear layer, inputs (N, C)) or 4 "
            f"(after a Conv2d layer, inputs (N, C, H, W)), got {num_dims!r}"
        )
    for arg, value in (("eps", eps), ("momentum", momentum)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(
                f"BatchNorm: {arg} must be a float, got {value!r} of type {type(value).__name__}"
            )
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(
            f"BatchNorm: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got {eps!r}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"BatchNorm: momentum must be in [0, 1] (the weight of the new batch, PyTorch's "
            f"convention; the book's decay 0.9 is momentum=0.1), got {momentum!r}"
        )
