"""``bnlab.functional.batch_renorm``: r and d against a plain float64 reference, equality
with batch norm at r_max=1, d_max=0, gradients (r and d constant), hard cases, the
warm-up schedule and the error table."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from bnlab.functional import batch_norm, batch_norm_eval
from bnlab.functional.batch_renorm import batch_renorm, renorm_clipping, renorm_correction

F64 = torch.float64


def _batch(shape, seed, dtype=F64, scale=2.0, offset=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=F64) * scale + offset
    c = shape[1]
    params = {
        "running_mean": torch.randn(c, generator=gen, dtype=F64),
        "running_var": torch.rand(c, generator=gen, dtype=F64) + 0.5,
        "weight": torch.rand(c, generator=gen, dtype=F64) + 0.5,
        "bias": torch.randn(c, generator=gen, dtype=F64),
        "grad_y": torch.randn(shape, generator=gen, dtype=F64),
    }
    return x.to(dtype), params


def _reference_r_d(x, running_mean, running_var, eps, r_max, d_max):
    """r and d per channel, written out plainly in float64 Python."""
    x = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    rs, ds = [], []
    for c in range(x.shape[0]):
        vals = x[c].tolist()
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        sigma = math.sqrt(float(running_var[c]) + eps)
        r = math.sqrt(var + eps) / sigma
        d = (mean - float(running_mean[c])) / sigma
        rs.append(min(max(r, 1 / r_max), r_max))
        ds.append(min(max(d, -d_max), d_max))
    return torch.tensor(rs, dtype=F64), torch.tensor(ds, dtype=F64)


def _moments(x):
    dims = (0, *range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=False)


# ---------------------------------------------------------------------------- r and d


@pytest.mark.parametrize(
    ("r_max", "d_max"), [(1.0, 0.0), (1.5, 0.5), (3.0, 5.0), (math.inf, math.inf)]
)
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_r_and_d_match_a_plain_reference(r_max, d_max, scale) -> None:
    x, p = _batch((6, 4, 3), 1, scale=scale, offset=3.0)
    mean, var = _moments(x)
    r, d = renorm_correction(mean, var, p["running_mean"], p["running_var"], 1e-3, r_max, d_max)
    r_ref, d_ref = _reference_r_d(x, p["running_mean"], p["running_var"], 1e-3, r_max, d_max)
    torch.testing.assert_close(r, r_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)
    assert not r.requires_grad
    assert not d.requires_grad


def test_clipping_reaches_both_bounds() -> None:
    # channel 0: sigma_B/sigma = 10, mean far above; channel 1: 0.1, far below.
    mean = torch.tensor([100.0, -100.0], dtype=F64)
    var = torch.tensor([100.0, 0.01], dtype=F64)
    r, d = renorm_correction(
        mean, var, torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), 0.0 + 1e-300, 3.0, 5.0
    )
    torch.testing.assert_close(r, torch.tensor([3.0, 1 / 3], dtype=F64))
    torch.testing.assert_close(d, torch.tensor([5.0, -5.0], dtype=F64))


def test_running_stats_equal_to_batch_stats_give_r_1_and_d_0() -> None:
    x, p = _batch((5, 3, 4), 2)
    mean, var = _moments(x)
    r, d = renorm_correction(mean, var, mean, var, 1e-5, 3.0, 5.0)
    torch.testing.assert_close(r, torch.ones(3, dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(d, torch.zeros(3, dtype=F64), rtol=0, atol=1e-15)
    out = batch_renorm(x, mean, var, p["weight"], p["bias"], True, 0.1).output
    ref = batch_norm(x, mean, var, p["weight"], p["bias"], True, 0.1).output
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_training_output_with_explicit_r_and_d() -> None:
    x, p = _batch((6, 3, 2), 3, scale=3.0, offset=-2.0)
    out = batch_renorm(
        x,
        p["running_mean"],
        p["running_var"],
        p["weight"],
        p["bias"],
        True,
        0.1,
        1e-5,
        r_max=1.2,
        d_max=0.3,
    )
    mean, var = _moments(x)
    r, d = _reference_r_d(x, p["running_mean"], p["running_var"], 1e-5, 1.2, 0.3)
    cs = (1, 3, 1)
    x_hat = (x - mean.view(cs)) / torch.sqrt(var.view(cs) + 1e-5)
    expected = p["weight"].view(cs) * (x_hat * r.view(cs) + d.view(cs)) + p["bias"].view(cs)
    torch.testing.assert_close(out.output, expected, rtol=1e-12, atol=1e-12)


def test_unclipped_training_output_is_the_inference_output() -> None:
    """The paper's point: with r and d unclipped, train and eval outputs agree."""
    x, p = _batch((6, 3, 2), 4, scale=3.0, offset=-2.0)
    out = batch_renorm(
        x,
        p["running_mean"],
        p["running_var"],
        p["weight"],
        p["bias"],
        True,
        0.1,
        r_max=math.inf,
        d_max=math.inf,
    )
    ref = batch_norm_eval(x, p["running_mean"], p["running_var"], p["weight"], p["bias"], 1e-5)
    torch.testing.assert_close(out.output, ref, rtol=1e-12, atol=1e-12)


def test_running_stats_update_is_batch_norms() -> None:
    """Same rule as batch norm (unbiased variance, momentum as weight of the new batch)."""
    x, p = _batch((6, 3, 2), 5)
    for momentum in (0.01, 0.5, None):
        nbt = torch.tensor(4)
        out = batch_renorm(
            x,
            p["running_mean"],
            p["running_var"],
            None,
            None,
            True,
            momentum,
            num_batches_tracked=nbt,
        )
        ref = batch_norm(
            x,
            p["running_mean"],
            p["running_var"],
            None,
            None,
            True,
            momentum,
            num_batches_tracked=nbt,
        )
        # Exact: both take the statistics from batch_norm_forward's moments of the same x
        # (r and d only change the affine step) and update them with batch_norm_with.
        torch.testing.assert_close(out.running_mean, ref.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(out.running_var, ref.running_var, rtol=0, atol=0)
        assert int(out.num_batches_tracked) == 5
    assert int(nbt) == 4  # pure: inputs untouched


# ---------------------------------------------------------------------------- = batch norm


@st.composite
def cases(draw):
    rank = draw(st.integers(2, 5))
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(rank - 2))
    n = draw(st.integers(2 if math.prod(spatial) == 1 else 1, 4))
    shape = (n, draw(st.integers(1, 3)), *spatial)
    momentum = draw(st.sampled_from([0.0, 0.1, 0.7, 1.0, None]))
    affine = draw(st.booleans())
    return shape, draw(st.integers(0, 2**31 - 1)), momentum, affine


@given(cases())
def test_r_max_1_d_max_0_is_batch_norm(case) -> None:
    shape, seed, momentum, affine = case
    x, p = _batch(shape, seed)
    results, grads = [], []
    for fn in (batch_renorm, batch_norm):
        xl = x.clone().requires_grad_()
        w = p["weight"].clone().requires_grad_() if affine else None
        b = p["bias"].clone().requires_grad_() if affine else None
        kwargs = {"r_max": 1.0, "d_max": 0.0} if fn is batch_renorm else {}
        out = fn(
            xl,
            p["running_mean"],
            p["running_var"],
            w,
            b,
            True,
            momentum,
            1e-5,
            torch.tensor(2),
            **kwargs,
        )
        out.output.backward(p["grad_y"])
        results.append(out)
        grads.append([t.grad for t in (xl, w, b) if t is not None])
    ours, ref = results
    for a, e in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-13)
    for a, e in zip(*grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-13)


def test_eval_is_batch_norm_eval() -> None:
    x, p = _batch((4, 3, 2), 6)
    args = (x, p["running_mean"], p["running_var"], p["weight"], p["bias"], False, 0.1)
    out = batch_renorm(*args, r_max=2.0, d_max=1.0)
    ref = batch_norm(*args)
    # Exact: in eval batch renorm is batch_norm_with's eval forward, the same code.
    assert torch.equal(out.output, ref.output)
    assert out.running_mean is p["running_mean"]
    assert out.running_var is p["running_var"]


# ---------------------------------------------------------------------------- gradients


def _saturating_stats(x):
    """Running statistics far from the batch's: r and d sit on their bounds, so they are
    locally constant and finite differences see the stop-gradient derivative."""
    mean, var = _moments(x)
    return mean + 100.0 * torch.sqrt(var + 1e-5), var * 100.0


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(training) -> None:
    x, p = _batch((4, 3, 2), 7)
    rm, rv = _saturating_stats(x)
    x = x.requires_grad_()
    w = p["weight"].requires_grad_()
    b = p["bias"].requires_grad_()

    def f(x, w, b):
        return batch_renorm(x, rm, rv, w, b, training, 0.1, 1e-5, r_max=3.0, d_max=2.0).output

    r, d = renorm_correction(*_moments(x.detach()), rm, rv, 1e-5, 3.0, 2.0)
    assert torch.allclose(r, torch.full_like(r, 1 / 3))
    assert torch.allclose(d, torch.full_like(d, -2.0))
    assert gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_treats_r_and_d_as_constants() -> None:
    """Unclipped r and d: autograd equals the gradient of the formula with r, d detached."""
    x, p = _batch((5, 3, 3), 8)
    x1, w1, b1 = (t.clone().requires_grad_() for t in (x, p["weight"], p["bias"]))
    out = batch_renorm(
        x1, p["running_mean"], p["running_var"], w1, b1, True, 0.1, r_max=50.0, d_max=50.0
    )
    out.output.backward(p["grad_y"])

    x2, w2, b2 = (t.clone().requires_grad_() for t in (x, p["weight"], p["bias"]))
    mean, var = _moments(x2)
    r, d = _reference_r_d(x, p["running_mean"], p["running_var"], 1e-5, 50.0, 50.0)
    assert (r > 1 / 50).all()
    assert (r < 50).all()
    assert (d.abs() < 50).all()
    cs = (1, 3, 1)
    x_hat = (x2 - mean.view(cs)) / torch.sqrt(var.view(cs) + 1e-5)
    ref = w2.view(cs) * (x_hat * r.view(cs) + d.view(cs)) + b2.view(cs)
    ref.backward(p["grad_y"])
    for a, e in ((x1, x2), (w1, w2), (b1, b2)):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- hard cases


def test_large_offset_tiny_variance_float32() -> None:
    gen = torch.Generator().manual_seed(9)
    x64 = 1e4 + 1e-3 * torch.randn(16, 2, 8, generator=gen, dtype=F64)
    x = x64.float()
    mean, var = _moments(x.double())  # the float32 data, exactly
    rm = (mean + 0.5e-3).float()
    rv = (var * 2).float()
    out = batch_renorm(x, rm, rv, None, None, True, 0.1, 1e-9, r_max=3.0, d_max=5.0).output
    r, d = _reference_r_d(x, rm, rv, 1e-9, 3.0, 5.0)
    cs = (1, 2, 1)
    ref = (x.double() - mean.view(cs)) / torch.sqrt(var.view(cs) + 1e-9) * r.view(cs) + d.view(cs)
    assert (d.abs() > 0.1).all()  # d is not trivial here
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-3)


def test_constant_channel_is_finite() -> None:
    x = torch.full((4, 2, 3), 7.0, dtype=F64)
    out = batch_renorm(
        x, torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), None, None, True, 0.1
    )
    # x_hat = 0, so y = d, clipped to d_max = 5.
    torch.testing.assert_close(out.output, torch.full_like(x, 5.0))
    assert torch.isfinite(out.running_var).all()


def test_batch_of_one_raises_like_batch_norm() -> None:
    x = torch.randn(1, 3)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "batch_renorm: expected more than 1 value per channel when training, got input of shape (1, 3)"
        ),
    ):
        batch_renorm(x, torch.zeros(3), torch.ones(3), training=True)


def test_empty_batch_keeps_statistics() -> None:
    x = torch.randn(0, 3, 4)
    rm, rv, nbt = torch.zeros(3), torch.ones(3), torch.tensor(3)
    out = batch_renorm(x, rm, rv, torch.ones(3), torch.zeros(3), True, 0.1, num_batches_tracked=nbt)
    assert out.output.shape == (0, 3, 4)
    assert out.running_mean is rm
    assert out.running_var is rv
    assert out.num_batches_tracked is nbt


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype) -> None:
    x, p = _batch((8, 3, 4), 10, dtype=dtype)
    args = (
        p["running_mean"].float(),
        p["running_var"].float(),
        p["weight"].float(),
        p["bias"].float(),
    )
    out = batch_renorm(x, *args, True, 0.1, r_max=1.5, d_max=0.5)
    ref = batch_renorm(x.float(), *args, True, 0.1, r_max=1.5, d_max=0.5)
    assert out.output.dtype == dtype
    assert out.running_mean.dtype == torch.float32
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.output.float(), ref.output, rtol=tol, atol=tol)
    torch.testing.assert_close(out.running_var, ref.running_var, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, (1.0, 0.0)),
        (5_000, (1.0, 0.0)),
        (15_000, (1.0 + 2.0 * 10 / 35, 2.5)),
        (25_000, (1.0 + 2.0 * 20 / 35, 5.0)),
        (40_000, (3.0, 5.0)),
        (10**7, (3.0, 5.0)),
    ],
)
def test_renorm_clipping_paper_schedule(step, expected) -> None:
    r_max, d_max = renorm_clipping(step)
    assert r_max == pytest.approx(expected[0], rel=1e-12)
    assert d_max == pytest.approx(expected[1], rel=1e-12)


def test_renorm_clipping_is_monotone_and_scalable() -> None:
    values = [renorm_clipping(s) for s in range(0, 45_000, 500)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(values))
    assert renorm_clipping(1_500, step_scale=0.1) == renorm_clipping(15_000)
    assert renorm_clipping(4_000, step_scale=0.1) == (3.0, 5.0)


def test_renorm_clipping_unclipped_final_bounds() -> None:
    assert renorm_clipping(0, r_max_final=math.inf, d_max_final=math.inf) == (1.0, 0.0)
    assert renorm_clipping(6_000, r_max_final=math.inf, d_max_final=math.inf) == (
        math.inf,
        math.inf,
    )


# ---------------------------------------------------------------------------- errors

ERRORS = [
    (
        "r_max_below_1",
        {"r_max": 0.5},
        ValueError,
        "batch_renorm: r_max must be >= 1 (r is clipped to [1/r_max, r_max]; r_max=1 is plain batch norm), got r_max=0.5",
    ),
    ("r_max_nan", {"r_max": math.nan}, ValueError, "got r_max=nan"),
    (
        "d_max_negative",
        {"d_max": -1.0},
        ValueError,
        "batch_renorm: d_max must be >= 0 (d is clipped to [-d_max, d_max]; d_max=0 is plain batch norm), got d_max=-1.0",
    ),
    (
        "r_max_str",
        {"r_max": "3"},
        TypeError,
        "batch_renorm: r_max must be a float, got '3' of type str",
    ),
    (
        "d_max_none",
        {"d_max": None},
        TypeError,
        "batch_renorm: d_max must be a float, got None of type NoneType",
    ),
    (
        "no_running_stats",
        {"running": False},
        ValueError,
        "batch_renorm: training needs running_mean and running_var: r and d correct the batch "
        "statistics towards them; pass them (a module needs track_running_stats=True), or use "
        "batch norm for batch statistics alone",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors(kwargs, exc, message) -> None:
    kwargs = dict(kwargs)
    running = kwargs.pop("running", True)
    rm, rv = (torch.zeros(3), torch.ones(3)) if running else (None, None)
    with pytest.raises(exc, match=re.escape(message)):
        batch_renorm(torch.randn(4, 3), rm, rv, training=True, **kwargs)


SCHEDULE_ERRORS = [
    ("step_negative", {"step": -1}, ValueError, "renorm_clipping: step must be >= 0, got -1"),
    (
        "step_float",
        {"step": 1.5},
        TypeError,
        "renorm_clipping: step must be an int, got 1.5 of type float",
    ),
    (
        "warmup_after_ramp",
        {"step": 0, "warmup_steps": 30_000},
        ValueError,
        "renorm_clipping: warmup_steps=30000 must not exceed r_max_steps=40000 or d_max_steps=25000",
    ),
    (
        "negative_steps",
        {"step": 0, "d_max_steps": -5},
        ValueError,
        "renorm_clipping: d_max_steps must be an int >= 0, got -5",
    ),
    (
        "final_r_below_1",
        {"step": 0, "r_max_final": 0.9},
        ValueError,
        "renorm_clipping: r_max must be >= 1",
    ),
    (
        "step_scale_zero",
        {"step": 0, "step_scale": 0},
        ValueError,
        "renorm_clipping: step_scale must be a finite number > 0, got 0",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [e[1:] for e in SCHEDULE_ERRORS],
    ids=[e[0] for e in SCHEDULE_ERRORS],
)
def test_schedule_errors(kwargs, exc, message) -> None:
    kwargs = dict(kwargs)
    step = kwargs.pop("step")
    with pytest.raises(exc, match=re.escape(message)):
        renorm_clipping(step, **kwargs)
