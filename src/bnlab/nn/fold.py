"""Fold eval-mode batch norm into the convolution or linear layer that feeds it.

In eval mode a batch norm with running statistics is a fixed per-channel affine map,
``y = (z - running_mean) * s + bias`` with ``s = weight / sqrt(running_var + eps)``.
When ``z = W x + c`` comes straight from a Conv1d/2d/3d or Linear, the pair is one
layer with ``W' = W * s`` (per output channel) and ``c' = (c - running_mean) * s +
bias``; the batch norm becomes ``nn.Identity``. (Ioffe & Szegedy, "Batch
Normalization", arXiv 1502.03167, section 3.2: "the BN transform ... can be merged
with the linear transformation".) Grouped and depthwise convolutions and every padding
mode fold the same way: the map acts on output channels only.

How "feeds it" is decided:
    1. The model is traced with ``torch.fx`` (batch norms, convolutions and linear
       layers as leaves, so nothing inside them is traced). A batch norm folds when
       its only input is the output of a Conv/Linear call, that output goes nowhere
       else, and both modules are called exactly once in ``forward``.
    2. When tracing fails (data-dependent control flow, for example), only consecutive
       children of ``nn.Sequential`` containers (whose ``forward`` is Sequential's own)
       are paired, and only modules registered once in the model are folded.
A Linear is assumed to produce ``(N, out_features)`` (its output channel is dim 1, as
BatchNorm1d expects); a Linear applied to ``(N, C, L)`` inputs followed by a
BatchNorm1d normalizing dim 1 is not a case this module can tell apart.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["FoldResult", "fold_batchnorm"]

# Exact types: a subclass may change what forward computes.
_BATCHNORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
)
_PRODUCERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class FoldResult:
    """What :func:`fold_batchnorm` returns.

    Attributes:
        model: the folded copy, in eval mode.
        folded: names of the batch norms folded (now ``nn.Identity``), in model order.
        skipped: batch norm name -> why it was left in place.
        fed_by: folded batch norm name -> name of the layer it was folded into.
        method: ``"fx"`` (the graph was traced) or ``"sequential"`` (the fallback).
    """

    model: nn.Module
    folded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    fed_by: dict[str, str] = field(default_factory=dict)
    method: str = "fx"


def _is_bn(module: nn.Module) -> bool:
    return type(module) in _BATCHNORMS


def _is_producer(module: nn.Module) -> bool:
    cls = type(module)
    if parametrize.is_parametrized(module):
        # torch.nn.utils.parametrize swaps in a subclass of the original class.
        cls = cls.__bases__[0]
    return cls in _PRODUCERS


class _LeafTracer(fx.Tracer):
    """Tracer that keeps batch norms (bnlab's too) and producers as single calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_bn(m) or _is_producer(m) or super().is_leaf_module(m, module_qualified_name)


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _pair_problem(bn_name: str, bn: nn.Module, prod_name: str, prod: nn.Module) -> str | None:
    """Why ``prod`` cannot absorb ``bn`` (module properties only), or None."""
    if _out_channels(prod) != bn.num_features:
        return (
            f"fed by {prod_name!r} with {_out_channels(prod)} output channels, but "
            f"{bn_name!r} has num_features={bn.num_features}"
        )
    if isinstance(prod, nn.Linear) and type(bn) not in (nn.BatchNorm1d, BatchNorm1d):
        return f"a Linear ({prod_name!r}) feeding a {type(bn).__name__} is not folded"
    if parametrize.is_parametrized(prod):
        return f"{prod_name!r} has a parametrized weight (e.g. spectral norm); not folded"
    return None


def _fx_problem(node: fx.Node, calls: Counter[str], modules: dict[str, nn.Module]) -> str | None:
    """Why the batch norm called at ``node`` cannot be folded into the call that feeds
    it (graph properties only), or None: then ``node.args[0]`` calls its producer."""
    name = str(node.target)
    if calls[name] != 1:
        return f"called {calls[name]} times in forward; folding would change every call"
    source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    if not (
        isinstance(source, fx.Node)
        and source.op == "call_module"
        and _is_producer(modules[str(source.target)])
    ):
        what = "several inputs" if source is None else f"{source.op} {source.target}"
        return f"not fed directly by a Conv1d/2d/3d or Linear (input: {what})"
    prod_name = str(source.target)
    if calls[prod_name] != 1:
        return f"fed by {prod_name!r}, which is called {calls[prod_name]} times in forward"
    users = [str(u.name) for u in source.users if u is not node]
    if users:
        return (
            f"the output of {prod_name!r} is also used by {', '.join(users)}; "
            f"folding would change what they see"
        )
    return None


def _pairs_fx(model: nn.Module, bns: dict[str, nn.Module]) -> tuple[dict[str, str], dict[str, str]]:
    """Trace ``model``; return (bn name -> producer name, bn name -> reason skipped)."""
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in bns:
            continue
        problem = _fx_problem(node, calls, modules)
        if problem is None:
            pairs[str(node.target)] = str(node.args[0].target)
        else:
            skipped[str(node.target)] = problem
    for name in bns:
        if name not in pairs and name not in skipped:
            skipped[name] = "not called in the traced forward"
    return pairs, skipped


def _pairs_sequential(
    model: nn.Module, bns: dict[str, nn.Module], why: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Pair each batch norm with the Sequential child right before it."""
    registrations = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs: dict[str, str] = {}
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        children = list(seq.named_children())
        for (prev_name, prev), (child_name, child) in itertools.pairwise(children):
            name = f"{seq_name}.{child_name}" if seq_name else child_name
            if name not in bns or not _is_producer(prev):
                continue
            if registrations[id(prev)] == 1 and registrations[id(child)] == 1:
                pairs[name] = f"{seq_name}.{prev_name}" if seq_name else prev_name
    skipped = {
        name: (
            f"torch.fx could not trace the model ({why}); outside a Sequential, right after "
            f"a Conv1d/2d/3d or Linear registered once, the layer feeding it is unknown"
        )
        for name in bns
        if name not in pairs
    }
    return pairs, skipped


@torch.no_grad()
def _fold_into(prod: nn.Module, bn: nn.Module) -> None:
    """Absorb ``bn``'s eval-mode map into ``prod``'s weight and bias (in float64)."""
    weight = prod.weight
    acc = torch.float64
    scale = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(acc)
    shift = -bn.running_mean.to(acc) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(acc)
    if prod.bias is not None:
        shift = shift + prod.bias.to(acc) * scale
    # weight: (C_out, ...) -> scale each output channel.
    view = (-1,) + (1,) * (weight.dim() - 1)
    weight.copy_((weight.to(acc) * scale.view(view)).to(weight.dtype))
    if prod.bias is None:
        prod.bias = nn.Parameter(
            shift.to(device=weight.device, dtype=weight.dtype),
            requires_grad=weight.requires_grad,
        )
    else:
        prod.bias.copy_(shift.to(prod.bias.dtype))


def fold_batchnorm(model: nn.Module) -> FoldResult:
    """Fold each eval-mode batch norm into the Conv/Linear that directly feeds it.

    Works on a deep copy in eval mode; ``model`` is not changed. Candidates are
    modules whose type is exactly ``torch.nn`` or ``bnlab.nn`` ``BatchNorm1d/2d/3d``.
    Folded ones become ``nn.Identity`` and their producer gets the combined weight and
    bias (a bias is added when it had none). The rest stay and are reported: batch
    norms without running statistics (``track_running_stats=False``: batch statistics
    in eval too, not a fixed map), not fed by a Conv1d/2d/3d or Linear, fed by a layer
    whose output is also used elsewhere or that is called more than once, or with a
    channel-count mismatch. How the feeding layer is found: see the module docstring.
    The folded model's eval outputs equal the original's up to rounding.

    Args:
        model: any module.

    Returns:
        :class:`FoldResult` with the folded copy and the report.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm: expected an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    result = FoldResult(model=model)
    bns: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not _is_bn(module):
            continue
        if module.running_mean is None or module.running_var is None:
            result.skipped[name or "<model>"] = (
                "track_running_stats=False: it normalizes with batch statistics in eval "
                "mode too, which is not a fixed affine map"
            )
        elif name == "":
            result.skipped["<model>"] = "the model itself is a batch norm; nothing feeds it"
        else:
            bns[name] = module
    if bns:
        try:
            pairs, skipped = _pairs_fx(model, bns)
        except Exception as error:  # any tracing failure: fall back to Sequential pairs
            why = f"{type(error).__name__}: {error}".splitlines()[0]
            result.method = "sequential"
            pairs, skipped = _pairs_sequential(model, bns, why)
        modules = dict(model.named_modules())
        for name, prod_name in pairs.items():
            problem = _pair_problem(name, bns[name], prod_name, modules[prod_name])
            if problem is not None:
                skipped[name] = problem
        for name in bns:  # model order
            if name in skipped:
                result.skipped[name] = skipped[name]
                continue
            prod_name = pairs[name]
            _fold_into(modules[prod_name], bns[name])
            model.set_submodule(name, nn.Identity())
            result.folded.append(name)
            result.fed_by[name] = prod_name
    return result
