"""The lab's layers by role (weight layers, norm layers) and the norm that stands for
"with BN" in the probing experiments (ics, landscape, saturation, shift-mcc)."""

from __future__ import annotations

from torch import nn

from bnlab.models import is_norm_layer

__all__ = [
    "BN_NORM",
    "norm_layers",
    "weight_layers",
]

#: The model norm used for "with BN".
BN_NORM = "bnlab"


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers of ``model`` in forward (registration) order, by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    }


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Normalization layers of ``model`` by name (empty without norms)."""
    return {name: m for name, m in model.named_modules() if name and is_norm_layer(m)}
