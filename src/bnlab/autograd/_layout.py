"""The memory format of the norms' outputs: torch's, for every input layout.

torch's CPU norms decide it as follows (measured, torch 2.13): batch norm and group norm
keep a channels_last / channels_last_3d input's format and give every other layout
(transposed, permuted, sliced) a contiguous output; layer norm and instance norm always
give a contiguous output. The torch-ops path of ``bnlab.functional`` follows the input's
strides (elementwise ops) and the kernels write contiguous outputs, so the entries of
``bnlab.autograd`` pass their outputs through :func:`torch_layout`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["torch_layout"]

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def torch_layout(y: Tensor, x: Tensor, *, keep_channels_last: bool) -> Tensor:
    """``y`` (shaped like ``x``) in torch's output format for input ``x``: channels_last
    where ``keep_channels_last`` and ``x`` is channels_last but not contiguous, else
    contiguous. Returns ``y`` itself where it is in that format already."""
    if x.is_contiguous():
        return y if y.is_contiguous() else y.contiguous()
    if keep_channels_last:
        fmt = _CHANNELS_LAST.get(x.dim())
        if fmt is not None and x.is_contiguous(memory_format=fmt):
            return y if y.is_contiguous(memory_format=fmt) else y.contiguous(memory_format=fmt)
    return y if y.is_contiguous() else y.contiguous()
