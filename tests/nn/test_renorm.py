"""``bnlab.nn.BatchRenorm1d/2d/3d``: twin of ``torch.nn.BatchNorm*d`` at r_max=1, d_max=0
(state_dict both ways, train steps, eval: outputs, all grads, all buffers), equality with
the functional reference when r and d act, gradcheck, hard cases, ``set_renorm_clipping``
and the error tables."""

from __future__ import annotations

import math
import re

import pytest
import torch
from bn_module_cases import CASES, BNCase, assert_twins
from bn_module_cases import randomize_ as randomize
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck
from torch.func import functional_call

import bnlab.nn
from bnlab.functional.batch_renorm import batch_renorm

F64 = torch.float64
RENORM = {
    "BatchNorm1d": "BatchRenorm1d",
    "BatchNorm2d": "BatchRenorm2d",
    "BatchNorm3d": "BatchRenorm3d",
}
TRACKED = [c for c in CASES if c.kwargs.get("track_running_stats", True)]


def _renorm(case: BNCase, **kwargs) -> torch.nn.Module:
    kw = {"momentum": 0.1, **case.kwargs, **kwargs}
    return getattr(bnlab.nn, RENORM[case.cls])(case.num_features, **kw)


# ---------------------------------------------------------------------------- twins


@pytest.mark.parametrize("source", ["ours_to_torch", "torch_to_ours"])
@pytest.mark.parametrize("case", TRACKED, ids=[c.id for c in TRACKED])
def test_r_max_1_d_max_0_is_torch_batch_norm(case, source) -> None:
    gen = torch.Generator().manual_seed(21)
    ours = _renorm(case, r_max=1.0, d_max=0.0, dtype=F64)
    theirs = case.theirs(dtype=F64)
    src, dst = (ours, theirs) if source == "ours_to_torch" else (theirs, ours)
    randomize(src, gen)
    dst.load_state_dict(src.state_dict())
    assert_twins(ours, theirs, case, F64, gen)


def test_r_max_1_d_max_0_is_torch_batch_norm_float32() -> None:
    case = BNCase("BatchNorm2d", (4, 3, 5, 6), "default")
    gen = torch.Generator().manual_seed(22)
    ours, theirs = _renorm(case, r_max=1.0, d_max=0.0), case.theirs()
    assert_twins(ours, theirs, case, torch.float32, gen, tol=1e-4)


@given(
    rank=st.integers(2, 5),
    n=st.integers(2, 5),
    c=st.integers(1, 3),
    momentum=st.sampled_from([0.0, 0.1, 0.9, None]),
    seed=st.integers(0, 2**31 - 1),
)
def test_r_max_1_d_max_0_is_torch_batch_norm_property(rank, n, c, momentum, seed) -> None:
    cls = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[rank]
    case = BNCase(cls, (n, c) + (2,) * (rank - 2), "h", {"momentum": momentum})
    gen = torch.Generator().manual_seed(seed)
    ours, theirs = _renorm(case, r_max=1.0, d_max=0.0, dtype=F64), case.theirs(dtype=F64)
    randomize(theirs, gen)
    ours.load_state_dict(theirs.state_dict())
    assert_twins(ours, theirs, case, F64, gen, steps=2)


# ---------------------------------------------------------------------------- renorm at work


def test_module_equals_functional_reference_when_r_and_d_act() -> None:
    """The module (closed-form backward) against the functional path (autograd)."""
    gen = torch.Generator().manual_seed(23)
    m = bnlab.nn.BatchRenorm2d(3, r_max=1.5, d_max=0.5, dtype=F64)
    randomize(m, gen)
    w = m.weight.detach().clone().requires_grad_()
    b = m.bias.detach().clone().requires_grad_()
    rm, rv, nbt = m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()
    acted = False
    for _ in range(3):
        x = torch.randn(4, 3, 2, 3, generator=gen, dtype=F64) * 3 + 2
        g = torch.randn(4, 3, 2, 3, generator=gen, dtype=F64)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        m.zero_grad()
        m(x1).backward(g)
        out = batch_renorm(x2, rm, rv, w, b, True, 0.01, 1e-5, nbt, r_max=1.5, d_max=0.5)
        w.grad = b.grad = None
        out.output.backward(g)
        acted |= not torch.allclose(
            out.output, torch.nn.functional.batch_norm(x, None, None, w, b, True)
        )
        rm, rv, nbt = out.running_mean, out.running_var, out.num_batches_tracked
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(m.weight.grad, w.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(m.bias.grad, b.grad, rtol=1e-10, atol=1e-10)
        # Exact: both take the statistics from batch_norm_forward's reference moments (72
        # values, below the fast path's size) on the same bits, and update them with
        # batch_norm_with's code; the count is an integer.
        torch.testing.assert_close(m.running_mean, rm, rtol=0, atol=0)
        torch.testing.assert_close(m.running_var, rv, rtol=0, atol=0)
        assert torch.equal(m.num_batches_tracked, nbt)
    assert acted


def test_eval_equals_torch_batch_norm_eval() -> None:
    gen = torch.Generator().manual_seed(24)
    m = bnlab.nn.BatchRenorm2d(3)
    for _ in range(2):
        m(torch.randn(4, 3, 2, 2, generator=gen) * 2 + 1)
    t = torch.nn.BatchNorm2d(3)
    t.load_state_dict(m.state_dict())
    x = torch.randn(4, 3, 2, 2, generator=gen)
    torch.testing.assert_close(m.eval()(x), t.eval()(x))


def test_schedule_drives_every_layer() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        bnlab.nn.BatchRenorm2d(3),
        torch.nn.Sequential(torch.nn.Flatten(), bnlab.nn.BatchRenorm1d(12)),
    )
    for step in (0, 500, 4_000):
        assert (
            bnlab.nn.set_renorm_clipping(model, *bnlab.nn.renorm_clipping(step, step_scale=0.1))
            == 2
        )
        model(torch.randn(4, 1, 4, 4))
    assert (model[1].r_max, model[1].d_max) == (3.0, 5.0)
    assert (model[2][1].r_max, model[2][1].d_max) == (3.0, 5.0)
    assert bnlab.nn.set_renorm_clipping(torch.nn.Linear(2, 2), 2.0, 1.0) == 0


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls", ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d"])
def test_module_gradcheck(cls, training) -> None:
    shape = {
        "BatchRenorm1d": (4, 2),
        "BatchRenorm2d": (2, 2, 3, 2),
        "BatchRenorm3d": (2, 2, 2, 1, 2),
    }[cls]
    gen = torch.Generator().manual_seed(25)
    x = torch.randn(shape, generator=gen, dtype=F64) * 2 + 1
    # momentum 0 keeps the buffers fixed over gradcheck's many calls; running statistics
    # far from the batch's put r and d on their bounds (locally constant).
    m = getattr(bnlab.nn, cls)(2, momentum=0.0, r_max=2.0, d_max=1.0, dtype=F64).train(training)
    dims = (0, *range(2, x.dim()))
    with torch.no_grad():
        m.running_mean.copy_(x.mean(dims) - 50 * x.std(dims))
        m.running_var.copy_(x.var(dims) * 100)
        m.weight.copy_(torch.rand(2, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(2, generator=gen))
    buffers = dict(m.named_buffers())

    def f(x, w, b):
        return functional_call(m, {"weight": w, "bias": b, **buffers}, (x,))

    args = (
        x.requires_grad_(),
        m.weight.detach().clone().requires_grad_(),
        m.bias.detach().clone().requires_grad_(),
    )
    assert gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------- hard cases


def test_large_offset_tiny_variance_matches_float64() -> None:
    gen = torch.Generator().manual_seed(26)
    x = (1e4 + 1e-3 * torch.randn(16, 2, 8, generator=gen, dtype=F64)).float()
    m32 = bnlab.nn.BatchRenorm1d(2, eps=1e-9)
    m64 = bnlab.nn.BatchRenorm1d(2, eps=1e-9, dtype=F64)
    with torch.no_grad():
        for m in (m32, m64):
            m.running_mean.fill_(1e4)
            m.running_var.fill_(4e-6)
    y32, y64 = m32(x), m64(x.double())
    torch.testing.assert_close(y32.double(), y64, rtol=0, atol=2e-3)
    # The update (1 - momentum) * 1e4 + momentum * mean is three float32 roundings of
    # values up to 1e4: a few float32 eps relative, whatever the order of the operations.
    rtol = 4 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(m32.running_mean.double(), m64.running_mean, rtol=rtol, atol=0)


def test_constant_channel() -> None:
    m = bnlab.nn.BatchRenorm2d(2)
    y = m(torch.full((4, 2, 3, 3), -40.0))
    torch.testing.assert_close(y, torch.full_like(y, -5.0))  # d clipped at -d_max


def test_empty_batch_leaves_buffers_untouched() -> None:
    m = bnlab.nn.BatchRenorm2d(3)
    randomize(m, torch.Generator().manual_seed(27))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y = m(torch.randn(0, 3, 2, 2, requires_grad=True))
    assert y.shape == (0, 3, 2, 2)
    y.sum().backward()
    # Exact: an empty batch must not write the buffers.
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_in_a_float32_module(dtype) -> None:
    gen = torch.Generator().manual_seed(28)
    x = torch.randn(8, 3, 4, 4, generator=gen) * 2 + 1
    m_half, m_ref = (
        bnlab.nn.BatchRenorm2d(3, r_max=1.5, d_max=0.5),
        bnlab.nn.BatchRenorm2d(3, r_max=1.5, d_max=0.5),
    )
    y = m_half(x.to(dtype).requires_grad_())
    y.float().sum().backward()
    assert y.dtype == dtype
    assert m_half.weight.grad.dtype == torch.float32
    y_ref = m_ref(x.to(dtype).float())
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(y.float(), y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(m_half.running_var, m_ref.running_var, rtol=1e-5, atol=1e-5)


def test_channels_last() -> None:
    gen = torch.Generator().manual_seed(29)
    x = torch.randn(4, 3, 5, 6, generator=gen)
    a, b = (
        bnlab.nn.BatchRenorm2d(3, r_max=1.5, d_max=0.5),
        bnlab.nn.BatchRenorm2d(3, r_max=1.5, d_max=0.5),
    )
    y = a(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, b(x))
    torch.testing.assert_close(a.running_var, b.running_var)


# ---------------------------------------------------------------------------- module contract


def test_state_dict_is_torch_batch_norms_and_holds_no_clipping() -> None:
    m = bnlab.nn.BatchRenorm2d(3, r_max=2.0, d_max=1.0)
    assert list(m.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())
    fresh = bnlab.nn.BatchRenorm2d(3, r_max=3.0, d_max=5.0)
    fresh.load_state_dict(m.state_dict())
    assert (fresh.r_max, fresh.d_max) == (3.0, 5.0)


def test_defaults_and_repr() -> None:
    m = bnlab.nn.BatchRenorm2d(3)
    assert (m.momentum, m.r_max, m.d_max) == (0.01, 3.0, 5.0)
    assert repr(m) == (
        "BatchRenorm2d(3, eps=1e-05, momentum=0.01, affine=True, bias=True, "
        "track_running_stats=True, r_max=3.0, d_max=5.0)"
    )
    m.r_max = 1.25
    assert "r_max=1.25" in m.extra_repr()


def test_unclipped_bounds_are_allowed() -> None:
    m = bnlab.nn.BatchRenorm1d(2, r_max=math.inf, d_max=math.inf)
    assert torch.isfinite(m(torch.randn(4, 2))).all()


CONSTRUCTOR_ERRORS = [
    (
        "r_max_below_1",
        {"r_max": 0.9},
        ValueError,
        "BatchRenorm2d: r_max must be >= 1 (r is clipped to [1/r_max, r_max]; r_max=1 is plain batch norm), got r_max=0.9",
    ),
    (
        "d_max_negative",
        {"d_max": -0.5},
        ValueError,
        "BatchRenorm2d: d_max must be >= 0 (d is clipped to [-d_max, d_max]; d_max=0 is plain batch norm), got d_max=-0.5",
    ),
    (
        "r_max_str",
        {"r_max": "3"},
        TypeError,
        "BatchRenorm2d: r_max must be a float, got '3' of type str",
    ),
    (
        "untracked",
        {"track_running_stats": False},
        ValueError,
        "BatchRenorm2d: track_running_stats must be True, got False: batch renorm corrects the batch "
        "statistics towards the running ones; for batch statistics alone use BatchNorm with "
        "track_running_stats=False",
    ),
    ("eps_zero", {"eps": 0.0}, ValueError, "BatchRenorm2d: eps must be > 0"),
    (
        "momentum_decay_style",
        {"momentum": 0.99 + 1},
        ValueError,
        "BatchRenorm2d: momentum must be in [0, 1]",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [e[1:] for e in CONSTRUCTOR_ERRORS],
    ids=[e[0] for e in CONSTRUCTOR_ERRORS],
)
def test_constructor_errors(kwargs, exc, message) -> None:
    with pytest.raises(exc, match=re.escape(message)):
        bnlab.nn.BatchRenorm2d(3, **kwargs)


def _untracked_after_construction():
    m = bnlab.nn.BatchRenorm1d(3)
    m.track_running_stats = False
    return m


def _bad_r_max_attribute():
    m = bnlab.nn.BatchRenorm1d(3)
    m.r_max = 0.5
    return m


FORWARD_ERRORS = [
    (
        "rank",
        lambda: bnlab.nn.BatchRenorm2d(3),
        torch.randn(4, 3),
        ValueError,
        "BatchRenorm2d: expected 4D input (N, C, H, W), got 2D input of shape (4, 3)",
    ),
    (
        "channels",
        lambda: bnlab.nn.BatchRenorm1d(3),
        torch.randn(4, 5),
        ValueError,
        "BatchRenorm1d: expected 3 channels in dim 1, got 5",
    ),
    (
        "batch_of_one",
        lambda: bnlab.nn.BatchRenorm1d(3),
        torch.randn(1, 3),
        ValueError,
        "BatchRenorm1d: expected more than 1 value per channel when training, got input of shape (1, 3)",
    ),
    (
        "int_input",
        lambda: bnlab.nn.BatchRenorm1d(3),
        torch.ones(4, 3, dtype=torch.long),
        TypeError,
        "BatchRenorm1d: expected a floating-point input",
    ),
    (
        "untracked_after_construction",
        _untracked_after_construction,
        torch.randn(4, 3),
        RuntimeError,
        "BatchRenorm1d: training needs running statistics, but track_running_stats was set to False; "
        "set it back to True, or call .eval()",
    ),
    (
        "bad_r_max_attribute",
        _bad_r_max_attribute,
        torch.randn(4, 3),
        ValueError,
        "BatchRenorm1d: r_max must be >= 1",
    ),
]


@pytest.mark.parametrize(
    ("make", "x", "exc", "message"),
    [e[1:] for e in FORWARD_ERRORS],
    ids=[e[0] for e in FORWARD_ERRORS],
)
def test_forward_errors(make, x, exc, message) -> None:
    m = make()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(exc, match=re.escape(message)):
        m(x)
    # Exact: the error is raised before any buffer is written.
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_batch_of_one_works_in_eval() -> None:
    m = bnlab.nn.BatchRenorm1d(3).eval()
    assert m(torch.randn(1, 3)).shape == (1, 3)


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        (
            ("not a model", 2.0, 1.0),
            TypeError,
            "set_renorm_clipping: model must be a torch.nn.Module, got str",
        ),
        ((torch.nn.Linear(1, 1), 0.5, 1.0), ValueError, "set_renorm_clipping: r_max must be >= 1"),
        ((torch.nn.Linear(1, 1), 2.0, -1.0), ValueError, "set_renorm_clipping: d_max must be >= 0"),
    ],
    ids=["not_a_module", "r_max", "d_max"],
)
def test_set_renorm_clipping_errors(args, exc, message) -> None:
    with pytest.raises(exc, match=re.escape(message)):
        bnlab.nn.set_renorm_clipping(*args)
