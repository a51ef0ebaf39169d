"""Architectures by name for the lab's probing experiments, and their layers by role.

``ARCHS`` names the small networks the optimization experiments (ics, landscape,
saturation) train: the d2l LeNet (sigmoid), a 3x100 ReLU MLP and a deep 6x100 sigmoid
MLP, each with the norm before the activation (Ioffe & Szegedy's and the d2l chapter's
placement). :func:`build_model` builds one with d2l's Xavier init from a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bnlab.models import create, is_norm_layer
from bnlab.train import init_weights

__all__ = [
    "ARCHS",
    "BN_NORM",
    "arch_label",
    "build_model",
    "check_archs",
    "norm_layers",
    "weight_layers",
]

#: Architectures: the model registry's name, its keyword arguments and a label.
ARCHS: dict[str, dict[str, Any]] = {
    "lenet": {"name": "lenet", "kwargs": {}, "label": "LeNet (sigmoid)"},
    "mlp-relu": {
        "name": "mlp",
        "kwargs": {"hidden": (100, 100, 100), "activation": "relu", "norm_position": "before"},
        "label": "MLP 3x100 (ReLU)",
    },
    "mlp-sigmoid": {
        "name": "mlp",
        "kwargs": {"hidden": (100,) * 6, "activation": "sigmoid", "norm_position": "before"},
        "label": "MLP 6x100 (sigmoid)",
    },
}

#: The model norm used for "with BN".
BN_NORM = "bnlab"


def arch_label(arch: str) -> str:
    """The table label of ``arch`` (a key of ``ARCHS``)."""
    return ARCHS[arch]["label"]


def check_archs(owner: str, archs: Sequence[str]) -> None:
    """Raise ValueError for an empty or unknown architecture list."""
    if not archs:
        raise ValueError(f"{owner}: archs is empty; choose from: {', '.join(ARCHS)}")
    for arch in archs:
        if arch not in ARCHS:
            raise ValueError(f"{owner}: unknown arch {arch!r}; choose from: {', '.join(ARCHS)}")


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


def build_model(arch: str, norm: str, seed: int, *, init_scale: float = 1.0) -> nn.Module:
    """The architecture ``arch`` with ``norm``, d2l's Xavier init from ``seed``, scaled.

    Args:
        arch: a key of ``ARCHS``.
        norm: ``"none"`` or a norm name (``BN_NORM``).
        seed: fixes the initial weights.
        init_scale: every conv/linear weight is multiplied by this after the init.

    Raises:
        ValueError: unknown ``arch``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from: {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    model = create(spec["name"], norm=norm, **spec["kwargs"])
    init_weights(model, seed)
    if init_scale != 1.0:
        with torch.no_grad():
            for layer in weight_layers(model).values():
                layer.weight.mul_(init_scale)
    return model
