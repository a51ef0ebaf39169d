"""The norm slot of every model: a registry from norm names to layer factories.

A model asks for ``make_norm(name, num_features, kind)`` wherever a normalization layer
goes: ``kind="2d"`` after a convolution (input ``(N, C, H, W)``), ``kind="1d"`` after a
linear layer (input ``(N, C)``). The name ``"none"`` means "no layer": models leave the
slot out entirely, so a model built with ``norm="none"`` has exactly the layers of its
un-normalized original. Later work adds names (layer norm, group norm, ...) with
``register_norm``; nothing else in the models needs to change.

Built-in names:

* ``"none"``: no normalization layer.
* ``"textbook"``: ``bnlab.textbook.BatchNorm(num_features, num_dims)``, the from-scratch
  layer of d2l's batch-norm chapter (``num_dims`` 4 for ``"2d"``, 2 for ``"1d"``).
* ``"bnlab"``: ``bnlab.nn.BatchNorm2d`` / ``bnlab.nn.BatchNorm1d``.
* ``"torch"``: ``torch.nn.BatchNorm2d`` / ``torch.nn.BatchNorm1d``.
* ``"layernorm"``, ``"groupnorm"``, ``"frozen"``: ``bnlab.nn.create_norm(name, C,
  dim=...)`` with ``dim`` 2 for ``"2d"`` slots and 0 for ``"1d"`` slots (layer norm over
  ``(C, H, W)`` as ``GroupNorm(1, C)`` after convolutions, ``LayerNorm(C)`` after linear
  layers; group norm with ``gcd(C, 32)`` groups; frozen batch norm with the identity
  statistics of a fresh layer).
* ``"instancenorm"``: ``InstanceNorm2d(C, affine=True)`` after convolutions (affine, as
  the other norms here, so that a model's capacity does not change with the norm); the
  ``"1d"`` slots after linear layers stay empty, since an ``(N, C)`` input has nothing
  to normalize per sample and channel.
* ``"batchrenorm"``: ``BatchRenorm1d/2d`` with the layer's defaults (``r_max`` 3,
  ``d_max`` 5, momentum 0.01); training code sets the paper's warm-up with
  ``bnlab.nn.set_renorm_clipping(model, *bnlab.nn.renorm_clipping(step))``.
* ``"ghost"``: ``GhostBatchNorm1d/2d`` with virtual batches of 32 (the d2l batch of 256
  in 8 ghost batches; Hoffer et al. use 128 of 4096).
* ``"sync"``: ``bnlab.nn.SyncBatchNorm``: batch norm over every process of the default
  ``torch.distributed`` group, plain batch norm in a single process.

Paper: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

import bnlab.nn
import bnlab.textbook

__all__ = [
    "KINDS",
    "NONE",
    "NormFactory",
    "NormKind",
    "available_norms",
    "check_norm",
    "first_norm",
    "first_norm_affine",
    "is_norm_layer",
    "make_norm",
    "register_norm",
]

NormKind = Literal["1d", "2d"]
# A factory builds one layer for ``num_features`` channels of the given kind (or None to
# leave that slot empty).
NormFactory = Callable[[int, str], nn.Module | None]

#: The name of the empty slot.
NONE = "none"
#: The input layouts a norm slot can sit in: "2d" is (N, C, H, W), "1d" is (N, C).
KINDS: tuple[str, ...] = ("1d", "2d")

_FACTORIES: dict[str, NormFactory] = {}
# Classes that count as normalization layers for ``first_norm``; factories add theirs.
_NORM_TYPES: set[type[nn.Module]] = {
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    bnlab.nn._base._NormBase,
    bnlab.textbook.BatchNorm,
}


def register_norm(name: str, factory: NormFactory, *, overwrite: bool = False) -> None:
    """Make ``name`` available to every model's norm slot.

    Args:
        name: lower-case name used on the command line and in configs.
        factory: ``factory(num_features, kind) -> nn.Module`` with ``kind`` in ``KINDS``.
        overwrite: replace an existing entry instead of raising.

    Raises:
        ValueError: ``name`` is empty, not lower case, ``"none"``, or already registered
            (and ``overwrite`` is False).
        TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name or name != name.lower() or name == NONE:
        raise ValueError(
            f"norm name must be a non-empty lower-case string other than {NONE!r}, got {name!r}"
        )
    if not callable(factory):
        raise TypeError(f"norm factory for {name!r} must be callable, got {type(factory).__name__}")
    if name in _FACTORIES and not overwrite:
        raise ValueError(f"norm {name!r} is already registered; pass overwrite=True to replace it")
    _FACTORIES[name] = factory


def available_norms() -> tuple[str, ...]:
    """Every name the norm slot accepts, ``"none"`` first, then in registration order."""
    return (NONE, *_FACTORIES)


def check_norm(name: str) -> str:
    """Return ``name`` if the norm slot accepts it.

    Raises:
        ValueError: unknown name, with the list of choices.
    """
    if name != NONE and name not in _FACTORIES:
        raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(available_norms())}")
    return name


def make_norm(name: str, num_features: int, kind: NormKind = "2d") -> nn.Module | None:
    """Build the normalization layer ``name`` for ``num_features`` channels.

    Args:
        name: one of ``available_norms()``.
        num_features: channels ``C`` (dim 1 of the input), a positive int.
        kind: ``"2d"`` for ``(N, C, H, W)`` inputs (after a convolution), ``"1d"`` for
            ``(N, C)`` inputs (after a linear layer).

    Returns:
        The new layer, or ``None`` for ``"none"`` (the slot stays empty).

    Raises:
        ValueError: unknown name or kind, or ``num_features`` not positive.
        TypeError: ``num_features`` not an int.
    """
    check_norm(name)
    if kind not in KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not isinstance(num_features, int) or isinstance(num_features, bool):
        raise TypeError(
            f"num_features must be an int, got {num_features!r} of type {type(num_features).__name__}"
        )
    if num_features <= 0:
        raise ValueError(f"num_features must be positive, got {num_features}")
    if name == NONE:
        return None
    layer = _FACTORIES[name](num_features, kind)
    if layer is not None:  # a factory may leave a slot empty (instancenorm after linears)
        _NORM_TYPES.add(type(layer))
    return layer


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (a built-in or registered kind)."""
    return isinstance(module, tuple(_NORM_TYPES))


def first_norm(model: nn.Module) -> nn.Module:
    """The first normalization layer of ``model`` in ``model.modules()`` order.

    Raises:
        ValueError: the model has no normalization layer (built with ``norm="none"``?).
    """
    for module in model.modules():
        if module is not model and is_norm_layer(module):
            return module
    raise ValueError(
        f"{type(model).__name__} has no normalization layer (was it built with norm='none'?)"
    )


def first_norm_affine(model: nn.Module) -> tuple[Tensor, Tensor]:
    """Scale gamma and shift beta of the first normalization layer, as d2l prints them.

    Reads ``weight``/``bias`` (torch and bnlab layers) or ``gamma``/``beta`` (the
    textbook layer, whose parameters have shape ``(1, C, 1, 1)`` or ``(1, C)``).

    Returns:
        ``(gamma, beta)``, detached copies flattened to shape ``(C,)``.

    Raises:
        ValueError: no normalization layer, or the first one has no affine parameters.
    """
    layer = first_norm(model)
    for scale, shift in (("weight", "bias"), ("gamma", "beta")):
        gamma, beta = getattr(layer, scale, None), getattr(layer, shift, None)
        if isinstance(gamma, Tensor) and isinstance(beta, Tensor):
            return gamma.detach().reshape(-1).clone(), beta.detach().reshape(-1).clone()
    raise ValueError(
        f"the first normalization layer of {type(model).__name__} ({type(layer).__name__}) "
        "has no affine parameters (built with affine=False?)"
    )


def _textbook(num_features: int, kind: str) -> nn.Module:
    return bnlab.textbook.BatchNorm(num_features, num_dims=4 if kind == "2d" else 2)


def _bnlab(num_features: int, kind: str) -> nn.Module:
    cls = bnlab.nn.BatchNorm2d if kind == "2d" else bnlab.nn.BatchNorm1d
    return cls(num_features)


def _torch(num_features: int, kind: str) -> nn.Module:
    cls = nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d
    return cls(num_features)


def _family(name: str, **options: object) -> NormFactory:
    def factory(num_features: int, kind: str) -> nn.Module:
        return bnlab.nn.create_norm(name, num_features, dim=2 if kind == "2d" else 0, **options)

    return factory


def _instancenorm(num_features: int, kind: str) -> nn.Module | None:
    if kind != "2d":
        return None
    return bnlab.nn.create_norm("instancenorm", num_features, dim=2, affine=True)


register_norm("textbook", _textbook)
register_norm("bnlab", _bnlab)
register_norm("torch", _torch)
register_norm("layernorm", _family("layernorm"))
register_norm("groupnorm", _family("groupnorm"))
register_norm("instancenorm", _instancenorm)
register_norm("frozen", _family("frozen"))
register_norm("batchrenorm", _family("batchrenorm"))
register_norm("ghost", _family("ghost", virtual_batch_size=32))
register_norm("sync", _family("sync"))
