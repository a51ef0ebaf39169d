"""``bnlab.functional.norms``: layer, group and instance norm on one moments core.

Against ``torch.nn.functional`` in float64 (rtol = atol = 1e-12; only rounding
differs), purity (inputs and running statistics never mutated), the moments core
(corrected two-pass: the float32 large-offset case), a hypothesis property (each
normalized group has mean 0 and variance var / (var + eps)), 16-bit inputs, empty
batches, and one test per error message of the functional entry points.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bnlab.functional import group_norm, instance_norm, layer_norm, moments_over, normalize_over

F64 = {"rtol": 1e-12, "atol": 1e-12}


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2).to(dtype)


# ---------------------------------------------------------------------------- moments


@pytest.mark.parametrize("dims", [(0,), (1, 2), (0, 2, 3), (-1,), (3, 1)])
def test_moments_over_match_var_mean(dims: tuple[int, ...]) -> None:
    x = _randn(3, 4, 5, 6)
    d, pivot, offset, var = moments_over(x, dims)
    ref_var, ref_mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    torch.testing.assert_close(pivot + offset, ref_mean, **F64)
    torch.testing.assert_close(var, ref_var, **F64)
    torch.testing.assert_close(d, x - pivot, **F64)


def test_moments_over_large_offset_float32() -> None:
    """1e4 + 1e-3 * noise in float32: the mean and variance of the rounded values."""
    noise = _randn(16, 64, seed=1) - 2
    x = (1e4 + 1e-3 * noise).float()
    _, pivot, offset, var = moments_over(x, (1,))
    ref_var, ref_mean = torch.var_mean(x.double(), 1, correction=0, keepdim=True)
    torch.testing.assert_close((pivot.double() + offset.double()), ref_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-3, atol=0)
    x_hat, _, _ = normalize_over(x, (1,), eps=1e-12)
    expected = (x.double() - ref_mean) / ref_var.sqrt()
    assert (x_hat.double() - expected).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_moments_over_16bit_accumulate_in_float32(dtype: torch.dtype) -> None:
    x = _randn(8, 300, dtype=dtype)
    d, pivot, offset, var = moments_over(x, (1,))
    assert d.dtype == pivot.dtype == offset.dtype == var.dtype == torch.float32
    ref_var, ref_mean = torch.var_mean(x.double(), 1, correction=0, keepdim=True)
    torch.testing.assert_close((pivot + offset).double(), ref_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- vs torch


@pytest.mark.parametrize(
    ("shape", "normalized_shape"),
    [((4, 5), (5,)), ((4, 3, 5, 6), (3, 5, 6)), ((2, 4, 5, 6), (5, 6)), ((7,), 7)],
)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(shape, normalized_shape, affine: bool) -> None:
    x = _randn(*shape).requires_grad_()
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    w = _randn(*ns, seed=1) if affine else None
    b = _randn(*ns, seed=2) if affine else None
    y = layer_norm(x, normalized_shape, w, b, eps=1e-3)
    expected = F.layer_norm(x, ns, w, b, eps=1e-3)
    torch.testing.assert_close(y, expected, **F64)
    g = _randn(*shape, seed=3)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(expected, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("shape", "groups"), [((3, 4, 5, 6), 2), ((3, 6), 3), ((2, 6, 4), 1), ((2, 4, 2, 3, 4), 4)]
)
def test_group_norm_matches_torch(shape, groups: int) -> None:
    x = _randn(*shape)
    w, b = _randn(shape[1], seed=1), _randn(shape[1], seed=2)
    torch.testing.assert_close(
        group_norm(x, groups, w, b, eps=1e-4), F.group_norm(x, groups, w, b, eps=1e-4), **F64
    )
    torch.testing.assert_close(group_norm(x, groups), F.group_norm(x, groups), **F64)


@pytest.mark.parametrize("shape", [(4, 3, 7), (4, 3, 5, 6), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_matches_torch_and_is_pure(shape, use_input_stats: bool) -> None:
    x = _randn(*shape)
    c = shape[1]
    rm, rv = _randn(c, seed=1), _randn(c, seed=2).abs() + 0.5
    w, b = _randn(c, seed=3), _randn(c, seed=4)
    rm0, rv0, x0 = rm.clone(), rv.clone(), x.clone()
    out = instance_norm(x, rm, rv, w, b, use_input_stats, momentum=0.3, eps=1e-4)
    rm_t, rv_t = rm.clone(), rv.clone()
    expected = F.instance_norm(x, rm_t, rv_t, w, b, use_input_stats, momentum=0.3, eps=1e-4)
    torch.testing.assert_close(out.output, expected, **F64)
    torch.testing.assert_close(out.running_mean, rm_t, **F64)
    torch.testing.assert_close(out.running_var, rv_t, **F64)
    # Pure: nothing passed in was written (exact: no arithmetic may touch them).
    assert torch.equal(rm, rm0)
    assert torch.equal(rv, rv0)
    assert torch.equal(x, x0)
    if not use_input_stats:
        assert out.running_mean is rm
        assert out.running_var is rv


def test_instance_norm_without_running_stats_returns_none() -> None:
    x = _randn(2, 3, 5)
    out = instance_norm(x)
    assert out.running_mean is None
    assert out.running_var is None
    torch.testing.assert_close(out.output, F.instance_norm(x), **F64)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: layer_norm(x, (3, 4)),
        lambda x: group_norm(x, 3, torch.ones(3), torch.zeros(3)),
        lambda x: instance_norm(x, torch.zeros(3), torch.ones(3)).output,
    ],
    ids=["layer_norm", "group_norm", "instance_norm"],
)
def test_empty_batch(fn) -> None:
    x = torch.randn(0, 3, 4)
    y = fn(x)
    assert y.shape == x.shape


def test_instance_norm_empty_batch_keeps_running_stats() -> None:
    rm, rv = torch.zeros(3), torch.ones(3)
    out = instance_norm(torch.randn(0, 3, 4), rm, rv)
    assert out.running_mean is rm
    assert out.running_var is rv


# ---------------------------------------------------------------------------- properties


@given(
    n=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 3, 6]),
    spatial=st.integers(1, 5),
    scale=st.floats(1e-2, 1e2),
    shift=st.floats(-1e3, 1e3),
    eps=st.sampled_from([1e-5, 1e-2, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_group_norm_groups_have_mean_0_and_var_ratio(n, groups, spatial, scale, shift, eps, seed):
    """Each (sample, group) of the output: mean 0, biased variance var / (var + eps)."""
    x = _randn(n, 6, spatial, seed=seed) * scale + shift
    y = group_norm(x, groups, eps=eps).reshape(n, groups, -1)
    var_in, _ = torch.var_mean(x.reshape(n, groups, -1), 2, correction=0)
    var_out, mean_out = torch.var_mean(y, 2, correction=0)
    torch.testing.assert_close(mean_out, torch.zeros_like(mean_out), rtol=0, atol=1e-9)
    torch.testing.assert_close(var_out, var_in / (var_in + eps), rtol=1e-9, atol=1e-12)


@given(scale=st.floats(1e-2, 1e2), shift=st.floats(-1e3, 1e3), seed=st.integers(0, 2**16))
def test_layer_norm_scale_and_shift_invariant(scale, shift, seed):
    x = _randn(3, 4, 5, seed=seed)
    torch.testing.assert_close(
        layer_norm(x * scale + shift, (4, 5), eps=1e-12),
        layer_norm(x, (4, 5), eps=1e-12),
        rtol=1e-7,
        atol=1e-7,
    )


# ---------------------------------------------------------------------------- 16-bit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_16bit_inputs_compute_in_float32(dtype: torch.dtype) -> None:
    x = _randn(4, 6, 5, dtype=dtype)
    w = _randn(6, seed=1, dtype=dtype)
    resolution = 2.0**-10 if dtype == torch.float16 else 2.0**-7
    tol = {"rtol": 2 * resolution, "atol": 4 * resolution}
    cases = [
        (layer_norm(x, (6, 5)), layer_norm(x.float(), (6, 5))),
        (group_norm(x, 2, w), group_norm(x.float(), 2, w.float())),
        (instance_norm(x, weight=w).output, instance_norm(x.float(), weight=w.float()).output),
    ]
    for y, expected in cases:
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), expected.to(dtype).float(), **tol)
    out = instance_norm(x, torch.zeros(6), torch.ones(6))
    ref = instance_norm(x.float(), torch.zeros(6), torch.ones(6))
    assert out.running_mean.dtype == torch.float32
    torch.testing.assert_close(out.running_mean, ref.running_mean)
    torch.testing.assert_close(out.running_var, ref.running_var)


# ---------------------------------------------------------------------------- errors

ERRORS = [
    (
        lambda: layer_norm(torch.randn(2, 3), (4,)),
        ValueError,
        "layer_norm: normalized_shape=[4] must equal the trailing dims of the input, got input "
        "of shape (2, 3); expected an input of shape (*, 4)",
    ),
    (
        lambda: layer_norm(torch.randn(3), (2, 3)),
        ValueError,
        "layer_norm: expected an input of shape (*, 2, 3) with at least 2 dims, got 1D input "
        "of shape (3,)",
    ),
    (
        lambda: layer_norm(torch.randn(2, 3), 3, weight=torch.ones(4)),
        ValueError,
        "layer_norm: weight must have shape (3,), got shape (4,)",
    ),
    (
        lambda: group_norm(torch.randn(2, 6, 3), 4),
        ValueError,
        "group_norm: num_groups=4 must divide the 6 channels of the input of shape (2, 6, 3); "
        "choose a divisor of 6",
    ),
    (
        lambda: group_norm(torch.randn(2, 6, 3), True),
        ValueError,
        "group_norm: num_groups must be an int > 0, got True",
    ),
    (
        lambda: group_norm(torch.randn(2, 6, 3), 3, bias=torch.zeros(3)),
        ValueError,
        "group_norm: bias must have shape (6,), one value per channel of the input, got shape (3,)",
    ),
    (
        lambda: group_norm(torch.ones(2, 6, dtype=torch.uint8), 3),
        TypeError,
        "group_norm: expected a floating-point input (float16, bfloat16, float32 or float64), "
        "got dtype torch.uint8; convert it first, for example with x.float()",
    ),
    (
        lambda: instance_norm(torch.randn(2, 3)),
        ValueError,
        "instance_norm: expected an input of shape (N, C, L), (N, C, H, W) or (N, C, D, H, W) "
        "with at least 3 dims, got 2D input of shape (2, 3)",
    ),
    (
        lambda: instance_norm(torch.randn(2, 3, 4), use_input_stats=False),
        ValueError,
        "instance_norm: use_input_stats=False normalizes with running_mean and running_var, "
        "but they are None; pass them, or use use_input_stats=True",
    ),
    (
        lambda: instance_norm(torch.randn(2, 3, 4), torch.zeros(4), torch.ones(4)),
        ValueError,
        "instance_norm: running_mean must have shape (3,), one value per channel of the input, "
        "got shape (4,)",
    ),
    (
        lambda: instance_norm(torch.randn(2, 3, 4), torch.zeros(3), None),
        ValueError,
        "instance_norm: pass both running_mean and running_var, or neither",
    ),
    (
        lambda: instance_norm(torch.randn(2, 3, 4), momentum=1.5),
        ValueError,
        "instance_norm: momentum must be in [0, 1] (the weight of the new batch, PyTorch's "
        "convention; a decay of 0.9 is momentum=0.1), or None for a cumulative average, got 1.5",
    ),
]


@pytest.mark.parametrize(("make", "error", "message"), ERRORS, ids=[e[2][:45] for e in ERRORS])
def test_error_messages(make, error, message) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        make()


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((6, 3), "contiguous"),
        ((4, 3, 5), "contiguous"),
        ((4, 3, 5, 6), "contiguous"),
        ((4, 3, 5, 6), "channels_last"),
        ((2, 3, 4, 5, 6), "contiguous"),
    ],
)
def test_per_channel_moments_are_moments_over_the_reduced_dims(shape, layout) -> None:
    """``centered_moments`` (fast per-channel paths) is ``moments_over`` on dims != 1."""
    from bnlab.functional.moments import centered_moments, reduction_dims
    from bnlab.functional.norms import moments_over

    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3 + 1e3
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _, pivot, offset, var = centered_moments(x)
    _, pivot_g, offset_g, var_g = moments_over(x, reduction_dims(x.dim()))
    torch.testing.assert_close(pivot + offset, (pivot_g + offset_g).reshape(-1), rtol=0, atol=1e-4)
    torch.testing.assert_close(var, var_g.reshape(-1), rtol=1e-4, atol=1e-5)
