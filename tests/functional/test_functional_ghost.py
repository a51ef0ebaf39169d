"""``bnlab.functional.ghost``: one virtual batch is batch norm; k chunks are batch norm
per chunk; the last-chunk rule; the running-statistics rule; gradients; hard cases and
the error table."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

import bnlab.autograd
from bnlab.functional import batch_norm
from bnlab.functional.ghost import ghost_batch_norm, ghost_batch_norm_with, ghost_chunk_sizes

F64 = torch.float64


def _batch(shape, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    cs = (1, c) + (1,) * (len(shape) - 2)
    x = torch.randn(shape, generator=gen, dtype=F64) * 2 + torch.randn(
        c, generator=gen, dtype=F64
    ).view(cs)
    params = {
        "running_mean": torch.randn(c, generator=gen, dtype=F64),
        "running_var": torch.rand(c, generator=gen, dtype=F64) + 0.5,
        "weight": torch.rand(c, generator=gen, dtype=F64) + 0.5,
        "bias": torch.randn(c, generator=gen, dtype=F64),
        "grad_y": torch.randn(shape, generator=gen, dtype=F64),
    }
    return x.to(dtype), params


def _run(fn, x, p, grads=True, **kwargs):
    """Output, new statistics and the grads of (x, weight, bias) after backward(grad_y)."""
    xl = x.clone().requires_grad_()
    w = p["weight"].clone().requires_grad_()
    b = p["bias"].clone().requires_grad_()
    out = fn(
        xl,
        p["running_mean"],
        p["running_var"],
        w,
        b,
        True,
        kwargs.pop("momentum", 0.1),
        1e-5,
        torch.tensor(2),
        **kwargs,
    )
    if grads:
        out.output.backward(p["grad_y"])
    return out, (xl.grad, w.grad, b.grad)


# ---------------------------------------------------------------------------- chunks


@pytest.mark.parametrize(
    ("n", "vbs", "per_sample", "expected"),
    [
        (8, 4, 1, [4, 4]),
        (4, 4, 1, [4]),
        (3, 4, 1, [3]),
        (10, 4, 1, [4, 4, 2]),
        (9, 4, 1, [4, 5]),  # a single value is merged into the chunk before
        (9, 4, 6, [4, 4, 1]),  # one sample with 6 spatial values has a variance
        (5, 4, 1, [5]),  # merged into the only chunk: plain batch norm
        (5, 1, 4, [1, 1, 1, 1, 1]),
    ],
)
def test_chunk_sizes(n, vbs, per_sample, expected) -> None:
    assert ghost_chunk_sizes(n, vbs, per_sample) == expected


# ---------------------------------------------------------------------------- = batch norm


@st.composite
def one_chunk_cases(draw):
    rank = draw(st.integers(2, 5))
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(rank - 2))
    n = draw(st.integers(2 if math.prod(spatial) == 1 else 1, 5))
    shape = (n, draw(st.integers(1, 3)), *spatial)
    vbs = draw(st.integers(n, n + 3))
    momentum = draw(st.sampled_from([0.1, 0.5, None]))
    return shape, vbs, momentum, draw(st.integers(0, 2**31 - 1))


@given(one_chunk_cases())
def test_one_virtual_batch_is_batch_norm(case) -> None:
    shape, vbs, momentum, seed = case
    x, p = _batch(shape, seed)
    ours, g = _run(ghost_batch_norm, x, p, momentum=momentum, virtual_batch_size=vbs)
    ref, g_ref = _run(batch_norm, x, p, momentum=momentum)
    # Exact: with one virtual batch the ghost forward hands x itself to batch norm's
    # training forward, and the update is batch_norm_with's: the same code on the same bits.
    for a, e in zip((*ours, *g), (*ref, *g_ref), strict=True):
        assert torch.equal(a, e)


@pytest.mark.parametrize(
    ("shape", "vbs"),
    [
        ((8, 3), 4),
        ((10, 3), 4),
        ((9, 2, 3), 2),
        ((7, 2, 2, 3), 3),
        ((6, 2, 2, 1, 2), 1),
        ((12, 2), 3),
    ],
)
@pytest.mark.parametrize("entry", ["functional", "autograd"])
def test_k_chunks_are_batch_norm_per_chunk(shape, vbs, entry) -> None:
    x, p = _batch(shape, 11)
    train_forward = bnlab.autograd.BatchNormFunction.apply if entry == "autograd" else None
    if train_forward is None:
        out, grads = _run(ghost_batch_norm, x, p, virtual_batch_size=vbs)
    else:
        out, grads = _run(
            lambda *a, **k: ghost_batch_norm_with(train_forward, *a, **k),
            x,
            p,
            virtual_batch_size=vbs,
        )
    sizes = ghost_chunk_sizes(shape[0], vbs, math.prod(shape[2:]))
    assert len(sizes) > 1
    xl = x.clone().requires_grad_()
    w = p["weight"].clone().requires_grad_()
    b = p["bias"].clone().requires_grad_()
    ref = torch.cat([batch_norm(c, None, None, w, b, True).output for c in xl.split(sizes)])
    ref.backward(p["grad_y"])
    torch.testing.assert_close(out.output, ref, rtol=1e-12, atol=1e-12)
    for a, e in zip(grads, (xl.grad, w.grad, b.grad), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)


def test_last_single_sample_is_merged() -> None:
    x, p = _batch((9, 3), 12)
    out, _ = _run(ghost_batch_norm, x, p, grads=False, virtual_batch_size=4)
    w, b = p["weight"], p["bias"]
    ref = torch.cat(
        [
            batch_norm(x[:4], None, None, w, b, True).output,
            batch_norm(x[4:], None, None, w, b, True).output,
        ]
    )
    torch.testing.assert_close(out.output, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- running stats


@pytest.mark.parametrize(("shape", "vbs"), [((8, 3, 2), 2), ((10, 3), 4), ((9, 3), 4)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_stats_rule(shape, vbs, momentum) -> None:
    """One step per call with the batch mean and the pooled within-chunk unbiased variance."""
    x, p = _batch(shape, 13)
    out, _ = _run(ghost_batch_norm, x, p, grads=False, momentum=momentum, virtual_batch_size=vbs)
    per_sample = math.prod(shape[2:])
    chunks = x.split(ghost_chunk_sizes(shape[0], vbs, per_sample))
    dims = (0, *range(2, x.dim()))
    m = x.numel() // shape[1]
    pooled = sum((c.numel() // shape[1] - 1) * c.var(dims) for c in chunks) / (m - len(chunks))
    factor = 1 / 3 if momentum is None else momentum  # num_batches_tracked 2 -> 3
    torch.testing.assert_close(
        out.running_mean, (1 - factor) * p["running_mean"] + factor * x.mean(dims)
    )
    torch.testing.assert_close(out.running_var, (1 - factor) * p["running_var"] + factor * pooled)
    assert int(out.num_batches_tracked) == 3


def test_equal_chunks_pool_to_the_mean_of_unbiased_variances() -> None:
    x, _p = _batch((12, 2, 3), 14)
    out = ghost_batch_norm(
        x,
        torch.zeros(2, dtype=F64),
        torch.zeros(2, dtype=F64),
        training=True,
        momentum=1.0,
        virtual_batch_size=4,
    )
    expected = torch.stack([c.var((0, 2)) for c in x.split(4)]).mean(0)
    torch.testing.assert_close(out.running_var, expected, rtol=1e-13, atol=1e-13)


def test_untracked_and_eval() -> None:
    x, p = _batch((8, 3), 15)
    untracked = ghost_batch_norm(x, None, None, training=True, virtual_batch_size=4)
    assert untracked.running_mean is None
    ev = ghost_batch_norm(
        x, p["running_mean"], p["running_var"], p["weight"], p["bias"], False, virtual_batch_size=4
    )
    ref = batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"], False)
    # Exact: in eval ghost batch norm is batch_norm_with's eval forward, the same code.
    assert torch.equal(ev.output, ref.output)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("shape", "vbs"), [((5, 2, 2), 2), ((6, 2), 3)])
def test_gradcheck(shape, vbs, training) -> None:
    x, p = _batch(shape, 16)
    rm, rv = p["running_mean"], p["running_var"]

    def f(x, w, b):
        return ghost_batch_norm(x, rm, rv, w, b, training, virtual_batch_size=vbs).output

    args = (x.requires_grad_(), p["weight"].requires_grad_(), p["bias"].requires_grad_())
    assert gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------- hard cases


def test_large_offset_tiny_variance_float32() -> None:
    gen = torch.Generator().manual_seed(17)
    x = (1e4 + 1e-3 * torch.randn(8, 2, 6, generator=gen, dtype=F64)).float()
    out = ghost_batch_norm(x, None, None, training=True, virtual_batch_size=4).output
    x64 = x.double()
    ref = torch.cat([batch_norm(c, None, None, training=True).output for c in x64.split(4)])
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-3)


def test_constant_channel_is_finite() -> None:
    x = torch.randn(8, 2, 3, dtype=F64)
    x[:, 1] = 3.0
    out = ghost_batch_norm(
        x, torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), training=True, virtual_batch_size=4
    )
    assert torch.isfinite(out.output).all()
    # Exact: sums of equal values 3.0 are exact in any order and sum / n is correctly
    # rounded, so each chunk's mean is 3.0, x - mean is 0, and y = 0 * scale + 0.
    assert torch.equal(out.output[:, 1], torch.zeros(8, 3, dtype=F64))
    assert out.running_var[1] == pytest.approx(0.9)


def test_empty_batch_keeps_statistics() -> None:
    rm, rv, nbt = torch.zeros(3), torch.ones(3), torch.tensor(0)
    out = ghost_batch_norm(
        torch.randn(0, 3, 2), rm, rv, training=True, num_batches_tracked=nbt, virtual_batch_size=2
    )
    assert out.output.shape == (0, 3, 2)
    assert out.running_mean is rm
    assert out.num_batches_tracked is nbt


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype) -> None:
    x, _ = _batch((10, 3, 4), 18, dtype=dtype)
    out = ghost_batch_norm(x, torch.zeros(3), torch.ones(3), training=True, virtual_batch_size=4)
    ref = ghost_batch_norm(
        x.float(), torch.zeros(3), torch.ones(3), training=True, virtual_batch_size=4
    )
    assert out.output.dtype == dtype
    assert out.running_var.dtype == torch.float32
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.output.float(), ref.output, rtol=tol, atol=tol)
    torch.testing.assert_close(out.running_var, ref.running_var, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [8, 9])
def test_channels_last_and_non_contiguous(n) -> None:
    x, _ = _batch((n, 3, 2, 4), 19)
    ref = ghost_batch_norm(x, None, None, training=True, virtual_batch_size=3).output
    cl = ghost_batch_norm(
        x.contiguous(memory_format=torch.channels_last),
        None,
        None,
        training=True,
        virtual_batch_size=3,
    ).output
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref, rtol=1e-12, atol=1e-12)
    sliced = torch.cat([x, x], dim=3)[..., ::2].clone()
    nc = torch.cat([x, x], dim=3)[..., ::2]
    assert not nc.is_contiguous()
    torch.testing.assert_close(
        ghost_batch_norm(nc, None, None, training=True, virtual_batch_size=3).output,
        ghost_batch_norm(sliced, None, None, training=True, virtual_batch_size=3).output,
    )


def test_virtual_batch_of_one_sample_with_spatial_dims_normalizes_each_sample() -> None:
    x, _ = _batch((4, 2, 5), 20)
    out = ghost_batch_norm(x, None, None, training=True, virtual_batch_size=1).output
    ref = torch.cat([batch_norm(c, None, None, training=True).output for c in x.split(1)])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- errors

ERRORS = [
    (
        "vbs_zero",
        (8, 3),
        {"virtual_batch_size": 0},
        ValueError,
        "ghost_batch_norm: virtual_batch_size must be >= 1 (samples per virtual batch), got 0",
    ),
    ("vbs_negative", (8, 3), {"virtual_batch_size": -2}, ValueError, "got -2"),
    (
        "vbs_float",
        (8, 3),
        {"virtual_batch_size": 4.0},
        TypeError,
        "ghost_batch_norm: virtual_batch_size must be an int (samples per virtual batch), got 4.0 of type float",
    ),
    ("vbs_bool", (8, 3), {"virtual_batch_size": True}, TypeError, "got True of type bool"),
    ("vbs_none", (8, 3), {"virtual_batch_size": None}, TypeError, "got None of type NoneType"),
    (
        "vbs_1_one_value",
        (4, 3),
        {"virtual_batch_size": 1},
        ValueError,
        "ghost_batch_norm: virtual_batch_size=1 gives virtual batches with a single value per channel "
        "(input of shape (4, 3)), which have no variance; use virtual_batch_size >= 2, or call .eval() "
        "to normalize with the running statistics",
    ),
    (
        "batch_of_one",
        (1, 3),
        {"virtual_batch_size": 4},
        ValueError,
        "ghost_batch_norm: expected more than 1 value per channel when training, got input of shape (1, 3)",
    ),
]


@pytest.mark.parametrize(
    ("shape", "kwargs", "exc", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors(shape, kwargs, exc, message) -> None:
    with pytest.raises(exc, match=re.escape(message)):
        ghost_batch_norm(torch.randn(shape), torch.zeros(3), torch.ones(3), training=True, **kwargs)
