"""Normalization layers by name: ``create_norm``, ``convert_norm`` and their registry.

``create_norm("groupnorm", 64, dim=2, num_groups=8)`` builds any layer of the family
with one set of arguments: the name, the channel count ``C`` and ``dim``, the number of
spatial dims of the input the layer will see:

=====  ==========================  ==================================================
dim    input                       typical producer
=====  ==========================  ==================================================
0      ``(N, C)``                  ``nn.Linear``
1      ``(N, C, L)``               ``nn.Conv1d``
2      ``(N, C, H, W)``            ``nn.Conv2d``
3      ``(N, C, D, H, W)``         ``nn.Conv3d``
=====  ==========================  ==================================================

Other keyword arguments go to the layer's constructor (``eps``, ``momentum``,
``affine``, ``track_running_stats``, ``num_groups``, ``device``, ``dtype``, ...); an
argument the layer does not take is a ``TypeError`` that lists the ones it does.

``convert_norm(model, name, **kwargs)`` returns a copy of ``model`` in which every batch
norm (torch's or bnlab's, of any kind) is replaced by ``create_norm(name, ...)`` with the
same channel count, ``dim`` read from the replaced layer's class.

Built-in names (the names models use too, see ``bnlab.models.norms``):

* ``batchnorm``: ``BatchNorm1d/2d/3d`` (dims 0 and 1 share ``BatchNorm1d``).
* ``layernorm``: each sample normalized over all its features, ``(C, *)``, with a
  per-channel affine, the layer norm of Ba et al. (arXiv 1607.06450) as CNNs use it.
  ``dim`` 0 builds ``LayerNorm(C)``; larger ``dim`` builds ``GroupNorm(1, C)``, which is
  the same map for ``(N, C, *)`` inputs without fixing the spatial size (torch's
  ``LayerNorm((C, H, W))`` would need ``H, W`` and learn a per-element affine).
* ``groupnorm``: ``GroupNorm(num_groups, C)``; ``num_groups`` defaults to the paper's 32
  reduced to ``gcd(C, 32)`` so that groups always divide channels (Wu & He, arXiv
  1803.08494); an explicit ``num_groups`` that does not divide ``C`` is an error.
* ``instancenorm``: ``InstanceNorm1d/2d/3d`` with torch's defaults (no affine, no running
  statistics); ``dim`` 0 is an error (one value per channel and sample: nothing to
  normalize over).
* ``frozen``: ``FrozenBatchNorm1d/2d``; ``dim`` 3 is an error (no 3d twin).
* ``batchrenorm``: ``BatchRenorm1d/2d/3d`` (``r_max``, ``d_max``; see ``bnlab.nn.renorm``).
* ``ghost``: ``GhostBatchNorm1d/2d/3d`` (``virtual_batch_size``).
* ``sync``: ``SyncBatchNorm`` (any ``dim``; ``process_group``), batch norm over all
  processes of a ``torch.distributed`` group, plain batch norm without one.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d
from bnlab.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from bnlab.nn.groupnorm import GroupNorm
from bnlab.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from bnlab.nn.layernorm import LayerNorm
from bnlab.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from bnlab.nn.sync import SyncBatchNorm

__all__ = [
    "DIMS",
    "NormBuilder",
    "available_norm_layers",
    "batchnorm_dim",
    "convert_norm",
    "create_norm",
    "register_batchnorm_class",
    "register_norm_layer",
]

#: Spatial dims a norm layer can be built for: (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W).
DIMS: tuple[int, ...] = (0, 1, 2, 3)

# ``builder(num_features, dim, **kwargs) -> nn.Module``; ``dim`` is already checked.
NormBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, NormBuilder] = {}
# The constructor whose keyword arguments a name accepts, per dim (for error messages).
_TARGETS: dict[str, Callable[[int], Callable[..., Any]]] = {}

# Batch-norm classes ``convert_norm`` replaces, with the ``dim`` they imply (None: any
# rank, so the caller must say). Modules register their own kinds here.
_BATCHNORM_DIMS: dict[type[nn.Module], int | None] = {
    nn.BatchNorm1d: 1,
    nn.BatchNorm2d: 2,
    nn.BatchNorm3d: 3,
    nn.SyncBatchNorm: None,
    BatchNorm1d: 1,
    BatchNorm2d: 2,
    BatchNorm3d: 3,
    FrozenBatchNorm1d: 1,
    FrozenBatchNorm2d: 2,
    BatchRenorm1d: 1,
    BatchRenorm2d: 2,
    BatchRenorm3d: 3,
    GhostBatchNorm1d: 1,
    GhostBatchNorm2d: 2,
    GhostBatchNorm3d: 3,
    SyncBatchNorm: None,
}


def register_norm_layer(
    name: str,
    builder: NormBuilder,
    target: Callable[[int], Callable[..., Any]],
    *,
    overwrite: bool = False,
) -> None:
    """Make ``name`` available to ``create_norm`` and ``convert_norm``.

    Args:
        name: lower-case name.
        builder: ``builder(num_features, dim, **kwargs) -> nn.Module``.
        target: ``target(dim)`` returns the constructor whose keyword arguments the name
            accepts for that ``dim`` (checked before ``builder`` runs, so that a wrong
            argument gets a message listing the right ones).
        overwrite: replace an existing entry instead of raising.

    Raises:
        ValueError: empty or not lower-case name, or already registered.
        TypeError: ``builder`` or ``target`` not callable.
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"norm layer name must be a non-empty lower-case string, got {name!r}")
    for what, value in (("builder", builder), ("target", target)):
        if not callable(value):
            raise TypeError(f"norm layer {what} for {name!r} must be callable, got {value!r}")
    if name in _BUILDERS and not overwrite:
        raise ValueError(
            f"norm layer {name!r} is already registered; pass overwrite=True to replace it"
        )
    _BUILDERS[name] = builder
    _TARGETS[name] = target


def register_batchnorm_class(cls: type[nn.Module], dim: int | None) -> None:
    """Let ``convert_norm`` replace layers of type ``cls`` (a batch-norm kind).

    Args:
        cls: the layer class (exact type; subclasses register themselves).
        dim: the spatial dims its inputs have, or None when it takes any rank.
    """
    if dim is not None and dim not in DIMS:
        raise ValueError(f"dim must be one of {DIMS} or None, got {dim!r}")
    _BATCHNORM_DIMS[cls] = dim


def available_norm_layers() -> tuple[str, ...]:
    """Names ``create_norm`` accepts, in registration order."""
    return tuple(_BUILDERS)


def batchnorm_dim(module: nn.Module) -> int | None:
    """The ``dim`` a batch norm's class implies, or None (any rank).

    Raises:
        ValueError: ``module`` is not a batch-norm kind ``convert_norm`` knows.
    """
    if type(module) not in _BATCHNORM_DIMS:
        raise ValueError(f"{type(module).__name__} is not a batch-norm layer convert_norm knows")
    return _BATCHNORM_DIMS[type(module)]


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(
            f"unknown norm layer {name!r}; choose one of: {', '.join(available_norm_layers())}"
        )
    return name


def _check_dim(dim: object) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim not in DIMS:
        raise ValueError(
            f"dim is the number of spatial dims of the input, one of {DIMS} "
            f"((N, C) ... (N, C, D, H, W)), got {dim!r}"
        )
    return dim


def _keyword_names(target: Callable[..., Any]) -> list[str]:
    params = inspect.signature(target).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]


def _check_kwargs(name: str, dim: int, kwargs: dict[str, Any], fixed: set[str]) -> None:
    accepted = [k for k in _keyword_names(_TARGETS[name](dim)) if k not in fixed]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"norm layer {name!r} (dim {dim}) does not take {', '.join(unknown)}; "
            f"it takes: {', '.join(accepted)}"
        )


# Arguments create_norm fills in itself (not settable through **kwargs).
_FIXED = {"num_features", "num_channels", "normalized_shape"}


def create_norm(name: str, num_features: int, *, dim: int = 2, **kwargs: Any) -> nn.Module:
    """Build the normalization layer ``name`` for ``num_features`` channels.

    Args:
        name: one of ``available_norm_layers()``.
        num_features: channels ``C`` (dim 1 of the input), a positive int.
        dim: spatial dims of the input: 0 ``(N, C)``, 1 ``(N, C, L)``, 2 ``(N, C, H, W)``,
            3 ``(N, C, D, H, W)``.
        **kwargs: the layer's own options (``eps``, ``momentum``, ``affine``, ...).

    Returns:
        A new layer in training mode.

    Raises:
        ValueError: unknown name (the message lists the choices), bad ``dim``, a
            ``num_features`` <= 0, or an option value the layer rejects.
        TypeError: ``num_features`` not an int, or an option the layer does not take
            (the message lists those it takes).
    """
    _check_name(name)
    _check_dim(dim)
    if not isinstance(num_features, int) or isinstance(num_features, bool):
        raise TypeError(
            f"num_features must be an int, got {num_features!r} of type {type(num_features).__name__}"
        )
    if num_features <= 0:
        raise ValueError(f"num_features must be positive, got {num_features}")
    _check_kwargs(name, dim, kwargs, _FIXED)
    return _BUILDERS[name](num_features, dim, **kwargs)


def convert_norm(
    model: nn.Module, name: str, *, dim: int | None = None, **kwargs: Any
) -> nn.Module:
    """A copy of ``model`` with every batch norm replaced by the layer ``name``.

    Replaced: layers whose exact type is a batch-norm kind (``torch.nn`` and ``bnlab.nn``
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, and the kinds other bnlab modules register:
    frozen, renorm, ghost, sync). Each becomes ``create_norm(name, C, dim=..., **kwargs)``
    with ``C`` its ``num_features`` and ``dim`` read from its class.

    State: when the new layer is a batch-norm kind too (renorm, ghost, sync, frozen) and
    its ``state_dict`` entries are among the old one's with the same shapes, the learned
    affine and the running statistics carry over; group, layer and instance norms keep
    their own initialization (their affine follows a different normalization).
    ``BatchNorm1d`` takes ``(N, C)`` and ``(N, C, L)`` inputs and converts with ``dim``
    1: ``instancenorm`` then builds ``InstanceNorm1d``, which needs ``(N, C, L)``. Device, dtype and train/eval mode follow the
    replaced layer. ``model`` itself is not changed.

    Args:
        model: any module; a batch norm itself is converted and returned.
        name: one of ``available_norm_layers()``.
        dim: spatial dims for layers whose class does not imply them (``SyncBatchNorm``
            takes any rank); ignored for the others.
        **kwargs: options for every new layer.

    Returns:
        The converted copy.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or an option the layer does not take.
        ValueError: unknown name; a layer whose ``dim`` is unknown and no ``dim`` given;
            an option value the new layer rejects.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_norm: expected an nn.Module, got {type(model).__name__}")
    _check_name(name)
    if dim is not None:
        _check_dim(dim)
    model = copy.deepcopy(model)
    replacements: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        if type(module) not in _BATCHNORM_DIMS:
            continue
        layer_dim = _BATCHNORM_DIMS[type(module)]
        if layer_dim is None:
            layer_dim = dim
        if layer_dim is None:
            raise ValueError(
                f"convert_norm: {path or '<model>'} is a {type(module).__name__}, which takes "
                "inputs of any rank; pass dim= (spatial dims of its input, 0 to 3)"
            )
        replacements[path] = _replacement(module, name, layer_dim, kwargs)
    for path, new in replacements.items():
        if path == "":
            return new
        model.set_submodule(path, new)
    return model


def _replacement(old: nn.Module, name: str, dim: int, kwargs: dict[str, Any]) -> nn.Module:
    params = [*old.parameters(recurse=False), *old.buffers(recurse=False)]
    factory: dict[str, Any] = {}
    floating = [t for t in params if t.is_floating_point()]
    if floating and "device" not in kwargs and "dtype" not in kwargs:
        factory = {"device": floating[0].device, "dtype": floating[0].dtype}
    new = create_norm(name, int(old.num_features), dim=dim, **kwargs, **factory)
    old_state = old.state_dict()
    new_state = new.state_dict()
    # Only between batch-norm kinds do the entries mean the same (running statistics of
    # the same estimator, the affine applied after the same normalization).
    if type(new) in _BATCHNORM_DIMS and all(
        k in old_state and old_state[k].shape == v.shape for k, v in new_state.items()
    ):
        new.load_state_dict({k: old_state[k] for k in new_state})
        for pname, param in new.named_parameters(recurse=False):
            old_param = getattr(old, pname, None)
            if isinstance(old_param, nn.Parameter):
                param.requires_grad_(old_param.requires_grad)
    return new.train(old.training)


def _by_dim(classes: tuple[type[nn.Module], ...]) -> Callable[[int], type[nn.Module]]:
    def target(dim: int) -> type[nn.Module]:
        return classes[max(dim - 1, 0)]

    return target


def _batchnorm(num_features: int, dim: int, **kwargs: Any) -> nn.Module:
    return _by_dim((BatchNorm1d, BatchNorm2d, BatchNorm3d))(dim)(num_features, **kwargs)


def _layernorm_target(dim: int) -> Callable[..., Any]:
    return _layernorm_options


def _layernorm_options(
    eps: float = 1e-5, affine: bool = True, bias: bool = True, device: Any = None, dtype: Any = None
) -> None:
    """The options ``create_norm("layernorm", ...)`` takes, uniform over dims."""


def _layernorm(num_features: int, dim: int, *, affine: bool = True, **kwargs: Any) -> nn.Module:
    if dim == 0:
        return LayerNorm(num_features, elementwise_affine=affine, **kwargs)
    return GroupNorm(1, num_features, affine=affine, **kwargs)


def _groupnorm_target(dim: int) -> Callable[..., Any]:
    return GroupNorm


def _groupnorm(
    num_features: int, dim: int, *, num_groups: int | None = None, **kwargs: Any
) -> nn.Module:
    if num_groups is None:
        num_groups = math.gcd(num_features, 32)
    return GroupNorm(num_groups, num_features, **kwargs)


def _instancenorm_target(dim: int) -> Callable[..., Any]:
    return (InstanceNorm1d, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d)[dim]


def _instancenorm(num_features: int, dim: int, **kwargs: Any) -> nn.Module:
    if dim == 0:
        raise ValueError(
            "instancenorm needs spatial dims (dim >= 1): an (N, C) input has one value per "
            "channel and sample, nothing to normalize over; use layernorm or batchnorm there"
        )
    return _instancenorm_target(dim)(num_features, **kwargs)


def _frozen_target(dim: int) -> Callable[..., Any]:
    return FrozenBatchNorm2d if dim == 2 else FrozenBatchNorm1d


def _frozen(num_features: int, dim: int, **kwargs: Any) -> nn.Module:
    if dim == 3:
        raise ValueError(
            "frozen: there is no FrozenBatchNorm3d; freeze (N, C, D, H, W) layers by "
            "calling .eval() on a BatchNorm3d and setting requires_grad_(False)"
        )
    return _frozen_target(dim)(num_features, **kwargs)


register_norm_layer("batchnorm", _batchnorm, _by_dim((BatchNorm1d, BatchNorm2d, BatchNorm3d)))
register_norm_layer("layernorm", _layernorm, _layernorm_target)
register_norm_layer("groupnorm", _groupnorm, _groupnorm_target)
register_norm_layer("instancenorm", _instancenorm, _instancenorm_target)
register_norm_layer("frozen", _frozen, _frozen_target)
register_norm_layer(
    "batchrenorm",
    lambda c, dim, **kw: _by_dim((BatchRenorm1d, BatchRenorm2d, BatchRenorm3d))(dim)(c, **kw),
    _by_dim((BatchRenorm1d, BatchRenorm2d, BatchRenorm3d)),
)
register_norm_layer(
    "ghost",
    lambda c, dim, **kw: _by_dim((GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d))(dim)(
        c, **kw
    ),
    _by_dim((GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d)),
)
register_norm_layer("sync", lambda c, dim, **kw: SyncBatchNorm(c, **kw), lambda dim: SyncBatchNorm)
