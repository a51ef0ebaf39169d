"""The kernel-backed group and layer norm Functions, and their fallback backward.

``FastGroupNormFunction`` and ``FastLayerNormFunction`` are one Function shape, made by
:func:`fused_norm_function` from a table row (kernel forward, kernel backward, torch-ops
reference): ``(x, weight, bias, arg, eps) -> y`` with ``arg`` the op's own argument
(``num_groups``, ``normalized_shape``). They compute their backward with the fused
kernels; when autograd records the backward (double backward) or ``grad_y`` is not
something the kernels take, they differentiate the torch-ops function from the saved
inputs instead, with :func:`reference_backward`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bnlab import kernels

__all__ = ["fused_norm", "fused_norm_function", "reference_backward"]

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]
#: ``(x, arg, weight, bias, eps) -> (y, stats)``: a kernel forward.
KernelForward = Callable[[Tensor, Any, Tensor | None, Tensor | None, float], tuple[Tensor, Tensor]]
#: ``(grad_y, x, arg, weight, bias, stats, needs) -> grads``: a kernel backward.
KernelBackward = Callable[
    [Tensor, Tensor, Any, Tensor | None, Tensor | None, Tensor, tuple[bool, ...]], Grads
]
#: ``(x, arg, weight, bias, eps) -> y``: the torch-ops function (differentiable).
Reference = Callable[[Tensor, Any, Tensor | None, Tensor | None, float], Tensor]


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


def _kernel_takes_grad(grad_y: Tensor, x: Tensor) -> bool:
    """Whether the backward kernel may run: kernels on, autograd not recording the
    backward, and ``grad_y`` a contiguous CPU tensor like ``x``."""
    return (
        kernels.is_enabled()
        and not torch.is_grad_enabled()
        and grad_y.dtype == x.dtype
        and grad_y.shape == x.shape
        and grad_y.is_cpu
        and grad_y.is_contiguous()
    )


def fused_norm_function(
    name: str,
    doc: str,
    kernel_forward: KernelForward,
    kernel_backward: KernelBackward,
    reference: Reference,
) -> type[torch.autograd.Function]:
    """A Function ``(x, weight, bias, arg, eps) -> y`` on the kernels, named ``name``.

    The forward runs ``kernel_forward`` and saves ``x``, ``weight``, ``bias`` and the
    kernel's statistics; the backward runs ``kernel_backward`` where the kernel takes
    ``grad_y`` (see :func:`_kernel_takes_grad`), else :func:`reference_backward` over
    ``reference`` (so double backward works).
    """

    def forward(
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, arg: Any, eps: float
    ) -> Tensor:
        y, stats = kernel_forward(x, arg, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, stats)
        ctx.arg = arg
        ctx.eps = eps
        return y

    def backward(
        ctx: Any, grad_y: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight, bias, stats = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        arg, eps = ctx.arg, ctx.eps
        if _kernel_takes_grad(grad_y, x):
            grads = kernel_backward(grad_y, x, arg, weight, bias, stats, needs)
        else:
            grads = reference_backward(
                lambda xs, ws, bs: reference(xs, arg, ws, bs, eps), grad_y, x, weight, bias, needs
            )
        return grads[0], grads[1], grads[2], None, None

    namespace = {
        "__doc__": doc,
        "__module__": kernel_forward.__module__,
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
        "kernel_forward": staticmethod(kernel_forward),
    }
    return type(name, (torch.autograd.Function,), namespace)


def fused_norm(
    function: Any, x: Tensor, arg: Any, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """``function`` (from :func:`fused_norm_function`) on an eligible call: its kernel
    forward alone when autograd records nothing, else the Function."""
    if torch.is_grad_enabled() and (
        x.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
    ):
        return function.apply(x, weight, bias, arg, eps)
    return function.kernel_forward(x, arg, weight, bias, eps)[0]
