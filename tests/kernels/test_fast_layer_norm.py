"""The fused C++ layer-norm kernels (``kernels.layer_forward``/``layer_backward``), their
autograd binding (``bnlab.autograd.layer_norm``) and ``bnlab.nn.LayerNorm`` on them.

Against the float64 reference (``torch.nn.functional.layer_norm`` in float64) on
hypothesis-drawn shapes; float64 gradcheck and gradgradcheck through the kernels; the
hard cases (a row at 1e4 + 1e-3 * noise, constant rows, one row, rows of one value);
the module against ``torch.nn.LayerNorm``; deterministic parameter gradients whatever
the thread count.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import bnlab.nn
from bnlab import kernels
from bnlab.autograd.layer_norm import FastLayerNormFunction, fast_layer_norm

HAS_COMPILER = any(shutil.which(c) for c in kernels.COMPILERS)
pytestmark = pytest.mark.skipif(
    not HAS_COMPILER or not kernels.available(), reason="the C++ kernels do not build here"
)

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _close(ours, ref, dtype, slack=1.0):
    """Max |diff| within TOL * slack of the largest reference value (plus one)."""
    ref = ref.double()
    scale = 1.0 + ref.abs().max().item()
    err = (ours.double() - ref).abs().max().item()
    assert err <= TOL[dtype] * slack * scale, f"max |diff| {err:.3e}, scale {scale:.3e}"


def _params(shape, dtype, affine, seed=1):
    if not affine:
        return None, None
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=gen, dtype=torch.float64) + 1.0).to(dtype)
    b = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return w.requires_grad_(), b.requires_grad_()


def _fast_and_reference(x, shape, w, b, eps=1e-5, seed=2):
    assert kernels.layer_norm_eligible(x, tuple(shape), w, b)
    gen = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    inputs = [x.detach().requires_grad_()] + [t for t in (w, b) if t is not None]
    y = FastLayerNormFunction.apply(inputs[0], w, b, shape, eps)
    grads = torch.autograd.grad(y, inputs, grad_y)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    rw = ref_inputs[1] if w is not None else None
    rb = ref_inputs[2] if b is not None else None
    ry = F.layer_norm(ref_inputs[0], shape, rw, rb, eps)
    ref_grads = torch.autograd.grad(ry, ref_inputs, grad_y.double())
    return (y, *grads), (ry, *ref_grads)


def _slack(x, k):
    # grad_x is a difference of terms of size inv_std * |grad_y * w|: its rounding error
    # scales with the largest inv_std (up to 1/sqrt(eps) for constant rows).
    rows = x.double().reshape(-1, math.prod(x.shape[x.dim() - k :]))
    return max(1.0, (rows.var(-1, unbiased=False).min().item() + 1e-5) ** -0.5)


@settings(max_examples=40, deadline=None)
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    normalized=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_reference(lead, normalized, dtype, affine, seed):
    shape = tuple(normalized)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*lead, *shape, generator=gen, dtype=torch.float64) * 3 + 1).to(dtype)
    w, b = _params(shape, dtype, affine, seed)
    ours, ref = _fast_and_reference(x, shape, w, b, seed=seed + 1)
    slack = _slack(x, len(shape))
    for o, r in zip(ours, ref, strict=True):
        _close(o, r, dtype, slack)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("xshape", "shape"), [((3, 4, 5), (5,)), ((2, 3, 2, 2), (3, 2, 2))])
def test_gradcheck_float64(xshape, shape, affine):
    torch.manual_seed(0)
    x = torch.randn(xshape, dtype=torch.float64, requires_grad=True)
    w, b = _params(shape, torch.float64, affine)
    assert gradcheck(lambda x_: FastLayerNormFunction.apply(x_, w, b, shape, 1e-5), (x,))
    if affine:
        assert gradcheck(lambda *t: FastLayerNormFunction.apply(*t, shape, 1e-5), (x, w, b))


def test_gradgradcheck_float64_falls_back_to_torch_ops():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    w, b = _params((4,), torch.float64, True)
    assert gradgradcheck(lambda *t: FastLayerNormFunction.apply(*t, (4,), 1e-5), (x, w, b))


def test_row_at_1e4_float32_has_the_statistics_of_the_noise():
    torch.manual_seed(0)
    x = torch.randn(4, 64, dtype=torch.float64)
    x[:2] = 1e4 + 1e-3 * x[:2]
    x = x.float()
    ours, ref = _fast_and_reference(x, (64,), *_params((64,), torch.float32, True))
    # The float32 values carry the noise to about 5e-4 of its std.
    assert (ours[0].double() - ref[0]).abs().max().item() < 5e-3


@pytest.mark.parametrize(
    ("xshape", "shape", "desc"),
    [
        ((3, 5), (5,), "constant rows"),
        ((7, 1), (1,), "one value per row"),
        ((6,), (6,), "one row, no batch dims"),
        ((1, 2, 3, 4), (2, 3, 4), "one sample"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_cases(xshape, shape, desc, dtype):
    torch.manual_seed(3)
    x = torch.randn(xshape, dtype=dtype)
    if desc == "constant rows":
        x = torch.full(xshape, -2.5, dtype=dtype)
    w, b = _params(shape, dtype, True)
    ours, ref = _fast_and_reference(x, shape, w, b)
    if desc in ("constant rows", "one value per row"):
        assert torch.equal(ours[0], b.detach().expand_as(ours[0]))
    for o, r in zip(ours, ref, strict=True):
        assert torch.isfinite(o).all()
        _close(o, r, dtype, 10 * _slack(x, len(shape)))


def test_parameter_grads_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    x = torch.randn(40, 16, 64)  # above the kernels' one-thread threshold
    w, b = _params((16, 64), torch.float32, True)
    grad_y = torch.randn_like(x)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xs = x.clone().requires_grad_()
            y = FastLayerNormFunction.apply(xs, w, b, (16, 64), 1e-5)
            results.append((y, *torch.autograd.grad(y, (xs, w, b), grad_y)))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, o in zip(results[0], other, strict=True):
            assert torch.equal(a, o)


def test_eligibility():
    x = torch.randn(2, 4, 3)
    w = torch.ones(4, 3)
    assert kernels.layer_norm_eligible(x, (4, 3), w, None)
    assert not kernels.layer_norm_eligible(x, (4, 3), w.double(), None)
    assert not kernels.layer_norm_eligible(x.half(), (4, 3), None, None)
    assert not kernels.layer_norm_eligible(x.transpose(1, 2), (3, 4), None, None)
    assert not kernels.layer_norm_eligible(x[:0], (4, 3), None, None)
    assert not kernels.layer_norm_eligible(x, (4, 3), torch.ones(4, 6)[:, ::2], None)
    with kernels.enabled(False):
        assert not kernels.layer_norm_eligible(x, (4, 3), w, None)


@pytest.fixture
def kernel_calls(monkeypatch):
    counts = {"forward": 0}
    original = kernels.layer_forward

    def spy(*args, **kwargs):
        counts["forward"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "layer_forward", spy)
    return counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("args", "kwargs", "xshape"),
    [
        ((5,), {}, (4, 5)),
        (((3, 5, 6),), {}, (4, 3, 5, 6)),
        (((5, 6),), {"elementwise_affine": False}, (2, 4, 5, 6)),
        ((6,), {"bias": False}, (4, 3, 6)),
    ],
)
def test_module_matches_torch(args, kwargs, xshape, dtype, kernel_calls):
    torch.manual_seed(5)
    ours = bnlab.nn.LayerNorm(*args, **kwargs, dtype=dtype)
    theirs = torch.nn.LayerNorm(*args, **kwargs, dtype=dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(xshape, dtype=dtype) * 2 + 0.5
    grad_y = torch.randn_like(x)
    out = []
    for m in (ours, theirs):
        xs = x.clone().requires_grad_()
        y = m(xs)
        out.append((y, *torch.autograd.grad(y, [xs, *m.parameters()], grad_y)))
    assert kernel_calls["forward"] == 1
    for o, r in zip(*out, strict=True):
        _close(o, r, torch.float32)


def test_module_same_results_with_the_fast_path_off_and_double_backward():
    torch.manual_seed(0)
    m = bnlab.nn.LayerNorm((3, 4), dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    y = m(x)
    with kernels.enabled(False):
        y_ref = m(x)
    assert type(y.grad_fn) is not type(y_ref.grad_fn)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, m.weight, m.bias), g)
    grads_ref = torch.autograd.grad(y_ref, (x, m.weight, m.bias), g)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-11)
    assert gradgradcheck(m, (x,))


def test_no_grad_call_skips_autograd(kernel_calls):
    m = bnlab.nn.LayerNorm(4)
    with torch.no_grad():
        y = m(torch.randn(2, 4))
    assert y.grad_fn is None
    assert kernel_calls["forward"] == 1
    assert fast_layer_norm(torch.randn(2, 4), (4,), None, None, 1e-5).grad_fn is None


def test_functorch_transforms_take_the_torch_ops_path(kernel_calls):
    # The kernels read raw memory: vmap's batched tensors and grad's wrappers have none.
    torch.manual_seed(0)
    ours, theirs = bnlab.nn.LayerNorm(5), torch.nn.LayerNorm(5)
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(torch.vmap(ours)(x), torch.vmap(theirs)(x))
    ga = torch.func.grad(lambda t: (ours(t) ** 3).sum())(x[0])
    gb = torch.func.grad(lambda t: (theirs(t) ** 3).sum())(x[0])
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4)
    assert kernel_calls["forward"] == 0
