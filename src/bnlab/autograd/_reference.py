"""The fallback backward of the fast-path Functions: autograd over the torch-ops maths.

``FastGroupNormFunction`` and ``FastLayerNormFunction`` compute their backward with the
fused kernels; when autograd records the backward (double backward) or ``grad_y`` is
not something the kernels take, they differentiate the torch-ops function from the
saved inputs instead, with :func:`reference_backward`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["reference_backward"]

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]


def reference_backward(
    fn: Callable[[Tensor, Tensor | None, Tensor | None], Tensor],
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    needs: tuple[bool, bool, bool],
) -> Grads:
    """The gradients of ``fn(x, weight, bias)`` at ``grad_y``, ``None`` where not needed.

    Differentiable when grad is enabled (``create_graph=True``): the saved tensors then
    carry their graph, so second-order terms flow back to them.
    """
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        if create:
            xs, ws, bs = x, weight, bias
        else:
            xs = x.detach().requires_grad_(needs[0])
            ws = None if weight is None else weight.detach().requires_grad_(needs[1])
            bs = None if bias is None else bias.detach().requires_grad_(needs[2])
        y = fn(xs, ws, bs)
        wanted = [t for t, need in zip((xs, ws, bs), needs, strict=True) if need]
        if not wanted:
            return None, None, None
        grads = iter(torch.autograd.grad(y, wanted, grad_y, create_graph=create, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)  # type: ignore[return-value]
