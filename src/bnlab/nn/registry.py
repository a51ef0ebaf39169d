"""The one norm registry: normalization layers by name, for every dim and implementation.

Everything that builds a norm layer from a name goes through here: the models' norm
slots (``bnlab.models.create(name, norm=...)``), the lab, the CLI's ``--norm``, and
``norm_layer=`` arguments (``get_norm_layer``, as in timm). A name is resolved once, by
``resolve_norm``, into a ``NormSpec`` (the layer kind, and the implementation and dim the
name implies); an unknown name is one ``ValueError`` that lists the valid names.

Three entry points:

* ``create_norm("groupnorm", 64, dim=2, num_groups=8)`` builds one layer;
* ``get_norm_layer("gn", num_groups=8)`` returns a constructor ``f(num_features)`` for a
  ``norm_layer=`` slot (None for ``"none"``: the slot stays empty);
* ``convert_norm(model, "groupnorm")`` returns a copy of ``model`` with every batch norm
  (torch's or bnlab's, of any kind) replaced, the ``dim`` read from the replaced layer.

``dim`` is the number of spatial dims of the input the layer will see:

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

Layer kinds (``available_norm_layers()``), each with the implementations it has
(``impl``: ``"bnlab"``, the default, ``"torch"`` for the ``torch.nn`` twin, and
``"textbook"`` for d2l's from-scratch layer, which ``bnlab.models`` registers because
``nn`` does not import ``bnlab.textbook``):

* ``batchnorm``: ``BatchNorm1d/2d/3d`` (dims 0 and 1 share ``BatchNorm1d``); bnlab,
  torch, textbook (``bnlab.textbook.BatchNorm``, dims 0 and 2 only).
* ``layernorm``: each sample normalized over all its features, ``(C, *)``, with a
  per-channel affine, the layer norm of Ba et al. (arXiv 1607.06450) as CNNs use it.
  ``dim`` 0 builds ``LayerNorm(C)``; larger ``dim`` builds ``GroupNorm(1, C)``, which is
  the same map for ``(N, C, *)`` inputs without fixing the spatial size (torch's
  ``LayerNorm((C, H, W))`` would need ``H, W`` and learn a per-element affine); bnlab,
  torch.
* ``groupnorm``: ``GroupNorm(num_groups, C)``; ``num_groups`` defaults to the paper's 32
  reduced to ``gcd(C, 32)`` so that groups always divide channels (Wu & He, arXiv
  1803.08494); an explicit ``num_groups`` that does not divide ``C`` is an error; bnlab,
  torch.
* ``instancenorm``: ``InstanceNorm1d/2d/3d`` with torch's defaults (no affine, no running
  statistics); ``dim`` 0 is an error (one value per channel and sample: nothing to
  normalize over); bnlab, torch.
* ``frozen``: ``FrozenBatchNorm1d/2d``; ``dim`` 3 is an error (no 3d twin).
* ``batchrenorm``: ``BatchRenorm1d/2d/3d`` (``r_max``, ``d_max``; see ``bnlab.nn.renorm``).
* ``ghost``: ``GhostBatchNorm1d/2d/3d`` (``virtual_batch_size``).
* ``sync``: ``SyncBatchNorm`` (any ``dim``; ``process_group``), batch norm over all
  processes of a ``torch.distributed`` group, plain batch norm without one.

Names (``available_norms()`` lists the canonical ones): ``"none"`` (no layer: ``None``
from ``get_norm_layer``, ``nn.Identity`` from ``create_norm``), an implementation name
alone (``"textbook"``, ``"bnlab"``, ``"torch"``: batch norm by that implementation, the
names of the models' norm slot), and the kinds above. ``resolve_norm`` forgives as
timm's ``get_norm_layer`` does: case, ``_`` and ``-`` do not matter, and short or class
names work (``bn``, ``BatchNorm2d``, ``batch_norm``, ``gn``, ``GroupNorm``, ``ln``,
``in``, ``InstanceNorm2d``, ``FrozenBatchNorm2d``, ``syncbn`` ...). A ``1d``/``2d``/``3d``
suffix implies the dim (``1d``: ``(N, C, L)``) and an implementation name implies the
implementation; an explicit ``dim=`` or ``impl=`` argument wins over what the name
implies. Configs and the command line use the canonical spellings only
(``resolve_norm(name, exact=True)``), so that one layer has one name in run folders.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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
    "DEFAULT_IMPL",
    "DIMS",
    "IMPLEMENTATIONS",
    "NONE",
    "NormBuilder",
    "NormLayerFactory",
    "NormSpec",
    "available_norm_layers",
    "available_norms",
    "batchnorm_dim",
    "convert_norm",
    "create_norm",
    "get_norm_layer",
    "norm_implementations",
    "register_batchnorm_class",
    "register_norm_class",
    "register_norm_layer",
    "resolve_norm",
]

#: Spatial dims a norm layer can be built for: (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W).
DIMS: tuple[int, ...] = (0, 1, 2, 3)
#: Implementations a kind can have: d2l's from-scratch layer, bnlab's, torch.nn's twin.
IMPLEMENTATIONS: tuple[str, ...] = ("textbook", "bnlab", "torch")
#: The implementation used when neither the name nor ``impl=`` chooses one.
DEFAULT_IMPL = "bnlab"
#: The name of "no normalization layer".
NONE = "none"
# The kind an implementation name alone ("bnlab", "torch", "textbook") stands for.
_IMPL_KIND = "batchnorm"
# The dim a name implies when it and the caller say nothing.
_DEFAULT_DIM = 2

# ``builder(num_features, dim, **kwargs) -> nn.Module``; ``dim`` is already checked.
NormBuilder = Callable[..., nn.Module]

# kind -> implementation -> builder, and the constructor whose keyword arguments the
# kind accepts, per dim (checked before the builder runs, for the error message).
_BUILDERS: dict[str, dict[str, NormBuilder]] = {}
_TARGETS: dict[str, dict[str, Callable[[int], Callable[..., Any]]]] = {}
# Forgiving spellings: key (lower case, no "_" or "-") -> kind.
_ALIASES: dict[str, str] = {}

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


@dataclass(frozen=True)
class NormSpec:
    """A resolved norm name.

    Attributes:
        name: the kind (one of ``available_norm_layers()``) or ``"none"``.
        impl: the implementation the name implies (``"torch"`` for ``"torch"``), or None.
        dim: the dim the name implies (2 for ``"BatchNorm2d"``), or None.
    """

    name: str
    impl: str | None = None
    dim: int | None = None


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def register_norm_layer(
    name: str,
    builder: NormBuilder,
    target: Callable[[int], Callable[..., Any]],
    *,
    impl: str = DEFAULT_IMPL,
    aliases: Sequence[str] = (),
    overwrite: bool = False,
) -> None:
    """Make the kind ``name`` (or another implementation of it) available by name.

    "Add a norm" is one module with the layer plus one call of this function.

    Args:
        name: lower-case kind name.
        builder: ``builder(num_features, dim, **kwargs) -> nn.Module``.
        target: ``target(dim)`` returns the constructor whose keyword arguments the kind
            accepts for that ``dim`` (checked before ``builder`` runs, so that a wrong
            argument gets a message listing the right ones).
        impl: which implementation ``builder`` is, one of ``IMPLEMENTATIONS``.
        aliases: other spellings of ``name`` (case, ``_`` and ``-`` do not matter).
        overwrite: replace an existing entry instead of raising.

    Raises:
        ValueError: empty or not lower-case name, ``"none"``, an unknown ``impl``, an
            implementation or alias already registered.
        TypeError: ``builder`` or ``target`` not callable, an alias not a string.
    """
    if not isinstance(name, str) or not name or name != name.lower() or name == NONE:
        raise ValueError(
            f"norm layer name must be a non-empty lower-case string other than {NONE!r}, "
            f"got {name!r}"
        )
    if impl not in IMPLEMENTATIONS:
        raise ValueError(
            f"norm layer {name!r}: unknown implementation {impl!r}; "
            f"choose one of: {', '.join(IMPLEMENTATIONS)}"
        )
    for what, value in (("builder", builder), ("target", target)):
        if not callable(value):
            raise TypeError(f"norm layer {what} for {name!r} must be callable, got {value!r}")
    if impl in _BUILDERS.get(name, {}) and not overwrite:
        what = f"norm layer {name!r}" if impl == DEFAULT_IMPL else f"{impl} {name!r}"
        raise ValueError(f"{what} is already registered; pass overwrite=True to replace it")
    keys = [_key(name)]
    for alias in aliases:
        if not isinstance(alias, str) or not alias:
            raise TypeError(
                f"norm layer aliases for {name!r} must be non-empty strings, got {alias!r}"
            )
        keys.append(_key(alias))
    for key in keys:
        if key == NONE or key in IMPLEMENTATIONS:
            raise ValueError(f"norm name {key!r} is reserved; choose another")
        taken = _ALIASES.get(key, name)
        if taken != name and not overwrite:
            raise ValueError(f"norm name {key!r} already stands for {taken!r}; choose another")
    _BUILDERS.setdefault(name, {})[impl] = builder
    _TARGETS.setdefault(name, {})[impl] = target
    for key in keys:
        _ALIASES[key] = name


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
    """The layer kinds, in registration order (``batchnorm``, ``layernorm``, ...)."""
    return tuple(_BUILDERS)


def available_norms() -> tuple[str, ...]:
    """The canonical names: ``"none"``, the implementations of batch norm, the kinds.

    These are the names of the models' norm slot and of ``--norm``, and the ones an
    unknown name's error lists.
    """
    impls = [i for i in IMPLEMENTATIONS if i in _BUILDERS.get(_IMPL_KIND, {})]
    return (NONE, *impls, *_BUILDERS)


def norm_implementations(name: str | NormSpec) -> tuple[str, ...]:
    """The implementations the kind ``name`` stands for has (empty for ``"none"``).

    Raises:
        ValueError: unknown name, with the list of choices.
    """
    spec = resolve_norm(name)
    have = _BUILDERS.get(spec.name, {})
    return tuple(i for i in IMPLEMENTATIONS if i in have)


def _unknown(name: object, also: Iterable[str]) -> ValueError:
    return ValueError(
        f"unknown norm {name!r}; choose one of: {', '.join((*available_norms(), *also))}"
    )


def resolve_norm(
    name: str | NormSpec, *, exact: bool = False, also: Iterable[str] = ()
) -> NormSpec:
    """Resolve a norm name: the single check every name goes through.

    Args:
        name: a name (forgiving: ``"bn"``, ``"BatchNorm2d"``, ``"group_norm"`` ...), or a
            ``NormSpec`` (returned as it is).
        exact: accept only the canonical spellings of ``available_norms()`` (configs and
            the command line, where one layer must have one name).
        also: more names the caller accepts itself; the error lists them too.

    Returns:
        The ``NormSpec``: kind (or ``"none"``) and the implementation and dim implied.

    Raises:
        ValueError: unknown name: ``"unknown norm 'x'; choose one of: none, ..."``.
    """
    if isinstance(name, NormSpec):
        return name
    if not isinstance(name, str) or (exact and name not in available_norms()):
        raise _unknown(name, also)
    key = _key(name)
    dim = None
    if key not in _ALIASES and key not in IMPLEMENTATIONS and key != NONE:
        stem, suffix = key[:-2], key[-2:]
        if suffix in ("1d", "2d", "3d") and stem in _ALIASES:
            key, dim = stem, int(suffix[0])
    if key == NONE:
        return NormSpec(NONE)
    if key in IMPLEMENTATIONS:
        return NormSpec(_IMPL_KIND, impl=key, dim=dim)
    if key not in _ALIASES:
        raise _unknown(name, also)
    return NormSpec(_ALIASES[key], dim=dim)


def batchnorm_dim(module: nn.Module) -> int | None:
    """The ``dim`` a batch norm's class implies, or None (any rank).

    Raises:
        ValueError: ``module`` is not a batch-norm kind ``convert_norm`` knows.
    """
    if type(module) not in _BATCHNORM_DIMS:
        raise ValueError(f"{type(module).__name__} is not a batch-norm layer convert_norm knows")
    return _BATCHNORM_DIMS[type(module)]


def _check_dim(dim: object) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim not in DIMS:
        raise ValueError(
            f"dim is the number of spatial dims of the input, one of {DIMS} "
            f"((N, C) ... (N, C, D, H, W)), got {dim!r}"
        )
    return dim


def _check_impl(spec: NormSpec, impl: str | None) -> str:
    impl = impl if impl is not None else spec.impl or DEFAULT_IMPL
    have = _BUILDERS[spec.name]
    if impl not in have:
        hint = " (bnlab.models registers the textbook one)" if impl == "textbook" else ""
        raise ValueError(
            f"norm layer {spec.name!r} has no {impl!r} implementation{hint}; "
            f"it has: {', '.join(i for i in IMPLEMENTATIONS if i in have)}"
        )
    return impl


def _keyword_names(target: Callable[..., Any]) -> list[str]:
    params = inspect.signature(target).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]


# Arguments the registry fills in itself (not settable through **kwargs).
_FIXED = {"num_features", "num_channels", "normalized_shape", "num_dims"}


def _check_kwargs(name: str, impl: str, dim: int, kwargs: dict[str, Any]) -> None:
    accepted = [k for k in _keyword_names(_TARGETS[name][impl](dim)) if k not in _FIXED]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        where = f"dim {dim}" if impl == DEFAULT_IMPL else f"dim {dim}, {impl}"
        raise TypeError(
            f"norm layer {name!r} ({where}) does not take {', '.join(unknown)}; "
            f"it takes: {', '.join(accepted)}"
        )


def _check_num_features(num_features: object) -> int:
    if not isinstance(num_features, int) or isinstance(num_features, bool):
        raise TypeError(
            f"num_features must be an int, got {num_features!r} of type {type(num_features).__name__}"
        )
    if num_features <= 0:
        raise ValueError(f"num_features must be positive, got {num_features}")
    return num_features


def _settle(
    name: str | NormSpec, dim: int | None, impl: str | None, kwargs: dict[str, Any]
) -> tuple[NormSpec, int, str]:
    """Resolve the name, then choose and check the dim, the implementation, the options."""
    spec = resolve_norm(name)
    if dim is None:
        dim = spec.dim if spec.dim is not None else _DEFAULT_DIM
    _check_dim(dim)
    if spec.name == NONE:
        if impl is not None or kwargs:
            options = sorted(kwargs) + (["impl"] if impl is not None else [])
            raise TypeError(
                f"norm 'none' is no layer and takes no options, got {', '.join(options)}"
            )
        return spec, dim, DEFAULT_IMPL
    impl = _check_impl(spec, impl)
    _check_kwargs(spec.name, impl, dim, kwargs)
    return spec, dim, impl


def _build(
    spec: NormSpec, dim: int, impl: str, num_features: int, kwargs: dict[str, Any]
) -> nn.Module:
    """The layer, from what ``_settle`` checked; only ``num_features`` is new here."""
    _check_num_features(num_features)
    if spec.name == NONE:
        return nn.Identity()
    return _BUILDERS[spec.name][impl](num_features, dim, **kwargs)


def create_norm(
    name: str | NormSpec,
    num_features: int,
    *,
    dim: int | None = None,
    impl: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the normalization layer ``name`` for ``num_features`` channels.

    Args:
        name: a norm name (see the module docstring; ``resolve_norm`` reads it).
        num_features: channels ``C`` (dim 1 of the input), a positive int.
        dim: spatial dims of the input: 0 ``(N, C)``, 1 ``(N, C, L)``, 2 ``(N, C, H, W)``,
            3 ``(N, C, D, H, W)``; None takes the name's (``"BatchNorm1d"``: 1) or 2.
        impl: ``"bnlab"``, ``"torch"`` or ``"textbook"``; None takes the name's or bnlab.
        **kwargs: the layer's own options (``eps``, ``momentum``, ``affine``, ...).

    Returns:
        A new layer in training mode (``nn.Identity`` for ``"none"``).

    Raises:
        ValueError: unknown name (the message lists the choices), bad ``dim``, an
            implementation the kind lacks, a ``num_features`` <= 0, or an option value
            the layer rejects.
        TypeError: ``num_features`` not an int, or an option the layer does not take
            (the message lists those it takes).
    """
    spec, dim, impl = _settle(name, dim, impl, kwargs)
    return _build(spec, dim, impl, num_features, kwargs)


@dataclass(frozen=True)
class NormLayerFactory:
    """A norm layer constructor for ``norm_layer=`` slots: ``factory(num_features)``.

    Made by ``get_norm_layer``, which has resolved and checked everything but the
    channel count.
    """

    spec: NormSpec
    dim: int
    impl: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __call__(self, num_features: int) -> nn.Module:
        return _build(self.spec, self.dim, self.impl, num_features, self.options)


def get_norm_layer(
    name: str | NormSpec | type[nn.Module] | Callable[..., nn.Module] | None,
    *,
    dim: int | None = None,
    impl: str | None = None,
    **kwargs: Any,
) -> Callable[[int], nn.Module] | None:
    """A constructor ``f(num_features) -> nn.Module`` for a ``norm_layer=`` argument.

    As timm's ``get_norm_layer``: a name is resolved (forgiving spellings, see
    ``resolve_norm``) and checked here, once, with its options; a class or a callable is
    passed through (bound to ``kwargs`` when there are any); None and ``"none"`` give
    None, the empty slot.

    Args:
        name: a norm name, a ``NormSpec``, a class, a callable, or None.
        dim: as in ``create_norm``.
        impl: as in ``create_norm``.
        **kwargs: options for every layer the constructor builds.

    Returns:
        The constructor, or None for no layer.

    Raises:
        ValueError: unknown name (the message lists the choices), bad ``dim``, an
            implementation the kind lacks.
        TypeError: an option the layer does not take; ``name`` of another type.

    Example::

        norm_layer = get_norm_layer("gn", num_groups=4)
        block = nn.Sequential(nn.Conv2d(3, 16, 3), norm_layer(16), nn.ReLU())
    """
    if name is None:
        return None
    if not isinstance(name, (str, NormSpec)):
        if not callable(name):
            raise TypeError(
                f"norm_layer must be a name, a class or a callable, got {type(name).__name__}"
            )
        if dim is not None or impl is not None:
            raise TypeError("dim= and impl= apply to norm names only, not to a class or callable")
        if not kwargs:
            return name
        bound: Callable[[int], nn.Module] = _Bound(name, dict(kwargs))
        return bound
    spec, dim, impl = _settle(name, dim, impl, kwargs)
    if spec.name == NONE:
        return None
    return NormLayerFactory(spec, dim, impl, dict(kwargs))


@dataclass(frozen=True)
class _Bound:
    """A class or callable with options bound: ``_Bound(cls, kwargs)(C) == cls(C, **kwargs)``."""

    func: Callable[..., nn.Module]
    options: dict[str, Any] = field(hash=False)

    def __call__(self, num_features: int) -> nn.Module:
        return self.func(num_features, **self.options)


def convert_norm(
    model: nn.Module,
    name: str | NormSpec,
    *,
    dim: int | None = None,
    impl: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A copy of ``model`` with every batch norm replaced by the layer ``name``.

    Replaced: layers whose exact type is a batch-norm kind (``torch.nn`` and ``bnlab.nn``
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, and the kinds other bnlab modules register:
    frozen, renorm, ghost, sync). Each becomes ``create_norm(name, C, dim=..., **kwargs)``
    with ``C`` its ``num_features`` and ``dim`` read from its class (``"none"`` replaces
    it with ``nn.Identity``).

    State: when the new layer is a batch-norm kind too (renorm, ghost, sync, frozen) and
    its ``state_dict`` entries are among the old one's with the same shapes, the learned
    affine and the running statistics carry over; group, layer and instance norms keep
    their own initialization (their affine follows a different normalization).
    ``BatchNorm1d`` takes ``(N, C)`` and ``(N, C, L)`` inputs and converts with ``dim``
    1: ``instancenorm`` then builds ``InstanceNorm1d``, which needs ``(N, C, L)``. Device,
    dtype and train/eval mode follow the replaced layer. ``model`` itself is not changed.

    Args:
        model: any module; a batch norm itself is converted and returned.
        name: a norm name (see ``resolve_norm``).
        dim: spatial dims for layers whose class does not imply them (``SyncBatchNorm``
            takes any rank); ignored for the others.
        impl: as in ``create_norm``.
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
    spec = resolve_norm(name)
    if dim is not None:
        _check_dim(dim)
    model = copy.deepcopy(model)
    replacements: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        if type(module) not in _BATCHNORM_DIMS:
            continue
        layer_dim = _BATCHNORM_DIMS[type(module)]
        if layer_dim is None:
            layer_dim = dim if dim is not None else spec.dim
        if layer_dim is None:
            raise ValueError(
                f"convert_norm: {path or '<model>'} is a {type(module).__name__}, which takes "
                "inputs of any rank; pass dim= (spatial dims of its input, 0 to 3)"
            )
        replacements[path] = _replacement(module, spec, layer_dim, impl, kwargs)
    for path, new in replacements.items():
        if path == "":
            return new
        model.set_submodule(path, new)
    return model


def _replacement(
    old: nn.Module, spec: NormSpec, dim: int, impl: str | None, kwargs: dict[str, Any]
) -> nn.Module:
    params = [*old.parameters(recurse=False), *old.buffers(recurse=False)]
    factory: dict[str, Any] = {}
    floating = [t for t in params if t.is_floating_point()]
    if spec.name != NONE and floating and "device" not in kwargs and "dtype" not in kwargs:
        factory = {"device": floating[0].device, "dtype": floating[0].dtype}
    new = create_norm(spec, int(old.num_features), dim=dim, impl=impl, **kwargs, **factory)
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


# The builders, one per kind, each over the classes of one implementation.


def _by_dim(classes: tuple[Callable[..., nn.Module], ...]) -> Callable[[int], Any]:
    """``target(dim)``: the class for ``dim`` from ``(1d, 2d, 3d)`` (dim 0 takes 1d)."""

    def target(dim: int) -> Callable[..., nn.Module]:
        return classes[max(dim - 1, 0)]

    return target


def register_norm_class(
    name: str,
    by_dim: Callable[[int], Callable[..., nn.Module]],
    *,
    impl: str = DEFAULT_IMPL,
    aliases: Sequence[str] = (),
    overwrite: bool = False,
) -> None:
    """Register a norm whose layer is a class called as ``cls(num_features, **options)``.

    "Add a norm" in one line: ``register_norm_class("rmsnorm", lambda dim: RMSNorm)``.
    ``by_dim(dim)`` returns the class for a spatial dim (see ``DIMS``); its keyword
    arguments are the options ``create_norm`` accepts. Otherwise as
    :func:`register_norm_layer` (same errors).
    """
    register_norm_layer(
        name, _builder(by_dim), by_dim, impl=impl, aliases=aliases, overwrite=overwrite
    )


def _builder(target: Callable[[int], Callable[..., nn.Module]]) -> NormBuilder:
    def build(num_features: int, dim: int, **kwargs: Any) -> nn.Module:
        return target(dim)(num_features, **kwargs)

    return build


def _layernorm_options(
    eps: float = 1e-5, affine: bool = True, bias: bool = True, device: Any = None, dtype: Any = None
) -> None:
    """The options ``create_norm("layernorm", ...)`` takes, uniform over dims."""


def _layernorm(layer_norm: type[nn.Module], group_norm: type[nn.Module]) -> NormBuilder:
    def build(num_features: int, dim: int, *, affine: bool = True, **kwargs: Any) -> nn.Module:
        if dim == 0:
            return layer_norm(num_features, elementwise_affine=affine, **kwargs)
        return group_norm(1, num_features, affine=affine, **kwargs)

    return build


def _groupnorm(group_norm: type[nn.Module]) -> NormBuilder:
    def build(
        num_features: int, dim: int, *, num_groups: int | None = None, **kwargs: Any
    ) -> nn.Module:
        if num_groups is None:
            num_groups = math.gcd(num_features, 32)
        return group_norm(num_groups, num_features, **kwargs)

    return build


def _instancenorm(classes: tuple[type[nn.Module], ...]) -> NormBuilder:
    def build(num_features: int, dim: int, **kwargs: Any) -> nn.Module:
        if dim == 0:
            raise ValueError(
                "instancenorm needs spatial dims (dim >= 1): an (N, C) input has one value per "
                "channel and sample, nothing to normalize over; use layernorm or batchnorm there"
            )
        return _by_dim(classes)(dim)(num_features, **kwargs)

    return build


def _frozen_target(dim: int) -> Callable[..., Any]:
    return FrozenBatchNorm2d if dim == 2 else FrozenBatchNorm1d


def _frozen(num_features: int, dim: int, **kwargs: Any) -> nn.Module:
    if dim == 3:
        raise ValueError(
            "frozen: there is no FrozenBatchNorm3d; freeze (N, C, D, H, W) layers by "
            "calling .eval() on a BatchNorm3d and setting requires_grad_(False)"
        )
    return _frozen_target(dim)(num_features, **kwargs)


_BN = (BatchNorm1d, BatchNorm2d, BatchNorm3d)
_TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IN = (InstanceNorm1d, InstanceNorm2d, InstanceNorm3d)
_TORCH_IN = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_RENORM = (BatchRenorm1d, BatchRenorm2d, BatchRenorm3d)
_GHOST = (GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d)

register_norm_layer("batchnorm", _builder(_by_dim(_BN)), _by_dim(_BN), aliases=("bn", "batch_norm"))
register_norm_layer("batchnorm", _builder(_by_dim(_TORCH_BN)), _by_dim(_TORCH_BN), impl="torch")
register_norm_layer(
    "layernorm", _layernorm(LayerNorm, GroupNorm), lambda dim: _layernorm_options, aliases=("ln",)
)
register_norm_layer(
    "layernorm",
    _layernorm(nn.LayerNorm, nn.GroupNorm),
    lambda dim: _layernorm_options,
    impl="torch",
)
register_norm_layer("groupnorm", _groupnorm(GroupNorm), lambda dim: GroupNorm, aliases=("gn",))
register_norm_layer("groupnorm", _groupnorm(nn.GroupNorm), lambda dim: nn.GroupNorm, impl="torch")
register_norm_layer(
    "instancenorm", _instancenorm(_IN), lambda dim: _by_dim(_IN)(dim), aliases=("in",)
)
register_norm_layer(
    "instancenorm", _instancenorm(_TORCH_IN), lambda dim: _by_dim(_TORCH_IN)(dim), impl="torch"
)
register_norm_layer(
    "frozen", _frozen, _frozen_target, aliases=("frozenbn", "frozenbatchnorm", "frozen_bn")
)
register_norm_layer(
    "batchrenorm",
    _builder(_by_dim(_RENORM)),
    _by_dim(_RENORM),
    aliases=("renorm", "brn", "batch_renorm"),
)
register_norm_layer(
    "ghost",
    _builder(_by_dim(_GHOST)),
    _by_dim(_GHOST),
    aliases=("ghostbn", "ghostbatchnorm", "gbn"),
)
register_norm_layer(
    "sync",
    lambda c, dim, **kw: SyncBatchNorm(c, **kw),
    lambda dim: SyncBatchNorm,
    aliases=("syncbn", "syncbatchnorm", "sync_bn"),
)
