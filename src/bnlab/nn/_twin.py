"""``ScriptedAsTorchTwin``: the layers that ``torch.jit.script`` compiles as their torch twin.

TorchScript cannot compile bnlab's forward passes (autograd Functions, kernels); for a
layer whose twin in ``torch.nn`` computes the same map, it compiles that twin instead,
sharing every parameter and buffer (``bnlab.nn._base.torch_twin``).
"""

from __future__ import annotations

from torch import nn

from bnlab.nn._base import torch_twin

__all__ = ["ScriptedAsTorchTwin"]


class ScriptedAsTorchTwin:
    """Mixin, before the torch class: ``torch.jit.script`` compiles the torch twin."""

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this on every submodule before compiling: torch's layer
        # in its place (same parameters, same map).
        return torch_twin(self)  # type: ignore[arg-type]
