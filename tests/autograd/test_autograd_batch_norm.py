"""``BatchNormFunction`` and ``bnlab.autograd.batch_norm``: the closed-form backward.

float64 ``gradcheck`` / ``gradgradcheck`` on the total derivative and per input (only x,
only weight, only bias requiring grad, which exercises ``needs_input_grad``); the
closed form against autograd through ``bnlab.functional.batch_norm`` (first and
second derivatives); and which gradients the backward actually computes.
"""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import bnlab.autograd
import bnlab.functional
from bnlab.autograd import BatchNormFunction

# Each test runs on the torch-ops path, the kernels and the kernels without the C++
# node (the ``implementation`` fixture of tests/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")


F64 = torch.float64
SHAPES = [(4, 2), (3, 2, 3), (2, 2, 3, 2), (2, 2, 2, 2, 2)]
SHAPE_IDS = ["NC", "NCL", "NCHW", "NCDHW"]

# (x, weight, bias) requires_grad; None = that argument is None.
GRAD_PATTERNS = [
    (True, True, True),
    (True, False, False),
    (False, True, False),
    (False, False, True),
    (False, True, True),
    (True, True, False),
    (True, None, None),
    (True, True, None),
    (False, None, True),
]
PATTERN_IDS = [
    "".join({True: c.upper(), False: c, None: "-"}[r] for c, r in zip("xwb", p, strict=True))
    for p in GRAD_PATTERNS
]

_autograd_module = importlib.import_module("bnlab.autograd.batch_norm")


def _inputs(shape, pattern, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1
    w = torch.rand(c, generator=gen, dtype=dtype) + 0.5
    b = torch.randn(c, generator=gen, dtype=dtype)
    out = []
    for t, req in zip((x, w, b), pattern, strict=True):
        out.append(None if req is None else t.requires_grad_(bool(req)))
    return out


def _fn(eps):
    def f(x, w, b):
        return BatchNormFunction.apply(x, w, b, eps)[0]

    return f


# Every rank with every grad pattern for gradcheck; gradgradcheck (the slow one) with
# every pattern on (N, C, H, W) and the total derivative on every rank.
GRADCHECK_CASES = [(s, p, 1e-5) for s in SHAPES for p in GRAD_PATTERNS] + [
    (s, GRAD_PATTERNS[0], 1.0) for s in SHAPES
]
GRADCHECK_IDS = [
    f"{i}-{pid}-eps{eps:g}"
    for (s, p, eps) in GRADCHECK_CASES
    for i, s2 in zip(SHAPE_IDS, SHAPES, strict=True)
    for pid, p2 in zip(PATTERN_IDS, GRAD_PATTERNS, strict=True)
    if s2 == s and p2 == p
]
GRADGRAD_CASES = [((2, 2, 3, 2), p) for p in GRAD_PATTERNS] + [
    (s, GRAD_PATTERNS[0]) for s in SHAPES if s != (2, 2, 3, 2)
]
GRADGRAD_IDS = [
    f"{i}-{pid}"
    for (s, p) in GRADGRAD_CASES
    for i, s2 in zip(SHAPE_IDS, SHAPES, strict=True)
    for pid, p2 in zip(PATTERN_IDS, GRAD_PATTERNS, strict=True)
    if s2 == s and p2 == p
]


@pytest.mark.parametrize(("shape", "pattern", "eps"), GRADCHECK_CASES, ids=GRADCHECK_IDS)
def test_gradcheck_function(shape, pattern, eps) -> None:
    x, w, b = _inputs(shape, pattern)
    assert gradcheck(_fn(eps), (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(("shape", "pattern"), GRADGRAD_CASES, ids=GRADGRAD_IDS)
def test_gradgradcheck_function(shape, pattern) -> None:
    x, w, b = _inputs(shape, pattern)
    assert gradgradcheck(_fn(1e-3), (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("layout", ["channels_last", "permuted"])
def test_gradcheck_and_gradgradcheck_non_contiguous(layout) -> None:
    x, w, b = _inputs((2, 2, 3, 2), (True, True, True))
    if layout == "channels_last":
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    else:
        x = x.detach().permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0).requires_grad_()
    assert not x.is_contiguous()
    assert gradcheck(_fn(1e-5), (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert gradgradcheck(_fn(1e-3), (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "pattern",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, True)],
    ids=["XWB", "X", "W", "B"],
)
def test_gradcheck_entry_point_with_running_stats(training, pattern) -> None:
    x, w, b = _inputs((3, 2, 4), pattern)
    rm = torch.randn(2, dtype=F64)
    rv = torch.rand(2, dtype=F64) + 0.5

    def f(x, w, b):
        return bnlab.autograd.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1).output

    assert gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert gradgradcheck(f, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_statistics_outputs_are_the_batch_moments_and_not_differentiable() -> None:
    x, w, b = _inputs((4, 3, 5), (True, True, True))
    y, mean, var = BatchNormFunction.apply(x, w, b, 1e-5)
    assert y.requires_grad
    assert not mean.requires_grad
    assert not var.requires_grad
    torch.testing.assert_close(mean, x.detach().mean((0, 2)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, x.detach().var((0, 2), correction=0), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- closed form vs autograd

LAYOUTS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "permuted": lambda t: t.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0),
    "sliced": lambda t: torch.cat([t, t], dim=3)[..., ::2],
    "expanded": lambda t: t[:, :, :, :1].expand(t.shape),
}


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("x_layout", "g_layout"),
    list(
        itertools.product(
            ["contiguous", "channels_last", "permuted", "sliced"],
            ["contiguous", "channels_last", "expanded"],
        )
    ),
)
def test_closed_form_matches_autograd_through_functional(dtype, x_layout, g_layout) -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(5, 3, 4, 6, generator=gen, dtype=F64) * 3 + 2
    g = LAYOUTS[g_layout](torch.randn(5, 3, 4, 6, generator=gen, dtype=F64).to(dtype))
    w0 = torch.rand(3, generator=gen, dtype=F64) + 0.5
    b0 = torch.randn(3, generator=gen, dtype=F64)
    grads = {}
    for name, f in [
        ("closed", bnlab.autograd.batch_norm),
        ("autograd", bnlab.functional.batch_norm),
    ]:
        x = LAYOUTS[x_layout](base.to(dtype)).detach().requires_grad_()
        w, b = w0.to(dtype).requires_grad_(), b0.to(dtype).requires_grad_()
        y = f(x, None, None, w, b, training=True).output
        grads[name] = torch.autograd.grad(y, (x, w, b), g)
    tol = {F64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-4)}[dtype]
    for got, want, what in zip(grads["closed"], grads["autograd"], "xwb", strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(
            got, want, rtol=tol[0], atol=tol[1], msg=lambda m, w=what: f"grad {w}: {m}"
        )


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(
    "pattern",
    [(True, True, True), (True, None, None), (True, True, False)],
    ids=["XWB", "X--", "XWb"],
)
def test_second_derivatives_match_autograd_through_functional(shape, pattern) -> None:
    """d/d(x, w) of a function of the first grads, closed form (create_graph) vs op by op."""
    results = {}
    for name, f in [
        ("closed", bnlab.autograd.batch_norm),
        ("autograd", bnlab.functional.batch_norm),
    ]:
        x, w, b = _inputs(shape, pattern, seed=2)
        g = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        y = f(x, None, None, w, b, training=True, eps=1e-3).output
        inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]
        first = torch.autograd.grad(y, inputs, g, create_graph=True)
        loss = sum((gr**2).sum() + gr.sin().sum() for gr in first)
        leaves = [t for t in (x, w) if t is not None and t.requires_grad]
        results[name] = torch.autograd.grad(loss, leaves)
    for got, want in zip(results["closed"], results["autograd"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_batch_norm_backward_directly(shape) -> None:
    """The public ``batch_norm_backward`` against autograd of ``batch_norm_forward``."""
    x, w, b = _inputs(shape, (True, True, True), seed=4)
    g = torch.randn(shape, dtype=F64)
    y, stats = bnlab.functional.batch_norm_forward(x, w, b, 1e-5)
    want = torch.autograd.grad(y, (x, w, b), g)
    stats = bnlab.functional.BatchStats(*(t.detach() for t in stats))
    with torch.no_grad():
        got = bnlab.functional.batch_norm_backward(g, x.detach(), w.detach(), stats)
    torch.testing.assert_close(stats.inv_std, (stats.var + 1e-5).rsqrt())
    torch.testing.assert_close(stats.mean, stats.pivot + stats.offset)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    for flags in itertools.product([True, False], repeat=3):
        with torch.no_grad():
            part = bnlab.functional.batch_norm_backward(g, x.detach(), w.detach(), stats, flags)
        for flag, a, e in zip(flags, part, want, strict=True):
            if flag:
                torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
            else:
                assert a is None


def test_backward_does_not_modify_grad_y_or_saved_input() -> None:
    x, w, b = _inputs((4, 3, 5), (True, True, True))
    y = bnlab.autograd.batch_norm(x, None, None, w, b, training=True).output
    g = torch.randn_like(y)
    g_copy, x_copy, version = g.clone(), x.detach().clone(), g._version
    torch.autograd.grad(y, (x, w, b), g)
    assert torch.equal(g, g_copy)
    assert g._version == version
    assert torch.equal(x.detach(), x_copy)


# ------------------------------------------------------------------- only the needed grads


@pytest.fixture
def backward_spy(monkeypatch):
    """Records the ``needs_input_grad`` flags and results of every closed-form backward."""
    calls = []
    real = _autograd_module.batch_norm_backward

    def spy(grad_y, x, weight, stats, needs_input_grad=(True, True, True)):
        result = real(grad_y, x, weight, stats, needs_input_grad)
        calls.append((tuple(needs_input_grad), result))
        return result

    monkeypatch.setattr(_autograd_module, "batch_norm_backward", spy)
    return calls


@pytest.mark.parametrize("pattern", GRAD_PATTERNS, ids=PATTERN_IDS)
def test_backward_computes_only_the_needed_grads(backward_spy, pattern) -> None:
    x, w, b = _inputs((4, 3, 2, 2), pattern)
    if not any(t is not None and t.requires_grad for t in (x, w, b)):
        pytest.skip("nothing requires grad")
    y = bnlab.autograd.batch_norm(x, None, None, w, b, training=True).output
    wanted = [t for t in (x, w, b) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(y, wanted, torch.randn_like(y))
    assert len(backward_spy) == 1
    flags, result = backward_spy[0]
    expected_flags = tuple(t is not None and t.requires_grad for t in (x, w, b))
    assert flags == expected_flags
    for flag, r in zip(flags, result, strict=True):
        assert (r is not None) == flag
    assert all(g is not None for g in grads)


def test_backward_for_a_single_input_through_the_module(backward_spy) -> None:
    """A frozen BN layer (weight and bias without grad) computes only grad_x."""
    import bnlab.nn

    m = bnlab.nn.BatchNorm2d(3)
    m.requires_grad_(False)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    m(x).sum().backward()
    assert backward_spy[0][0] == (True, False, False)
    assert m.weight.grad is None
