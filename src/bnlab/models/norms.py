"""The norm slot of every model, over the one norm registry (``bnlab.nn.registry``).

A model asks for ``make_norm(name, num_features, kind)`` wherever a normalization layer
goes: ``kind="2d"`` after a convolution (input ``(N, C, H, W)``), ``kind="1d"`` after a
linear layer (input ``(N, C)``). The name ``"none"`` means "no layer": models leave the
slot out entirely, so a model built with ``norm="none"`` has exactly the layers of its
un-normalized original.

The layers come from the one norm registry, ``bnlab.nn.registry``: a slot builds
``bnlab.nn.create_norm(name, C, dim=...)`` with ``dim`` 2 for ``"2d"`` slots and 0 for
``"1d"`` slots, and the registry checks the name (one message listing the choices). The
slot takes the registry's canonical names exactly (``bnlab.nn.available_norms()``, no
forgiving spellings: a config names one layer one way), plus the names
``register_norm`` adds for models only. What this module adds is the slot's policy:

* ``"none"``: no normalization layer.
* ``"textbook"``, ``"bnlab"``, ``"torch"``: batch norm by that implementation:
  ``bnlab.textbook.BatchNorm(num_features, num_dims)``, the from-scratch layer of d2l's
  batch-norm chapter (``num_dims`` 4 for ``"2d"``, 2 for ``"1d"``; registered here, as
  the registry's ``textbook`` implementation); ``bnlab.nn.BatchNorm2d/1d``;
  ``torch.nn.BatchNorm2d/1d``. ``"batchnorm"`` is bnlab's too.
* ``"layernorm"``, ``"groupnorm"``, ``"frozen"``, ``"batchrenorm"``, ``"sync"``: the
  registry's layers with their defaults (layer norm over ``(C, H, W)`` as
  ``GroupNorm(1, C)`` after convolutions, ``LayerNorm(C)`` after linear layers; group
  norm with ``gcd(C, 32)`` groups; frozen batch norm with the identity statistics of a
  fresh layer; batch renorm with ``r_max`` 3, ``d_max`` 5, momentum 0.01, whose warm-up
  training code sets with ``bnlab.nn.set_renorm_clipping(model,
  *bnlab.nn.renorm_clipping(step))``; ``SyncBatchNorm`` over the default
  ``torch.distributed`` group, plain batch norm in a single process).
* ``"instancenorm"``: ``InstanceNorm2d(C, affine=True)`` after convolutions (affine, as
  the other norms here, so that a model's capacity does not change with the norm); the
  ``"1d"`` slots after linear layers stay empty, since an ``(N, C)`` input has nothing
  to normalize per sample and channel.
* ``"ghost"``: ``GhostBatchNorm1d/2d`` with virtual batches of 32 (the d2l batch of 256
  in 8 ghost batches; Hoffer et al. use 128 of 4096).

Paper: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor, nn

import bnlab.nn
import bnlab.textbook
from bnlab.nn.registry import NONE, NormSpec, register_norm_layer, resolve_norm

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

#: The input layouts a norm slot can sit in: "2d" is (N, C, H, W), "1d" is (N, C).
KINDS: tuple[str, ...] = ("1d", "2d")
# The registry's dim for each kind of slot.
_DIMS = {"1d": 0, "2d": 2}
# The slot's policy: options beyond the registry's defaults, and kinds whose "1d" slots
# stay empty (see the module docstring).
_SLOT_OPTIONS: dict[str, dict[str, Any]] = {
    "instancenorm": {"affine": True},
    "ghost": {"virtual_batch_size": 32},
}
_CONV_ONLY = {"instancenorm"}

# Names registered for models only (``register_norm``); the registry's names come first.
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
    """Make ``name`` available to every model's norm slot (and to no other code).

    A layer that other code should build by name too belongs in the registry instead
    (``bnlab.nn.registry.register_norm_layer``): every model's slot then takes it.

    Args:
        name: lower-case name used on the command line and in configs.
        factory: ``factory(num_features, kind) -> nn.Module`` with ``kind`` in ``KINDS``.
        overwrite: replace an existing models-only entry instead of raising.

    Raises:
        ValueError: ``name`` is empty, not lower case, ``"none"``, or already registered
            (and ``overwrite`` is False; the registry's names cannot be replaced here).
        TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name or name != name.lower() or name == NONE:
        raise ValueError(
            f"norm name must be a non-empty lower-case string other than {NONE!r}, got {name!r}"
        )
    if not callable(factory):
        raise TypeError(f"norm factory for {name!r} must be callable, got {type(factory).__name__}")
    if name in bnlab.nn.available_norms() and overwrite:
        raise ValueError(
            f"norm {name!r} belongs to the norm registry; replace it there "
            "(bnlab.nn.registry.register_norm_layer) or choose another name"
        )
    if name in available_norms() and not overwrite:
        raise ValueError(f"norm {name!r} is already registered; pass overwrite=True to replace it")
    _FACTORIES[name] = factory


def available_norms() -> tuple[str, ...]:
    """Every name the norm slot accepts: the registry's (``"none"`` first), then ours."""
    return (*bnlab.nn.available_norms(), *_FACTORIES)


def _resolve(name: str) -> NormSpec | NormFactory:
    """The one check of a slot name: a models-only factory, or the registry's spec."""
    if isinstance(name, str) and name in _FACTORIES:
        return _FACTORIES[name]
    return resolve_norm(name, exact=True, also=tuple(_FACTORIES))


def check_norm(name: str) -> str:
    """Return ``name`` if the norm slot accepts it.

    Raises:
        ValueError: unknown name, with the list of choices.
    """
    _resolve(name)
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
    spec = _resolve(name)
    if kind not in KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not isinstance(num_features, int) or isinstance(num_features, bool):
        raise TypeError(
            f"num_features must be an int, got {num_features!r} of type {type(num_features).__name__}"
        )
    if num_features <= 0:
        raise ValueError(f"num_features must be positive, got {num_features}")
    if not isinstance(spec, NormSpec):
        layer = spec(num_features, kind)
    elif spec.name == NONE or (kind == "1d" and spec.name in _CONV_ONLY):
        return None
    else:
        options = _SLOT_OPTIONS.get(spec.name, {})
        layer = bnlab.nn.create_norm(spec, num_features, dim=_DIMS[kind], **options)
    if layer is not None:  # a factory may leave a slot empty
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


def _textbook(num_features: int, dim: int, **kwargs: Any) -> nn.Module:
    if dim not in (0, 2):
        raise ValueError(
            "textbook: d2l's BatchNorm takes (N, C) or (N, C, H, W) inputs (dim 0 or 2), "
            f"got dim {dim}"
        )
    return bnlab.textbook.BatchNorm(num_features, num_dims=4 if dim == 2 else 2, **kwargs)


# d2l's layer is batch norm's "textbook" implementation in the one registry; it is
# registered here because ``bnlab.nn`` does not import ``bnlab.textbook``.
register_norm_layer("batchnorm", _textbook, lambda dim: bnlab.textbook.BatchNorm, impl="textbook")
