"""Layer normalization on the fused CPU kernels, bound as a ``torch.autograd.Function``.

Paper: Ba, Kiros & Hinton, "Layer Normalization", arXiv 1607.06450.

:func:`layer_norm` is the entry of ``bnlab.nn.LayerNorm``: the function of
``bnlab.functional.norms`` (same arguments, results and errors), on the kernels where
``bnlab.kernels.layer_norm_eligible`` accepts the call. The forward and the closed-form
backward are then ``bnlab.kernels.layer_forward`` and ``layer_backward``. Double
backward, and ``grad_y`` the kernel does not take, differentiate the torch-ops
``layer_norm`` from the saved ``x`` (as ``bnlab.autograd.group_norm`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from bnlab import kernels
from bnlab.autograd._layout import torch_layout
from bnlab.autograd._reference import fused_norm, fused_norm_function
from bnlab.functional import norms
from bnlab.functional.batch_norm import check_eps

__all__ = ["FastLayerNormFunction", "fast_layer_norm", "layer_norm"]


def _kernel_forward(
    x: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    return kernels.layer_forward(x, math.prod(shape), weight, bias, eps)


def _kernel_backward(
    grad_y: Tensor,
    x: Tensor,
    normalized_shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    stats: Tensor,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    gx, gw, gb = kernels.layer_backward(
        grad_y, x, math.prod(normalized_shape), weight, stats, needs
    )
    # The kernel's parameter gradients are flat; the parameters have normalized_shape.
    gw = None if gw is None else gw.view(weight.shape)
    gb = None if gb is None else gb.view(bias.shape)
    return gx, gw, gb


FastLayerNormFunction = fused_norm_function(
    "FastLayerNormFunction",
    """Layer norm on the fused kernels: ``(x, weight, bias, normalized_shape, eps) -> y``.

    The caller has checked ``bnlab.kernels.layer_norm_eligible``.

    Shape:
        x: ``(*, *normalized_shape)``; weight, bias: ``normalized_shape`` or None; y: like x.
    """,
    _kernel_forward,
    _kernel_backward,
    norms.layer_norm,
)


def fast_layer_norm(
    x: Tensor,
    normalized_shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Layer norm of an eligible call (``kernels.layer_norm_eligible``): the kernel alone
    when autograd records nothing, else :class:`FastLayerNormFunction`."""
    return fused_norm(FastLayerNormFunction, x, normalized_shape, weight, bias, eps)


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    name: str = "layer_norm",
) -> Tensor:
    """``bnlab.functional.norms.layer_norm``, on the kernels where eligible.

    Same arguments, result and errors; ``name`` prefixes error messages.
    """
    # A tuple (or an int) is the shape; anything else takes the checks of the torch path.
    shape = (normalized_shape,) if type(normalized_shape) is int else normalized_shape
    if isinstance(shape, tuple) and kernels.layer_norm_eligible(x, shape, weight, bias):
        check_eps(eps, name)
        return fast_layer_norm(x, shape, weight, bias, eps)
    y = norms.layer_norm(x, normalized_shape, weight, bias, eps, name=name)
    return torch_layout(y, x, keep_channels_last=False)
