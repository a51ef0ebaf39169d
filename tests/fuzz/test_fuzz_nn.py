"""Fuzz every public layer of ``bnlab.nn`` against its torch twin or a float64 reference.

hypothesis draws the layer's arguments (valid and invalid ``num_features``, ``eps``,
``momentum``, ``affine``, ``track_running_stats``), its state (random weights and running
statistics), the mode, and an input of random rank, shape (zero-sized dims included),
dtype (half, float, double, integer, bool, complex), memory layout (sliced, permuted,
channels_last, expanded) and values (NaN, inf, huge, offset, tiny scale). The contract
is in ``_fuzz``: equal to the reference in value, dtype and shape (NaN where it has NaN),
the same running statistics afterwards, and the same input gradient; or a documented
error that names the layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _fuzz
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import bnlab.nn as bnn


class _AnyRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch's batch norm without the rank check: the twin of SyncBatchNorm on one process."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


class _TorchFrozen(nn.Module):
    """FrozenBatchNorm's twin: torch batch norm in eval mode with fixed statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, value in (
            ("weight", torch.ones(num_features)),
            ("bias", torch.zeros(num_features)),
            ("running_mean", torch.zeros(num_features)),
            ("running_var", torch.ones(num_features)),
        ):
            self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


@dataclass(frozen=True)
class Layer:
    name: str
    build: Callable[[int, dict[str, Any]], nn.Module]
    twin: Callable[[int, dict[str, Any]], nn.Module] | None
    ranks: tuple[int, ...]
    # Which of eps / momentum / affine / track_running_stats the layer takes.
    args: tuple[str, ...]
    # The functional entry point it calls (its errors name that function).
    functional: str = "batch_norm"
    channel_dim: int = 1


BN_ARGS = ("eps", "momentum", "affine", "track_running_stats")


def _bn(
    cls: type,
    twin: type | None,
    ranks: tuple[int, ...],
    functional: str = "batch_norm",
    **extra: Any,
) -> Layer:
    return Layer(
        cls.__name__,
        lambda c, kw: cls(c, **kw, **extra),
        (lambda c, kw: twin(c, **kw)) if twin is not None else None,
        ranks,
        BN_ARGS,
        functional,
    )


def _renorm(cls: type, ranks: tuple[int, ...]) -> Layer:
    return Layer(
        cls.__name__, lambda c, kw: cls(c, **kw), None, ranks, ("eps", "momentum", "affine")
    )


def _elementwise(kw: dict[str, Any]) -> dict[str, Any]:
    return {"elementwise_affine" if k == "affine" else k: v for k, v in kw.items()}


LAYERS = [
    _bn(bnn.BatchNorm1d, nn.BatchNorm1d, (2, 3)),
    _bn(bnn.BatchNorm2d, nn.BatchNorm2d, (4,)),
    _bn(bnn.BatchNorm3d, nn.BatchNorm3d, (5,)),
    _bn(bnn.SyncBatchNorm, _AnyRankBatchNorm, (2, 3, 4, 5)),
    _renorm(bnn.BatchRenorm1d, (2, 3)),
    _renorm(bnn.BatchRenorm2d, (4,)),
    _renorm(bnn.BatchRenorm3d, (5,)),
    _bn(bnn.GhostBatchNorm1d, None, (2, 3), virtual_batch_size=2),
    _bn(bnn.GhostBatchNorm2d, None, (4,), virtual_batch_size=3),
    _bn(bnn.GhostBatchNorm3d, None, (5,), virtual_batch_size=2),
    _bn(bnn.InstanceNorm1d, nn.InstanceNorm1d, functional="instance_norm", ranks=(2, 3)),
    _bn(bnn.InstanceNorm2d, nn.InstanceNorm2d, functional="instance_norm", ranks=(3, 4)),
    _bn(bnn.InstanceNorm3d, nn.InstanceNorm3d, functional="instance_norm", ranks=(4, 5)),
    Layer(
        "GroupNorm",
        lambda c, kw: bnn.GroupNorm(1 if c % 2 else 2, c, **kw),
        lambda c, kw: nn.GroupNorm(1 if c % 2 else 2, c, **kw),
        (2, 3, 4, 5),
        ("eps", "affine"),
        "group_norm",
    ),
    Layer(
        "LayerNorm",
        lambda c, kw: bnn.LayerNorm(c, **_elementwise(kw)),
        lambda c, kw: nn.LayerNorm(c, **_elementwise(kw)),
        (1, 2, 3, 4),
        ("eps", "affine"),
        "layer_norm",
        channel_dim=-1,
    ),
    Layer(
        "FrozenBatchNorm1d",
        lambda c, kw: bnn.FrozenBatchNorm1d(c, **kw),
        lambda c, kw: _TorchFrozen(c, **kw),
        (2, 3),
        ("eps",),
    ),
    Layer(
        "FrozenBatchNorm2d",
        lambda c, kw: bnn.FrozenBatchNorm2d(c, **kw),
        lambda c, kw: _TorchFrozen(c, **kw),
        (4,),
        ("eps",),
    ),
]

GOOD_EPS = (1e-5, 1e-3, 0.1)
BAD_EPS = (0.0, -1e-5, float("nan"), float("inf"))
GOOD_MOMENTUM = (0.1, None, 0.0, 1.0, 0.5)
BAD_MOMENTUM = (1.5, -0.1, float("nan"))


@st.composite
def layer_kwargs(draw: st.DrawFn, layer: Layer) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    bad = draw(st.integers(0, 9)) == 9
    if "eps" in layer.args:
        kw["eps"] = draw(st.sampled_from(BAD_EPS if bad else GOOD_EPS))
    if "momentum" in layer.args:
        kw["momentum"] = draw(st.sampled_from(BAD_MOMENTUM if bad else GOOD_MOMENTUM))
    if "affine" in layer.args:
        kw["affine"] = draw(st.booleans())
    if "track_running_stats" in layer.args:
        kw["track_running_stats"] = draw(st.booleans())
    return kw


def _randomize(module: nn.Module, seed: int) -> None:
    """Random weights and statistics (running_var > 0), so that eval mode means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                t.fill_(int(torch.randint(0, 50, (), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64))


def _reference(layer: Layer, module: nn.Module, channels: int, kw: dict[str, Any]) -> nn.Module:
    """The float64 reference: the torch twin holding the same state, else the layer itself."""
    if layer.twin is None:
        return copy.deepcopy(module).double()
    ref = layer.twin(channels, kw).double()
    state = {k: v for k, v in module.state_dict().items()}
    _missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    ref.train(module.training)
    return ref


@pytest.mark.parametrize("layer", LAYERS, ids=[layer.name for layer in LAYERS])
@given(data=st.data())
def test_layer_fuzz(layer: Layer, data: st.DataObject) -> None:
    channels = data.draw(st.integers(1, 4), label="channels")
    kw = data.draw(layer_kwargs(layer), label="kwargs")
    target = f"nn.{layer.name}"
    try:
        module = layer.build(channels, kw)
    except Exception as exc:
        _fuzz.check_refusal(exc, (layer.name,))
        _fuzz.record(target, "refused")
        return
    _randomize(module, data.draw(st.integers(0, 2**16), label="state_seed"))
    module.train(data.draw(st.booleans(), label="training"))
    x, info = data.draw(
        _fuzz.input_tensors(ranks=layer.ranks, channels=channels, channel_dim=layer.channel_dim),
        label="input",
    )
    names = (layer.name, layer.functional)
    ref = _reference(layer, module, channels, kw)
    needs_grad = x.dtype in (torch.float32, torch.float64) and x.numel() > 0
    x_in = x.detach().clone().requires_grad_(True) if needs_grad else x
    try:
        y = module(x_in)
    except Exception as exc:
        _fuzz.check_refusal(exc, names)
        _fuzz.record(target, "refused")
        return
    # bnlab accepted the input: the reference must accept it too and agree.
    x_ref = x.detach().double().contiguous().requires_grad_(needs_grad)
    try:
        y_ref = ref(x_ref)
    except (ValueError, RuntimeError, IndexError):
        # torch refuses some inputs bnlab defines (GroupNorm/InstanceNorm over one value:
        # mean = x, var = 0, output = bias; torch's InstanceNorm in eval mode fails on an
        # empty batch with an IndexError); compare with bnlab's own float64 result.
        ref = copy.deepcopy(module).double()
        y_ref = ref(x_ref)
    params = [p.dtype for p in module.parameters()] or [torch.float64]
    # A float64 input through float32 parameters is only as exact as float32.
    low = x.dtype if _fuzz.TOL[x.dtype] >= _fuzz.TOL[params[0]] else params[0]
    assert y.dtype == x.dtype, f"output dtype {y.dtype} for input dtype {x.dtype}"
    _fuzz.assert_close_ref(y, y_ref, low, f"{layer.name} output ({info})")
    # An empty batch leaves bnlab's running statistics as they were (documented); torch's
    # InstanceNorm averages zero instances into NaN. Compared on non-empty batches only.
    buffers = list(module.named_buffers()) if x.numel() else []
    for name, buf in buffers:
        ref_buf = dict(ref.named_buffers()).get(name)
        if ref_buf is not None and buf.is_floating_point():
            # The statistics are kept in the buffer's dtype, from an input in x's dtype.
            low_buf = low if _fuzz.TOL[low] > _fuzz.TOL[buf.dtype] else buf.dtype
            _fuzz.assert_close_ref(buf, ref_buf, low_buf, f"{layer.name} {name} ({info})")
    if needs_grad and torch.isfinite(y_ref).all():
        w = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad((y * w.to(y.dtype)).sum(), x_in)
        (grad_ref,) = torch.autograd.grad((y_ref * w).sum(), x_ref)
        rtol = 1e-3 if low == torch.float32 else 1e-7
        torch.testing.assert_close(grad.double(), grad_ref, rtol=rtol, atol=rtol, equal_nan=True)
    _fuzz.record(target, "ok")
