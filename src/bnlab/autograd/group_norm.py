"""Group and instance normalization on the fused CPU kernels, bound as a ``torch.autograd.Function``.

Paper: Wu & He, "Group Normalization", arXiv 1803.08494 (InstanceNorm, Ulyanov, Vedaldi &
Lempitsky, arXiv 1607.08022, is the case ``num_groups == C``).

:func:`group_norm` and :func:`instance_norm` are the entries of ``bnlab.nn``'s modules:
the functions of ``bnlab.functional.norms`` (same arguments, results and errors), on the
kernels where ``bnlab.kernels.group_norm_eligible`` accepts the call. The forward and the
closed-form backward are then ``bnlab.kernels.group_forward`` and ``group_backward``;
the forward saves ``x``, ``weight``, ``bias`` and a ``(3, N * G)`` statistics tensor.

Double backward (``create_graph=True``) works: when autograd records the backward, or
when ``grad_y`` is not something the kernel takes (another dtype, strides), the backward
differentiates the torch-ops ``group_norm`` from the saved ``x``, so the dependence of
the statistics on ``x`` is part of the second-order graph.
"""

from __future__ import annotations

import math

from torch import Tensor

from bnlab import kernels
from bnlab.autograd._layout import torch_layout
from bnlab.autograd._reference import fused_norm, fused_norm_function
from bnlab.functional import norms
from bnlab.functional.batch_norm import check_eps, check_momentum
from bnlab.functional.norms import InstanceNormOutput

__all__ = ["FastGroupNormFunction", "fast_group_norm", "group_norm", "instance_norm"]


def _kernel_forward(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    return kernels.group_forward(x, num_groups, weight, bias, eps)


def _kernel_backward(
    grad_y: Tensor,
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    stats: Tensor,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    return kernels.group_backward(grad_y, x, num_groups, weight, stats, needs)


FastGroupNormFunction = fused_norm_function(
    "FastGroupNormFunction",
    """Group norm on the fused kernels: ``(x, weight, bias, num_groups, eps) -> y``.

    The caller has checked ``bnlab.kernels.group_norm_eligible``.

    Shape:
        x: ``(N, C, *)``; weight, bias: ``(C,)`` or None; y: like x.
    """,
    _kernel_forward,
    _kernel_backward,
    norms.group_norm,
)


def fast_group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Group norm of an eligible call (``kernels.group_norm_eligible``): the kernel alone
    when autograd records nothing, else :class:`FastGroupNormFunction`."""
    return fused_norm(FastGroupNormFunction, x, num_groups, weight, bias, eps)


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    name: str = "group_norm",
) -> Tensor:
    """``bnlab.functional.norms.group_norm``, on the kernels where eligible.

    Same arguments, result and errors; ``name`` prefixes error messages.
    """
    if kernels.group_norm_eligible(x, num_groups, weight, bias):
        check_eps(eps, name)
        return fast_group_norm(x, num_groups, weight, bias, eps)
    y = norms.group_norm(x, num_groups, weight, bias, eps, name=name)
    return torch_layout(y, x, keep_channels_last=True)


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
    """``bnlab.functional.norms.instance_norm``; pure, like it.

    Calls that normalize with the instance statistics and have no running statistics
    to update, with at least 2 spatial elements, run on the group-norm kernels with one
    group per channel where ``kernels.group_norm_eligible`` accepts them, and calls that
    normalize with the running statistics on batch norm's eval kernel where
    ``kernels.batch_norm_eligible`` accepts them; same arguments, results and errors.
    """
    if (
        use_input_stats
        and running_mean is None
        and running_var is None
        and momentum is not None
        and x.dim() >= 3
        and math.prod(x.shape[2:]) >= 2
        and kernels.group_norm_eligible(x, x.shape[1], weight, bias)
    ):
        check_eps(eps, name)
        check_momentum(momentum, name)
        y = fast_group_norm(x, x.shape[1], weight, bias, eps)
        return InstanceNormOutput(y, None, None)
    if (
        not use_input_stats
        and isinstance(running_mean, Tensor)
        and isinstance(running_var, Tensor)
        and momentum is not None
        and x.dim() >= 3
        and kernels.batch_norm_eligible(x, per_channel=(running_mean, running_var, weight, bias))
    ):
        # Normalization with the running statistics: batch norm's eval kernel.
        check_eps(eps, name)
        check_momentum(momentum, name)
        y = kernels.eval_forward(x, running_mean, running_var, weight, bias, eps)
        return InstanceNormOutput(y, running_mean, running_var)
    result = norms.instance_norm(
        x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, name=name
    )
    return result._replace(output=torch_layout(result.output, x, keep_channels_last=False))
