"""``AvgPool2d``: ``torch.nn.AvgPool2d`` whose 2x2, stride-2 windows run on bnlab's kernels.

LeNet pools with ``AvgPool2d(2, 2)``; torch's generic CPU kernel for it takes a fifth of
a one-thread LeNet training step. This drop-in twin computes the same outputs and
gradients (each window summed in torch's order, divided by 4; ``bnlab.autograd.pool``)
about five times faster there, and is torch's layer everywhere else: other window
sizes, padding, CUDA, 16-bit, non-contiguous or small inputs, ``torch.compile`` and
functorch transforms. ``torch.jit.script`` compiles torch's layer in its place, and
``torch.fx`` records it as one ``call_module`` node.

Shape:
    input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H_out, W_out)``, as torch's.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.jit import is_scripting

from bnlab.autograd.pool import avg_pool2d
from bnlab.nn._base import non_tensor_call
from bnlab.nn._twin import ScriptedAsTorchTwin

__all__ = ["AvgPool2d"]


class AvgPool2d(ScriptedAsTorchTwin, nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` (same arguments, attributes, ``repr`` and errors) on
    bnlab's 2x2 kernel where it applies."""

    def forward(self, x: Tensor) -> Tensor:
        if is_scripting():
            return super().forward(x)  # not reached: scripted as torch's twin
        if not isinstance(x, Tensor):
            return non_tensor_call(self, x)  # torch.fx tracing: one call_module node
        return avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )
