"""``LayerNorm``: drop-in twin of ``torch.nn.LayerNorm``.

Paper: Ba, Kiros & Hinton, "Layer Normalization", arXiv 1607.06450. The maths is
``bnlab.functional.norms.layer_norm`` (conventions documented there), called through
``bnlab.autograd.layer_norm``, which runs eligible CPU calls on the fused kernels of
``bnlab.kernels`` instead, with the same results.

``LayerNorm`` subclasses ``torch.nn.LayerNorm``: torch's constructor (after bnlab's
checks), ``reset_parameters`` and ``extra_repr``; bnlab's ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bnlab.autograd.layer_norm import layer_norm
from bnlab.functional.batch_norm import check_eps
from bnlab.nn._base import non_tensor_call
from bnlab.nn._twin import ScriptedAsTorchTwin

__all__ = ["LayerNorm"]


class LayerNorm(ScriptedAsTorchTwin, nn.LayerNorm):
    """Layer norm over the trailing ``normalized_shape`` dims of each sample.

    Args:
        normalized_shape: trailing shape to normalize over (an int is one dim).
        eps: added to the variance, > 0.
        elementwise_affine: learn an elementwise ``weight`` (init 1) and ``bias`` (init 0)
            of shape ``normalized_shape``.
        bias: with ``elementwise_affine``, also learn the shift.
        device, dtype: where and in which dtype to create the parameters.

    Raises:
        ValueError: an empty or non-positive ``normalized_shape``, eps <= 0 (constructor);
            trailing input dims other than ``normalized_shape`` (forward).
        TypeError: an integer input dtype (forward).

    Shape:
        input: ``(*, *normalized_shape)``; output: like the input.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int] | torch.Size,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        shape = (
            (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        )
        if not shape or any(not isinstance(s, int) or s <= 0 for s in shape):
            raise ValueError(
                f"{name}: normalized_shape must be a non-empty sequence of ints > 0 (the "
                f"trailing dims to normalize), got {normalized_shape!r}"
            )
        check_eps(eps, name)
        super().__init__(shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            return non_tensor_call(self, x)  # torch.fx tracing: one call_module node
        return layer_norm(
            x, self.normalized_shape, self.weight, self.bias, self.eps, name=type(self).__name__
        )
