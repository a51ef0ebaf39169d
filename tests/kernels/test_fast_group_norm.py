"""The fused C++ group-norm kernels (``kernels.group_forward``/``group_backward``), their
autograd binding (``bnlab.autograd.group_norm``) and the modules that take them
(``GroupNorm``, ``InstanceNorm1d/2d/3d``).

Against the float64 reference (``torch.nn.functional.group_norm`` in float64) on
hypothesis-drawn shapes; float64 gradcheck and gradgradcheck through the kernels; the
hard cases (a group at 1e4 + 1e-3 * noise, constant groups, N = 1, one value per group,
G == C); the modules against their ``torch.nn`` twins; which calls take the kernels;
deterministic parameter gradients whatever the thread count.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import bnlab.nn
from bnlab import kernels
from bnlab.autograd.group_norm import FastGroupNormFunction, fast_group_norm

HAS_COMPILER = any(shutil.which(c) for c in kernels.COMPILERS)
pytestmark = pytest.mark.skipif(
    not HAS_COMPILER or not kernels.available(), reason="the C++ kernels do not build here"
)

# Relative to the largest reference value (grads of low-variance groups are large).
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _close(
    ours: torch.Tensor | None, ref: torch.Tensor | None, dtype: torch.dtype, slack: float = 1.0
) -> None:
    assert (ours is None) == (ref is None)
    if ours is None:
        return
    ref = ref.double()
    scale = 1.0 + ref.abs().max().item() if ref.numel() else 1.0
    err = (ours.double() - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= TOL[dtype] * slack * scale, f"max |diff| {err:.3e}, scale {scale:.3e}"


def _params(c: int, dtype: torch.dtype, affine: bool, seed: int = 1):
    if not affine:
        return None, None
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(c, generator=gen, dtype=torch.float64) + 1.0).to(dtype)
    b = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    return w.requires_grad_(), b.requires_grad_()


def _fast_and_reference(x, groups, w, b, eps=1e-5, seed=2):
    """(y, grads) through the kernels and through float64 F.group_norm on the same values."""
    dtype = x.dtype
    assert kernels.group_norm_eligible(x, groups, w, b)
    gen = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    xs = x.detach().requires_grad_()
    inputs = [xs] + [t for t in (w, b) if t is not None]
    y = FastGroupNormFunction.apply(xs, w, b, groups, eps)
    grads = torch.autograd.grad(y, inputs, grad_y)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    rx = ref_inputs[0]
    rw = ref_inputs[1] if w is not None else None
    rb = ref_inputs[2] if b is not None else None
    ry = F.group_norm(rx, groups, rw, rb, eps)
    ref_grads = torch.autograd.grad(ry, ref_inputs, grad_y.double())
    return (y, *grads), (ry, *ref_grads)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 4),
    groups=st.integers(1, 4),
    per_group=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_reference(n, groups, per_group, spatial, dtype, affine, seed):
    # torch refuses one value in all (N * C/G * S == 1); bnlab gives the bias there.
    assume(n * per_group * math.prod(spatial) > 1)
    c = groups * per_group
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, *spatial, generator=gen, dtype=torch.float64) * 3 + 1).to(dtype)
    w, b = _params(c, dtype, affine, seed)
    ours, ref = _fast_and_reference(x, groups, w, b, seed=seed + 1)
    # grad_x is a difference of terms of size inv_std * |grad_y * w| (they cancel exactly
    # in a group of one value): its rounding error scales with inv_std, up to 1/sqrt(eps).
    var = x.double().reshape(n, groups, -1).var(-1, unbiased=False)
    slack = max(1.0, (var.min().item() + 1e-5) ** -0.5)
    for o, r in zip(ours, ref, strict=True):
        _close(o, r, dtype, slack)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("shape", "groups"), [((3, 6, 4, 3), 3), ((2, 4, 5), 4), ((1, 2), 1)])
def test_gradcheck_float64(shape, groups, affine):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w, b = _params(shape[1], torch.float64, affine)

    def fn(*inputs):
        return FastGroupNormFunction.apply(inputs[0], w, b, groups, 1e-5)

    def fn_params(x_, w_, b_):
        return FastGroupNormFunction.apply(x_, w_, b_, groups, 1e-5)

    assert gradcheck(fn, (x,))
    if affine:
        assert gradcheck(fn_params, (x, w, b))


def test_gradgradcheck_float64_falls_back_to_torch_ops():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    w, b = _params(6, torch.float64, True)
    assert gradgradcheck(lambda *t: FastGroupNormFunction.apply(*t, 3, 1e-5), (x, w, b))


def test_group_at_1e4_float32_has_the_statistics_of_the_noise():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    x[:, :2] = 1e4 + 1e-3 * x[:, :2]  # group 0 of each sample
    x = x.float()
    ours, ref = _fast_and_reference(x, 2, *_params(4, torch.float32, True))
    y = ours[0]
    # The float32 values carry the noise to about 5e-4 of its std; torch's own float32
    # kernel (mean then E[x^2] - mean^2) gets no digit right here.
    assert (y.double() - ref[0]).abs().max().item() < 5e-3
    grp = y[:, :2].double()
    assert grp.std().item() == pytest.approx(ref[0][:, :2].std().item(), rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_groups_give_the_bias(dtype):
    x = torch.full((2, 4, 3, 3), 7.25, dtype=dtype)
    w, b = _params(4, dtype, True)
    ours, ref = _fast_and_reference(x, 2, w, b)
    y = ours[0]
    assert torch.equal(y, b.detach().view(1, 4, 1, 1).expand_as(y))
    for o, r in zip(ours, ref, strict=True):
        assert torch.isfinite(o).all()
        # Zero-variance grads scale by 1 / sqrt(eps) ~ 316; torch's float64 differ from 0
        # by rounding of that size.
        _close(o, r, dtype, slack=1e3)


@pytest.mark.parametrize(
    ("shape", "groups", "desc"),
    [
        ((1, 6, 5, 5), 3, "N=1"),
        ((4, 6), 6, "one value per group"),
        ((3, 5, 7), 5, "G == C"),
        ((1, 1, 9), 1, "one group of one channel"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_shapes(shape, groups, desc, dtype):
    torch.manual_seed(3)
    x = torch.randn(shape, dtype=dtype)
    ours, ref = _fast_and_reference(x, groups, *_params(shape[1], dtype, True))
    for o, r in zip(ours, ref, strict=True):
        _close(o, r, dtype)


def test_parameter_grads_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    x = torch.randn(16, 8, 32, 32)  # above the kernels' one-thread threshold
    w, b = _params(8, torch.float32, True)
    grad_y = torch.randn_like(x)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xs = x.clone().requires_grad_()
            y = FastGroupNormFunction.apply(xs, w, b, 4, 1e-5)
            results.append((y, *torch.autograd.grad(y, (xs, w, b), grad_y)))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, o in zip(results[0], other, strict=True):
            assert torch.equal(a, o)


def test_eligibility():
    x = torch.randn(2, 4, 3, 3)
    w = torch.ones(4)
    assert kernels.group_norm_eligible(x, 2, w, None)
    assert not kernels.group_norm_eligible(x, 3, w, None)  # 3 does not divide 4
    assert not kernels.group_norm_eligible(x.double(), 2, w, None)  # mixed dtypes
    assert not kernels.group_norm_eligible(x.half(), 2, None, None)
    assert not kernels.group_norm_eligible(x.to(memory_format=torch.channels_last), 2, w, None)
    assert not kernels.group_norm_eligible(x[:0], 2, w, None)
    assert not kernels.group_norm_eligible(x, 2, torch.ones(8)[::2], None)
    with kernels.enabled(False):
        assert not kernels.group_norm_eligible(x, 2, w, None)


# ---------------------------------------------------------------------------- modules


def _twins(ours, theirs, x, affine):
    """Forward and grads of two modules with the same parameters."""
    torch.manual_seed(5)
    if affine:
        with torch.no_grad():
            ours.weight.normal_()
            ours.bias.normal_()
        theirs.load_state_dict(ours.state_dict())
    grad_y = torch.randn_like(x)
    out = []
    for m in (ours, theirs):
        xs = x.clone().requires_grad_()
        y = m(xs)
        params = [xs] + ([m.weight, m.bias] if affine else [])
        out.append((y, *torch.autograd.grad(y, params, grad_y)))
    return out


@pytest.fixture
def kernel_calls(monkeypatch):
    counts = {"forward": 0}
    original = kernels.group_forward

    def spy(*args, **kwargs):
        counts["forward"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "group_forward", spy)
    return counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("groups", "shape"), [(4, (3, 8, 5, 5)), (1, (2, 6, 7)), (6, (2, 6, 3))])
def test_groupnorm_module_matches_torch(groups, shape, affine, dtype, kernel_calls):
    c = shape[1]
    ours = bnlab.nn.GroupNorm(groups, c, affine=affine, dtype=dtype)
    theirs = torch.nn.GroupNorm(groups, c, affine=affine, dtype=dtype)
    x = torch.randn(shape, dtype=dtype) * 2 + 0.5
    a, t = _twins(ours, theirs, x, affine)
    assert kernel_calls["forward"] == 1
    for o, r in zip(a, t, strict=True):
        _close(o, r, dtype if dtype == torch.float32 else torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        ("InstanceNorm1d", (3, 4, 9)),
        ("InstanceNorm2d", (2, 5, 4, 6)),
        ("InstanceNorm3d", (2, 3, 3, 4, 2)),
        ("InstanceNorm2d", (5, 4, 6)),  # unbatched
    ],
)
def test_instancenorm_module_matches_torch(cls, shape, affine, dtype, kernel_calls):
    c = shape[0] if len(shape) == 3 and cls == "InstanceNorm2d" else shape[1]
    ours = getattr(bnlab.nn, cls)(c, affine=affine, dtype=dtype)
    theirs = getattr(torch.nn, cls)(c, affine=affine, dtype=dtype)
    x = torch.randn(shape, dtype=dtype) * 2 - 1
    a, t = _twins(ours, theirs, x, affine)
    assert kernel_calls["forward"] == 1
    for o, r in zip(a, t, strict=True):
        _close(o, r, dtype if dtype == torch.float32 else torch.float32)


def test_instancenorm_with_running_stats_takes_the_general_path(kernel_calls):
    ours = bnlab.nn.InstanceNorm2d(3, track_running_stats=True)
    theirs = torch.nn.InstanceNorm2d(3, track_running_stats=True)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert kernel_calls["forward"] == 0


def test_instancenorm_empty_batch_and_one_spatial_element_take_the_general_path(kernel_calls):
    m = bnlab.nn.InstanceNorm1d(2)
    y = m(torch.randn(0, 2, 3))
    assert y.shape == (0, 2, 3)
    with pytest.raises(ValueError, match="expected more than 1 spatial element"):
        m(torch.randn(3, 2, 1))
    assert kernel_calls["forward"] == 0


def test_modules_same_results_with_the_fast_path_off():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    for m in (
        bnlab.nn.GroupNorm(3, 6, dtype=torch.float64),
        bnlab.nn.InstanceNorm2d(6, affine=True, dtype=torch.float64),
    ):
        y = m(x)
        with kernels.enabled(False):
            y_ref = m(x)
        assert y.grad_fn is not None
        assert type(y.grad_fn) is not type(y_ref.grad_fn)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, (x, m.weight, m.bias), g)
        grads_ref = torch.autograd.grad(y_ref, (x, m.weight, m.bias), g)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        for a, r in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-11)


def test_module_double_backward():
    torch.manual_seed(0)
    m = bnlab.nn.GroupNorm(2, 4, dtype=torch.float64)
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(m, (x,))


def test_no_grad_call_skips_autograd(kernel_calls):
    m = bnlab.nn.GroupNorm(2, 4)
    with torch.no_grad():
        y = m(torch.randn(2, 4, 3, 3))
    assert y.grad_fn is None
    assert kernel_calls["forward"] == 1
    y = fast_group_norm(torch.randn(2, 4, 3), 2, None, None, 1e-5)
    assert y.grad_fn is None


@pytest.mark.parametrize("make", ["group", "instance"])
def test_functorch_transforms_take_the_torch_ops_path(make, kernel_calls):
    # The kernels read raw memory: vmap's batched tensors and grad's wrappers have none.
    torch.manual_seed(0)
    if make == "group":
        ours, theirs = bnlab.nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4)
    else:
        ours = bnlab.nn.InstanceNorm1d(4, affine=True)
        theirs = torch.nn.InstanceNorm1d(4, affine=True)
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(torch.vmap(ours)(x), torch.vmap(theirs)(x))
    ga = torch.func.grad(lambda t: (ours(t) ** 3).sum())(x[0])
    gb = torch.func.grad(lambda t: (theirs(t) ** 3).sum())(x[0])
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4)
    assert kernel_calls["forward"] == 0


def test_large_outputs_come_from_the_pool_and_are_not_shared_while_alive():
    # Outputs of at least NORM_POOL_MIN_BYTES are pooled mappings, reused once freed.
    m = bnlab.nn.GroupNorm(2, 4)
    gen = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(64, 4, 32, 32, generator=gen) for _ in range(2))
    assert x1.nbytes >= kernels.NORM_POOL_MIN_BYTES
    with torch.no_grad():
        y1 = m(x1)
        expected = y1.clone()
        y2 = m(x2)
        assert y1.data_ptr() != y2.data_ptr()
        torch.testing.assert_close(y1, expected, rtol=0, atol=0)
        del y1  # its mapping is free again: the next output may reuse it
        y3 = m(x1)
    torch.testing.assert_close(y3, expected, rtol=0, atol=0)
    torch.testing.assert_close(y2, F.group_norm(x2, 2, m.weight, m.bias), rtol=1e-5, atol=1e-5)
