"""Hard inputs for the functional core: large offset with tiny variance, constant
channels, float16/bfloat16, 16-bit overflow of the statistics, non-contiguous layouts.

Every comparison is against a float64 reference computed from the *same* (already
rounded) input, so the tolerances measure the algorithm, not the input's rounding.
"""

from __future__ import annotations

import pytest
import torch

import bnlab.autograd
import bnlab.functional

# Each test runs on the torch-ops path, the kernels and the kernels without the C++
# node (the ``implementation`` fixture of tests/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")


ENTRIES = {
    "functional": bnlab.functional.batch_norm,
    "autograd": bnlab.autograd.batch_norm,
}
ENTRY_IDS = list(ENTRIES)


def _reference(x, weight=None, bias=None, eps=1e-5, grad_y=None):
    """float64 output (and input grad) of torch's batch norm in training mode."""
    x64 = x.detach().double().requires_grad_()
    w = None if weight is None else weight.detach().double()
    b = None if bias is None else bias.detach().double()
    y = torch.nn.functional.batch_norm(x64, None, None, w, b, training=True, eps=eps)
    if grad_y is None:
        return y.detach(), None
    (gx,) = torch.autograd.grad(y, x64, grad_y.double())
    return y.detach(), gx


# ------------------------------------------------------------------- large offset

OFFSET_SHAPES = [(16, 4), (256, 3), (8, 3, 50), (64, 3, 8, 8), (4, 2, 3, 5, 6)]
OFFSET_IDS = ["NC_16", "NC_256", "NCL", "NCHW", "NCDHW"]

# An exact algorithm loses only the float32 rounding of its result (~1e-6 on a
# unit-variance output); the noise alone normalizes that well. A channel 1e4 + 1e-3 *
# noise must normalize as well as the noise, within 1e-3 (one part in a thousand of
# a standard deviation, 1000 times float32 rounding). The naive float32 mean alone is
# off by ~ulp(1e4) ~ 1e-3, i.e. about one standard deviation of the data.
OFFSET_OUTPUT_ATOL = 1e-3
OFFSET_GRAD_RTOL = 1e-3  # relative to max |grad_x| of the reference
OFFSET_VAR_RTOL = 1e-3


OFFSET_LAYOUTS = [
    (shape, layout)
    for shape in OFFSET_SHAPES
    for layout in ["contiguous", "channels_last"]
    if layout == "contiguous" or len(shape) >= 4
]
OFFSET_LAYOUT_IDS = [
    f"{i}-{layout}"
    for s, layout in OFFSET_LAYOUTS
    for i, s2 in zip(OFFSET_IDS, OFFSET_SHAPES, strict=True)
    if s2 == s
]


@pytest.mark.parametrize("entry", ENTRY_IDS)
@pytest.mark.parametrize(("shape", "layout"), OFFSET_LAYOUTS, ids=OFFSET_LAYOUT_IDS)
def test_large_offset_tiny_variance_float32(entry, shape, layout) -> None:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=gen)
    grad_y = torch.randn(shape, generator=gen)
    eps = 1e-12  # far below the variance (1e-6): the normalization is not hidden by eps
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    to_layout = (
        (lambda t: t) if layout == "contiguous" else (lambda t: t.contiguous(memory_format=fmt))
    )

    def err(x):
        x = to_layout(x).requires_grad_()
        out = ENTRIES[entry](
            x, torch.zeros(shape[1]), torch.ones(shape[1]), training=True, momentum=1.0, eps=eps
        )
        (gx,) = torch.autograd.grad(out.output, x, grad_y)
        ref, gx_ref = _reference(x, eps=eps, grad_y=grad_y)
        dims = (0, *range(2, len(shape)))
        var_ref = x.detach().double().var(dim=dims, correction=1)
        return (
            (out.output.double() - ref).abs().max().item(),
            ((gx.double() - gx_ref).abs().max() / gx_ref.abs().max()).item(),
            ((out.running_var.double() - var_ref) / var_ref).abs().max().item(),
        )

    noise_errors = err(noise.clone())
    assert noise_errors[0] < 1e-5  # the reference itself is sound
    out_err, grad_err, var_err = err(1e4 + 1e-3 * noise)
    assert out_err <= OFFSET_OUTPUT_ATOL, (
        f"output off by {out_err:.3g} (noise alone: {noise_errors[0]:.3g})"
    )
    assert grad_err <= OFFSET_GRAD_RTOL, f"input grad off by {grad_err:.3g} of its max"
    assert var_err <= OFFSET_VAR_RTOL, f"running_var off by {var_err:.3g} relative"


@pytest.mark.parametrize("entry", ENTRY_IDS)
@pytest.mark.parametrize("shape", [(16, 4), (64, 3, 8, 8)], ids=["NC_16", "NCHW"])
def test_large_offset_tiny_variance_eval_float32(entry, shape) -> None:
    """Eval with running statistics that match the data (float32 running_mean ~1e4,
    running_var ~1e-6): the output is the noise normalized, within the same 1e-3.

    The reference is the float64 normalization with the *same* float32 running
    statistics, so only the arithmetic of the eval path is measured. Folding into
    ``x * scale + shift`` (``scale`` ~1e3, ``shift`` ~ -1e7) cancels in float32:
    ulp(1e7) = 1, a whole standard deviation; ``(x - running_mean) * scale + bias``
    does not (x - running_mean is exact here).
    """
    gen = torch.Generator().manual_seed(0)
    x = 1e4 + 1e-3 * torch.randn(shape, generator=gen)
    dims = (0, *range(2, len(shape)))
    rm, rv = x.double().mean(dims).float(), x.double().var(dims).float()
    w, b = torch.rand(shape[1], generator=gen) + 0.5, torch.randn(shape[1], generator=gen)
    eps = 1e-12
    y = ENTRIES[entry](x, rm, rv, w, b, training=False, eps=eps).output
    ref = torch.nn.functional.batch_norm(
        x.double(), rm.double(), rv.double(), w.double(), b.double(), training=False, eps=eps
    )
    err = (y.double() - ref).abs().max().item()
    assert err <= OFFSET_OUTPUT_ATOL, f"eval output off by {err:.3g} (output has unit scale)"


@pytest.mark.parametrize("shape", OFFSET_SHAPES, ids=OFFSET_IDS)
def test_large_offset_batch_moments_float32(shape) -> None:
    """The moments themselves: the variance of 1e4 + 1e-3 * noise is the noise's."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x = 1e4 + 1e-3 * noise
    mean, var = bnlab.functional.batch_moments(x)
    dims = (0, *range(2, len(shape)))
    x64 = x.double()
    var_ref = x64.var(dim=dims, correction=0)
    torch.testing.assert_close(var.double(), var_ref, rtol=OFFSET_VAR_RTOL, atol=0)
    # A float32 mean near 1e4 cannot be closer than half an ulp (4.9e-4): allow one ulp.
    ulp = torch.finfo(torch.float32).eps * 8192
    torch.testing.assert_close(mean.double(), x64.mean(dim=dims), rtol=0, atol=ulp)


def test_large_offset_float64() -> None:
    """float64, offset / std = 1e7: the output is the noise's own normalization."""
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(32, 3, 4, 4, generator=gen, dtype=torch.float64)
    x = 1e4 + 1e-3 * noise  # ulp(1e4) = 1.8e-12: x carries the noise to ~2e-9 relative
    y = bnlab.functional.batch_norm(x, None, None, training=True, eps=1e-20).output
    dims = (0, 2, 3)
    ref = (noise - noise.mean(dims, keepdim=True)) / noise.std(dims, correction=0, keepdim=True)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-7)


# ------------------------------------------------------------------- constant channel


@pytest.mark.parametrize("entry", ENTRY_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("value", [0.0, 0.1, 5.0, -3.3, 123.456])
@pytest.mark.parametrize(
    "shape", [(8, 3), (16, 3, 4, 4), (4, 3, 2, 3, 2)], ids=["NC", "NCHW", "NCDHW"]
)
def test_constant_channel_outputs_bias_with_finite_grads(entry, dtype, value, shape) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    x[:, 1] = value
    x.requires_grad_()
    weight = (torch.rand(3, generator=gen, dtype=dtype) + 0.5).requires_grad_()
    bias = torch.randn(3, generator=gen, dtype=dtype).requires_grad_()
    eps = 1e-5
    out = ENTRIES[entry](x, None, None, weight, bias, training=True, eps=eps)
    y = out.output
    # A mean within a few ulp of the constant leaves d = x - mean of a few ulp, scaled by
    # weight / sqrt(eps): that is the budget (float64: ~1e-12).
    ulp = torch.finfo(dtype).eps * max(abs(value), 1.0)
    atol = 4 * ulp * float(weight[1].detach()) / eps**0.5
    torch.testing.assert_close(y[:, 1], bias[1].detach().expand_as(y[:, 1]), rtol=0, atol=atol)
    grad_y = torch.randn(shape, generator=gen, dtype=dtype)
    gx, gw, gb = torch.autograd.grad(y, (x, weight, bias), grad_y)
    assert torch.isfinite(gx).all()
    assert torch.isfinite(gw).all()
    assert torch.isfinite(gb).all()
    # x_hat = 0 on the constant channel: grad_x = weight / sqrt(eps) * (g - mean(g)).
    g1 = grad_y[:, 1].double()
    expected = float(weight[1].detach()) / eps**0.5 * (g1 - g1.mean())
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(
        gx[:, 1].double(), expected, rtol=rtol, atol=rtol * expected.abs().max().item()
    )
    torch.testing.assert_close(gb[1].double(), g1.sum(), rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("entry", ENTRY_IDS)
def test_all_constant_input_with_tiny_eps(entry) -> None:
    x = torch.full((4, 2, 3), 7.25, requires_grad=True)  # exact in binary: mean is exact
    out = ENTRIES[entry](x, torch.zeros(2), torch.ones(2), training=True, eps=1e-12)
    # Exact: the sums of equal values 7.25 are exact in any order and sum / n is correctly
    # rounded, so the mean is 7.25, x - mean is 0, and y = 0 * scale + 0.
    assert torch.equal(out.output, torch.zeros_like(x))
    torch.testing.assert_close(out.running_mean, torch.full((2,), 0.725))
    torch.testing.assert_close(out.running_var, torch.full((2,), 0.9))
    (gx,) = torch.autograd.grad(out.output, x, torch.randn(4, 2, 3))
    assert torch.isfinite(gx).all()


# ------------------------------------------------------------------- 16-bit floats

# Tolerances against the float64 reference of the same 16-bit input: the output is
# rounded once to the 16-bit format (float16 2**-11, bfloat16 2**-8 relative), stats in
# float32 add nothing visible; we allow twice the rounding.
HALF_TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
HALF_IDS = ["float16", "bfloat16"]


def _half_inputs(shape, dtype, params_dtype, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3 + 2).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "permuted":
        x = x.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    c = shape[1]
    p = {
        "weight": (torch.rand(c, generator=gen) + 0.5).to(params_dtype),
        "bias": torch.randn(c, generator=gen).to(params_dtype),
        "running_mean": torch.randn(c, generator=gen).to(params_dtype),
        "running_var": (torch.rand(c, generator=gen) + 0.5).to(params_dtype),
    }
    return x, p


@pytest.mark.parametrize("entry", ENTRY_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
@pytest.mark.parametrize("params", ["float32", "same"], ids=["params_float32", "params_half"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=HALF_IDS)
def test_half_precision_training(entry, dtype, params, layout) -> None:
    params_dtype = torch.float32 if params == "float32" else dtype
    shape = (6, 3, 4, 5)
    x, p = _half_inputs(shape, dtype, params_dtype, layout)
    x.requires_grad_()
    w, b = p["weight"].clone().requires_grad_(), p["bias"].clone().requires_grad_()
    out = ENTRIES[entry](
        x, p["running_mean"], p["running_var"], w, b, training=True, momentum=0.5, eps=1e-5
    )
    tol = HALF_TOL[dtype]
    assert out.output.dtype == dtype
    assert out.running_mean.dtype == out.running_var.dtype == params_dtype
    ref, _ = _reference(x, w, b, eps=1e-5)
    torch.testing.assert_close(out.output.double(), ref, rtol=tol, atol=tol)
    if layout == "channels_last":
        assert out.output.is_contiguous(memory_format=torch.channels_last)
    # Running statistics: float32 buffers keep float32 accuracy; 16-bit ones one rounding.
    x64 = x.detach().double()
    rm_ref = 0.5 * p["running_mean"].double() + 0.5 * x64.mean((0, 2, 3))
    rv_ref = 0.5 * p["running_var"].double() + 0.5 * x64.var((0, 2, 3), correction=1)
    stat_tol = 1e-5 if params_dtype == torch.float32 else 2 * tol
    torch.testing.assert_close(out.running_mean.double(), rm_ref, rtol=stat_tol, atol=stat_tol)
    torch.testing.assert_close(out.running_var.double(), rv_ref, rtol=stat_tol, atol=stat_tol)
    # Grads: each in the dtype of its tensor, close to the float64 grads.
    gen = torch.Generator().manual_seed(9)
    grad_y = torch.randn(shape, generator=gen).to(dtype)
    gx, gw, gb = torch.autograd.grad(out.output, (x, w, b), grad_y)
    assert gx.dtype == dtype
    assert gw.dtype == gb.dtype == params_dtype
    x64r = x.detach().double().requires_grad_()
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    y64 = torch.nn.functional.batch_norm(x64r, None, None, w64, b64, training=True, eps=1e-5)
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(y64, (x64r, w64, b64), grad_y.double())
    for got, want, what in [(gx, gx_ref, "x"), (gw, gw_ref, "weight"), (gb, gb_ref, "bias")]:
        scale = want.abs().max().item()
        torch.testing.assert_close(
            got.double(),
            want,
            rtol=2 * tol,
            atol=2 * tol * scale,
            msg=lambda m, w=what: f"grad {w}: {m}",
        )


@pytest.mark.parametrize("entry", ENTRY_IDS)
@pytest.mark.parametrize("params", ["float32", "same"], ids=["params_float32", "params_half"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=HALF_IDS)
def test_half_precision_eval(entry, dtype, params) -> None:
    params_dtype = torch.float32 if params == "float32" else dtype
    x, p = _half_inputs((5, 3, 4), dtype, params_dtype, "contiguous")
    out = ENTRIES[entry](
        x, p["running_mean"], p["running_var"], p["weight"], p["bias"], training=False
    )
    assert out.output.dtype == dtype
    ref = torch.nn.functional.batch_norm(
        x.double(),
        *(p[k].double() for k in ("running_mean", "running_var", "weight", "bias")),
        training=False,
        eps=1e-5,
    )
    tol = HALF_TOL[dtype]
    torch.testing.assert_close(out.output.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("entry", ENTRY_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=HALF_IDS)
def test_half_statistics_accumulate_in_float32(entry, dtype) -> None:
    """1024 values of ~200 per channel: their float16 sum (2e5) overflows 65504."""
    gen = torch.Generator().manual_seed(4)
    x = (200 + torch.randn(64, 2, 4, 4, generator=gen)).to(dtype).requires_grad_()
    out = ENTRIES[entry](x, torch.zeros(2), torch.ones(2), training=True, momentum=1.0)
    assert torch.isfinite(out.output).all()
    x64 = x.detach().double()
    torch.testing.assert_close(out.running_mean.double(), x64.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(
        out.running_var.double(), x64.var((0, 2, 3), correction=1), rtol=1e-4, atol=0
    )
    ref, _ = _reference(x)
    tol = HALF_TOL[dtype]
    torch.testing.assert_close(out.output.double(), ref, rtol=tol, atol=tol)
    (gx,) = torch.autograd.grad(out.output, x, torch.ones_like(x))
    assert torch.isfinite(gx).all()
    # mean(grad_y) is removed exactly: a constant grad_y gives a zero input grad.
    assert gx.abs().max().item() <= 1e-2


# ------------------------------------------------------------------- non-contiguous


@pytest.mark.parametrize("entry", ENTRY_IDS)
@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.transpose(2, 3),
        lambda t: t[:, :, 1:, ::2],
        lambda t: t[::2],
        lambda t: t[:, :, :1].expand(-1, -1, 4, -1),
        lambda t: t.transpose(0, 1).contiguous().transpose(0, 1),
        lambda t: t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)[:, :, ::2],
    ],
    ids=["transposed_hw", "sliced", "batch_stride", "expanded", "channel_major", "nhwc_sliced"],
)
def test_non_contiguous_inputs_forward_and_backward(entry, make) -> None:
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(6, 3, 4, 6, generator=gen, dtype=torch.float64) * 2 + 1
    x = make(base)
    assert not x.is_contiguous()
    w = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    xr, xc = x.detach().requires_grad_(), x.detach().contiguous().requires_grad_()
    y = ENTRIES[entry](xr, None, None, w, b, training=True).output
    y_ref = ENTRIES[entry](xc, None, None, w, b, training=True).output
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, _reference(x, w, b)[0], rtol=1e-10, atol=1e-10)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, xr, g)
    (gx_ref,) = torch.autograd.grad(y_ref, xc, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)
