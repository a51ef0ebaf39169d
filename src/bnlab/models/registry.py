"""Models by name: ``create("lenet", norm="bnlab")``, ``available()``, ``register_model``.

Every registered builder takes the norm name as its first argument and model-specific
options as keyword arguments, so experiments and the CLI build any model the same way.
The builder checks the norm name (``check_norm`` or its first ``make_norm``, both the
norm registry's one check); ``create`` does not check it a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from bnlab.models.densenet import densenet
from bnlab.models.lenet import LeNet
from bnlab.models.mlp import MLP
from bnlab.models.plain import plain
from bnlab.models.resnet import resnet18, resnet20, resnet56

__all__ = ["ModelBuilder", "available", "create", "register_model"]

# ``builder(norm, **kwargs) -> nn.Module``.
ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str, builder: ModelBuilder, *, overwrite: bool = False) -> None:
    """Make ``name`` available to ``create``.

    Args:
        name: lower-case model name.
        builder: ``builder(norm, **kwargs) -> nn.Module`` (a class such as ``LeNet`` works).
        overwrite: replace an existing entry instead of raising.

    Raises:
        ValueError: ``name`` empty, not lower case, or already registered.
        TypeError: ``builder`` not callable.
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"model name must be a non-empty lower-case string, got {name!r}")
    if not callable(builder):
        raise TypeError(
            f"model builder for {name!r} must be callable, got {type(builder).__name__}"
        )
    if name in _BUILDERS and not overwrite:
        raise ValueError(f"model {name!r} is already registered; pass overwrite=True to replace it")
    _BUILDERS[name] = builder


def available() -> tuple[str, ...]:
    """Names accepted by ``create``, in registration order."""
    return tuple(_BUILDERS)


def create(name: str, norm: str = "none", **kwargs: Any) -> nn.Module:
    """Build the model ``name`` with the normalization ``norm``.

    Args:
        name: one of ``available()``: ``"lenet"``, ``"mlp"``, ``"resnet18"``,
            ``"resnet20"``, ``"resnet56"``, ``"densenet"``, ``"plain"``.
        norm: one of ``bnlab.models.available_norms()``.
        **kwargs: options of that model (``MLP``: ``hidden``, ``norm_position``, ...;
            the ResNets: ``zero_init_residual``, ``width``, ``conv_bias``, and
            ``shortcut`` for resnet20/56; ``densenet``: ``growth_rate``,
            ``block_config``; ``plain``: ``depth`` (6n + 2, default 20), ``width``).

    Returns:
        A freshly initialised model in training mode, on the CPU.

    Raises:
        ValueError: unknown model or norm name, with the choices.
        TypeError: an option the model does not take.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    # The model checks ``norm`` itself, through the norm registry (once, not here too).
    return _BUILDERS[name](norm, **kwargs)


register_model("lenet", LeNet)
register_model("mlp", MLP)
register_model("resnet18", resnet18)
register_model("resnet20", resnet20)
register_model("resnet56", resnet56)
register_model("densenet", densenet)
register_model("plain", plain)
