"""``GroupNorm``: drop-in twin of ``torch.nn.GroupNorm``.

Paper: Wu & He, "Group Normalization", arXiv 1803.08494. The maths is
``bnlab.functional.norms.group_norm`` (conventions documented there), called through
``bnlab.autograd.group_norm``, which runs eligible CPU calls on the fused kernels of
``bnlab.kernels`` instead, with the same results.

``GroupNorm`` subclasses ``torch.nn.GroupNorm``: torch's constructor (after bnlab's
checks), ``reset_parameters`` and ``extra_repr``; bnlab's ``forward``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnlab.autograd.group_norm import group_norm
from bnlab.functional.batch_norm import check_eps
from bnlab.functional.norms import check_positive_int
from bnlab.nn._base import non_tensor_call
from bnlab.nn._twin import ScriptedAsTorchTwin

__all__ = ["GroupNorm"]


class GroupNorm(ScriptedAsTorchTwin, nn.GroupNorm):
    """Group norm: each sample's group of channels is normalized over it and all spatial dims.

    Args:
        num_groups: number of groups, dividing ``num_channels``.
        num_channels: number of channels ``C`` (dim 1 of the input).
        eps: added to the variance, > 0.
        affine: learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
        device, dtype: where and in which dtype to create the parameters.
        bias: with ``affine``, also learn the shift (keyword-only, as in torch 2.13).

    Raises:
        ValueError: ``num_groups`` not dividing ``num_channels``, non-positive sizes, eps
            <= 0 (constructor); fewer than 2 dims or a channel count other than
            ``num_channels`` (forward).
        TypeError: an integer input dtype (forward).

    Shape:
        input: ``(N, C, *)``; output: like the input.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        name = type(self).__name__
        check_positive_int(num_groups, "num_groups", name)
        check_positive_int(num_channels, "num_channels", name)
        if num_channels % num_groups != 0:
            raise ValueError(
                f"{name}: num_channels ({num_channels}) must be divisible by num_groups "
                f"({num_groups}); choose num_groups among the divisors of {num_channels}"
            )
        check_eps(eps, name)
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            return non_tensor_call(self, x)  # torch.fx tracing: one call_module node
        name = type(self).__name__
        if x.dim() >= 2 and x.shape[1] != self.num_channels:
            raise ValueError(
                f"{name}: expected {self.num_channels} channels in dim 1, got {x.shape[1]} "
                f"(input of shape {tuple(x.shape)}); the layer was built with "
                f"num_channels={self.num_channels}"
            )
        if x.dim() < 2:
            raise ValueError(
                f"{name}: expected an input of shape (N, C, *) with at least 2 dims, "
                f"got {x.dim()}D input of shape {tuple(x.shape)}"
            )
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, name=name)
