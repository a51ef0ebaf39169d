"""``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d/2d/3d`` against their ``torch.nn`` twins.

A case table (constructor args + input shape + layout + ``desc``) drives the twin test:
the same ``state_dict`` is loaded ours -> torch and torch -> ours, both run a few train
steps with random parameters and ``grad_y`` and then an eval step, and outputs, input
grads, parameter grads and buffers must agree. Tolerances: float64 rtol = atol = 1e-10
(the implementations differ only in rounding); float32 rtol 1e-4, atol 1e-5 for outputs
and buffers, atol 1e-4 for grads (parameter grads are sums over up to 240 values).
Then float64 gradcheck of every module (train and eval), extra_repr, the equivalences
GroupNorm(1) == LayerNorm over (C, H, W) and GroupNorm(C) == InstanceNorm2d, 16-bit
inputs, and one test per error message.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import bnlab.nn

TOL = {
    torch.float64: {"out": (1e-10, 1e-10), "grad": (1e-10, 1e-10)},
    torch.float32: {"out": (1e-4, 1e-5), "grad": (1e-4, 1e-4)},
}
TRAIN_STEPS = 3


@dataclass(frozen=True)
class Case:
    cls: str
    args: tuple[Any, ...]
    shape: tuple[int, ...]
    desc: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    layout: str = "contiguous"  # or "channels_last", "permuted"

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.desc}"

    def ours(self, **extra: Any) -> nn.Module:
        return getattr(bnlab.nn, self.cls)(*self.args, **self.kwargs, **extra)

    def theirs(self, **extra: Any) -> nn.Module:
        return getattr(nn, self.cls)(*self.args, **self.kwargs, **extra)


CASES = [
    Case("LayerNorm", (5,), (4, 5), "last_dim"),
    Case("LayerNorm", ((3, 5, 6),), (4, 3, 5, 6), "chw"),
    Case("LayerNorm", ((5, 6),), (2, 4, 5, 6), "hw_of_4d"),
    Case("LayerNorm", ((5, 6),), (4, 3, 5, 6), "no_affine", {"elementwise_affine": False}),
    Case("LayerNorm", (6,), (4, 3, 6), "bias_off", {"bias": False}),
    Case("LayerNorm", ((5, 6),), (4, 3, 5, 6), "permuted", layout="permuted"),
    Case("LayerNorm", (6,), (4, 3, 6), "eps_0.1", {"eps": 0.1}),
    Case("GroupNorm", (2, 4), (3, 4, 5, 6), "2_groups"),
    Case("GroupNorm", (1, 4), (3, 4, 5), "1_group"),
    Case("GroupNorm", (4, 4), (3, 4, 5, 6), "group_per_channel"),
    Case("GroupNorm", (2, 8), (3, 8), "2d_input"),
    Case("GroupNorm", (2, 4), (2, 4, 3, 4, 5), "5d_input"),
    Case("GroupNorm", (2, 4), (3, 4, 5, 6), "affine_off", {"affine": False}),
    Case("GroupNorm", (2, 4), (3, 4, 5, 6), "bias_off", {"bias": False}),
    Case("GroupNorm", (2, 4), (3, 4, 5, 6), "channels_last", layout="channels_last"),
    Case("InstanceNorm1d", (3,), (4, 3, 7), "default"),
    Case("InstanceNorm1d", (3,), (3, 7), "unbatched", {"affine": True}),
    Case("InstanceNorm1d", (3,), (4, 3, 7), "tracked", {"track_running_stats": True}),
    Case("InstanceNorm2d", (3,), (4, 3, 5, 6), "affine", {"affine": True}),
    Case(
        "InstanceNorm2d",
        (3,),
        (4, 3, 5, 6),
        "affine_tracked",
        {"affine": True, "track_running_stats": True},
    ),
    Case(
        "InstanceNorm2d",
        (3,),
        (4, 3, 5, 6),
        "tracked_momentum_0.3_eps_0.1",
        {"track_running_stats": True, "momentum": 0.3, "eps": 0.1},
    ),
    Case(
        "InstanceNorm2d",
        (3,),
        (4, 3, 5, 6),
        "tracked_momentum_none",
        {"track_running_stats": True, "momentum": None},
    ),
    Case("InstanceNorm2d", (3,), (4, 3, 5, 6), "bias_off", {"affine": True, "bias": False}),
    Case(
        "InstanceNorm2d",
        (3,),
        (4, 3, 5, 6),
        "channels_last",
        {"affine": True, "track_running_stats": True},
        layout="channels_last",
    ),
    Case("InstanceNorm2d", (3,), (3, 5, 6), "unbatched_tracked", {"track_running_stats": True}),
    Case(
        "InstanceNorm3d",
        (2,),
        (3, 2, 3, 4, 5),
        "affine_tracked",
        {"affine": True, "track_running_stats": True},
    ),
]


def _input(case: Case, dtype: torch.dtype, gen: torch.Generator):
    """``(leaf, view)``: ``view(leaf)`` has ``case.shape`` and ``case.layout``."""
    shape = case.shape

    def randn(*size: int) -> torch.Tensor:
        return (torch.randn(size, generator=gen, dtype=torch.float64) * 2 + 1).to(dtype)

    if case.layout == "channels_last":
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        return randn(*shape).contiguous(memory_format=fmt), lambda t: t
    if case.layout == "permuted":
        order = tuple(reversed(range(len(shape))))
        return randn(*reversed(shape)), lambda t: t.permute(order)
    return randn(*shape), lambda t: t


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=gen, dtype=torch.float64) + 0.5
                if name.endswith("bias") or name.endswith("running_mean"):
                    values = values - 1.0
                t.copy_(values.to(t.dtype))


def _close(actual, expected, tol, what):
    rtol, atol = tol
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _compare_state(ours, theirs, tol, when):
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd), when
    for key in ours_sd:
        if key.endswith("num_batches_tracked"):
            # Exact by construction: an int64 count of train steps, no float arithmetic.
            assert torch.equal(ours_sd[key], theirs_sd[key]), f"{when}: {key}"
        else:
            _close(ours_sd[key], theirs_sd[key], tol, f"{when}: {key}")


def _step(module, leaf, view, grad_y):
    leaf = leaf.detach().clone().requires_grad_()
    for p in module.parameters():
        p.grad = None
    y = module(view(leaf))
    y.backward(grad_y)
    return y, leaf.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("source", ["ours_to_torch", "torch_to_ours"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_torch_twin(case: Case, dtype: torch.dtype, source: str) -> None:
    gen = torch.Generator().manual_seed(7)
    tol = TOL[dtype]
    ours, theirs = case.ours(dtype=dtype), case.theirs(dtype=dtype)
    src, dst = (ours, theirs) if source == "ours_to_torch" else (theirs, ours)
    _randomize(src, gen)
    dst.load_state_dict(src.state_dict())
    _compare_state(ours, theirs, tol["out"], "after load")
    for step in range(TRAIN_STEPS + 1):
        if step == TRAIN_STEPS:
            ours.eval()
            theirs.eval()
        leaf, view = _input(case, dtype, gen)
        grad_y = torch.randn(case.shape, generator=gen, dtype=torch.float64).to(dtype)
        y_ours, gx_ours, gp_ours = _step(ours, leaf, view, grad_y)
        y_theirs, gx_theirs, gp_theirs = _step(theirs, leaf, view, grad_y)
        when = f"step {step} ({'eval' if step == TRAIN_STEPS else 'train'})"
        assert y_ours.dtype == y_theirs.dtype
        _close(y_ours, y_theirs, tol["out"], f"{when}: output")
        _close(gx_ours, gx_theirs, tol["grad"], f"{when}: grad_x")
        assert gp_ours.keys() == gp_theirs.keys()
        for name in gp_ours:
            _close(gp_ours[name], gp_theirs[name], tol["grad"], f"{when}: grad {name}")
        _compare_state(ours, theirs, tol["out"], when)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_extra_repr_and_state_dict_keys_match_torch(case: Case) -> None:
    ours, theirs = case.ours(), case.theirs()
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


@pytest.mark.parametrize(
    "cls", ["LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]
)
def test_constructor_signature_matches_torch(cls: str) -> None:
    ours = inspect.signature(getattr(bnlab.nn, cls).__init__).parameters
    theirs = inspect.signature(getattr(nn, cls).__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


@pytest.mark.parametrize("kwargs", [{}, {"affine": True, "track_running_stats": True}])
def test_instancenorm_defaults_and_checks(kwargs: dict[str, Any]) -> None:
    """torch's constructor (its defaults), then bnlab's _NormBase checks."""
    ours, theirs = bnlab.nn.InstanceNorm2d(3, **kwargs), nn.InstanceNorm2d(3, **kwargs)
    for name in ["eps", "momentum", "affine", "track_running_stats"]:
        assert getattr(ours, name) == getattr(theirs, name), name
    with pytest.raises(ValueError, match=r"^InstanceNorm2d: eps must be > 0"):
        bnlab.nn.InstanceNorm2d(3, eps=0.0, **kwargs)


GRADCHECK = [(c, "train") for c in CASES] + [
    (c, "eval") for c in CASES if c.kwargs.get("track_running_stats")
]  # eval differs from train only with running statistics


@pytest.mark.parametrize(("case", "mode"), GRADCHECK, ids=[f"{c.id}-{m}" for c, m in GRADCHECK])
def test_gradcheck_float64(case: Case, mode: str) -> None:
    gen = torch.Generator().manual_seed(3)
    module = case.ours(dtype=torch.float64)
    _randomize(module, gen)
    module.train(mode == "train")
    leaf, view = _input(case, torch.float64, gen)
    leaf.requires_grad_()
    params = tuple(module.parameters())
    names = [n for n, _ in module.named_parameters()]
    buffers = {k: v.clone() for k, v in module.state_dict().items() if k not in names}

    def fn(x, *ps):
        # Restore the buffers: every call would otherwise move the running statistics.
        with torch.no_grad():
            for k, v in module.state_dict().items():
                if k in buffers:
                    v.copy_(buffers[k])
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (view(x),))

    # fast_mode checks random projections of the Jacobian (cheap on these inputs); the
    # full Jacobian is checked on small inputs in test_gradcheck_float64_full_jacobian.
    assert torch.autograd.gradcheck(fn, (leaf, *params), fast_mode=True)


SMALL = [
    Case("LayerNorm", ((2, 3),), (2, 2, 3), "small"),
    Case("GroupNorm", (2, 4), (2, 4, 3), "small"),
    Case("InstanceNorm1d", (2,), (2, 2, 4), "small", {"affine": True}),
    Case("InstanceNorm2d", (2,), (2, 2, 2, 3), "small", {"affine": True}),
    Case("InstanceNorm3d", (2,), (2, 2, 2, 1, 2), "small", {"affine": True}),
]


@pytest.mark.parametrize("case", SMALL, ids=[c.id for c in SMALL])
def test_gradcheck_float64_full_jacobian(case: Case) -> None:
    gen = torch.Generator().manual_seed(4)
    module = case.ours(dtype=torch.float64)
    _randomize(module, gen)
    x = (torch.randn(case.shape, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()
    names = [n for n, _ in module.named_parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *module.parameters()))
    assert torch.autograd.gradgradcheck(fn, (x, *module.parameters()))


def test_groupnorm_one_group_equals_layernorm_over_chw() -> None:
    x = torch.randn(4, 6, 5, 3, dtype=torch.float64) * 3 + 2
    gn = bnlab.nn.GroupNorm(1, 6, affine=False)
    ln = bnlab.nn.LayerNorm((6, 5, 3), elementwise_affine=False)
    torch.testing.assert_close(gn(x), ln(x), rtol=1e-12, atol=1e-12)


def test_groupnorm_per_channel_equals_instancenorm2d() -> None:
    x = torch.randn(4, 6, 5, 3, dtype=torch.float64) * 3 + 2
    gn = bnlab.nn.GroupNorm(6, 6, affine=False)
    inorm = bnlab.nn.InstanceNorm2d(6)
    torch.testing.assert_close(gn(x), inorm(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.layout == "contiguous" and not c.desc.startswith("unbatched")],
    ids=lambda c: c.id,
)
def test_16bit_inputs_match_float32(case: Case, dtype: torch.dtype) -> None:
    """16-bit inputs are normalized in float32: the output is the float32 output, rounded."""
    gen = torch.Generator().manual_seed(5)
    x32 = torch.randn(case.shape, generator=gen) * 2 + 1
    x = x32.to(dtype)
    reference = case.ours()
    module = case.ours()
    y = module(x)
    expected = reference(x.float())
    assert y.dtype == dtype
    resolution = 2.0**-10 if dtype == torch.float16 else 2.0**-7
    torch.testing.assert_close(y.float(), expected, rtol=2 * resolution, atol=2 * resolution)
    for name in ("running_mean", "running_var"):
        if getattr(module, name, None) is not None:
            torch.testing.assert_close(getattr(module, name), getattr(reference, name))


@pytest.mark.parametrize(
    "module", [bnlab.nn.LayerNorm(6), bnlab.nn.GroupNorm(2, 6), bnlab.nn.InstanceNorm1d(6)]
)
def test_large_offset_float32_normalizes_like_the_noise(module: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 6, 6, generator=gen, dtype=torch.float64)
    x = (1e4 + 1e-3 * noise).float()
    # The float32 input itself is rounded (steps of 2**-10 near 1e4): compare with the
    # float64 normalization of the rounded input, not of the noise.
    expected = module.double()(x.double()).float()
    y = module.float()(x)
    assert (y - expected).abs().max() < 1e-3


# ---------------------------------------------------------------------------- errors

ERRORS = [
    (
        lambda: bnlab.nn.GroupNorm(4, 6),
        ValueError,
        "GroupNorm: num_channels (6) must be divisible by num_groups (4); "
        "choose num_groups among the divisors of 6",
    ),
    (
        lambda: bnlab.nn.GroupNorm(0, 6),
        ValueError,
        "GroupNorm: num_groups must be an int > 0, got 0",
    ),
    (
        lambda: bnlab.nn.LayerNorm(()),
        ValueError,
        "LayerNorm: normalized_shape must be a non-empty sequence of ints > 0 (the trailing "
        "dims to normalize), got ()",
    ),
    (
        lambda: bnlab.nn.LayerNorm((3, 4))(torch.randn(2, 4, 3)),
        ValueError,
        "LayerNorm: normalized_shape=[3, 4] must equal the trailing dims of the input, got "
        "input of shape (2, 4, 3); expected an input of shape (*, 3, 4)",
    ),
    (
        lambda: bnlab.nn.LayerNorm(4)(torch.ones(2, 4, dtype=torch.long)),
        TypeError,
        "LayerNorm: expected a floating-point input (float16, bfloat16, float32 or float64), "
        "got dtype torch.int64; convert it first, for example with x.float()",
    ),
    (
        lambda: bnlab.nn.LayerNorm(4, eps=0.0),
        ValueError,
        "LayerNorm: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got 0.0",
    ),
    (
        lambda: bnlab.nn.GroupNorm(2, 4)(torch.randn(2, 6, 3)),
        ValueError,
        "GroupNorm: expected 4 channels in dim 1, got 6 (input of shape (2, 6, 3)); the layer "
        "was built with num_channels=4",
    ),
    (
        lambda: bnlab.nn.GroupNorm(2, 4)(torch.randn(4)),
        ValueError,
        "GroupNorm: expected an input of shape (N, C, *) with at least 2 dims, got 1D input "
        "of shape (4,)",
    ),
    (
        lambda: bnlab.nn.GroupNorm(2, 4)(torch.ones(2, 4, 3, dtype=torch.int32)),
        TypeError,
        "GroupNorm: expected a floating-point input (float16, bfloat16, float32 or float64), "
        "got dtype torch.int32; convert it first, for example with x.float()",
    ),
    (
        lambda: bnlab.nn.InstanceNorm2d(3)(torch.randn(2, 3, 4, 5, 6)),
        ValueError,
        "InstanceNorm2d: expected 3D (unbatched) or 4D input (N, C, H, W) or (C, H, W), got "
        "5D input of shape (2, 3, 4, 5, 6)",
    ),
    (
        lambda: bnlab.nn.InstanceNorm1d(3, affine=True)(torch.randn(2, 4, 5)),
        ValueError,
        "InstanceNorm1d: expected 3 channels in dim 1, got 4 (input of shape (2, 4, 5)); the "
        "layer was built with num_features=3",
    ),
    (
        lambda: bnlab.nn.InstanceNorm1d(3)(torch.ones(2, 3, 5, dtype=torch.long)),
        TypeError,
        "InstanceNorm1d: expected a floating-point input (float16, bfloat16, float32 or "
        "float64), got dtype torch.int64; convert it first, for example with x.float()",
    ),
    (
        lambda: bnlab.nn.InstanceNorm1d(3)(torch.randn(2, 3, 1)),
        ValueError,
        "InstanceNorm1d: expected more than 1 spatial element per instance when using input "
        "statistics, got input of shape (2, 3, 1); feed it larger feature maps (resize the "
        "images) or use another norm there",
    ),
]


@pytest.mark.parametrize(("make", "error", "message"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_error_messages(make, error, message) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        make()


def test_instancenorm_channel_mismatch_without_affine_warns_like_torch() -> None:
    x = torch.randn(2, 4, 5)
    with pytest.warns(UserWarning, match=r"input's size at dim=1 \(4\) does not match"):
        y = bnlab.nn.InstanceNorm1d(3)(x)
    torch.testing.assert_close(y, nn.InstanceNorm1d(4)(x))


def test_instancenorm_rejects_stale_running_stats_like_torch() -> None:
    """A pre-0.4 checkpoint (no version) with running stats for an untracked layer."""
    state = nn.InstanceNorm2d(3, track_running_stats=True).state_dict()
    del state._metadata  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match=r'Unexpected running stats buffer\(s\) "running_mean"'):
        bnlab.nn.InstanceNorm2d(3).load_state_dict(state)
