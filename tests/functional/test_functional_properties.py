"""Properties of batch norm (hypothesis, float64, every rank from (N, C) to (N, C, D, H, W)).

Each property holds for ``bnlab.functional.batch_norm`` (autograd through torch ops)
and ``bnlab.autograd.batch_norm`` (closed-form backward). Tolerances are relative to
the size of the quantities compared, at ~1e-9 (float64 rounding of small reductions).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bnlab.autograd
import bnlab.functional

ENTRIES = {
    "functional": bnlab.functional.batch_norm,
    "autograd": bnlab.autograd.batch_norm,
}
ENTRY_IDS = list(ENTRIES)
F64 = torch.float64


@st.composite
def shapes(draw) -> tuple[int, ...]:
    """(N, C, *spatial) with ranks 2..5 and at least 2 values per channel."""
    rank = draw(st.integers(2, 5))
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(rank - 2))
    n = draw(st.integers(2 if math.prod(spatial) == 1 else 1, 4))
    c = draw(st.integers(1, 3))
    return (n, c, *spatial)


@st.composite
def batches(draw):
    """``(x, params)``: per-channel offsets and scales over several orders of magnitude."""
    shape = draw(shapes())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    c = shape[1]
    cs = (1, c) + (1,) * (len(shape) - 2)
    scale = 10 ** (torch.rand(c, generator=gen, dtype=F64) * 4 - 2)  # 1e-2 .. 1e2
    offset = torch.randn(c, generator=gen, dtype=F64) * 10
    x = torch.randn(shape, generator=gen, dtype=F64) * scale.view(cs) + offset.view(cs)
    params = {
        "weight": torch.rand(c, generator=gen, dtype=F64) + 0.5,
        "bias": torch.randn(c, generator=gen, dtype=F64),
        "running_mean": torch.randn(c, generator=gen, dtype=F64),
        "running_var": torch.rand(c, generator=gen, dtype=F64) + 0.5,
        "grad_y": torch.randn(shape, generator=gen, dtype=F64),
        "a": 10 ** (torch.rand(c, generator=gen, dtype=F64) * 4 - 2),
        "b": torch.randn(c, generator=gen, dtype=F64) * 100,
        "perm": torch.randperm(shape[0], generator=gen),
        "channel_perm": torch.randperm(c, generator=gen),
    }
    return x, params


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.dim()))


def _cs(x: torch.Tensor) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


EPS = st.sampled_from([1e-5, 1e-3, 0.1, 1.0])


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(data=batches(), eps=EPS)
def test_train_output_has_mean_zero_and_variance_var_over_var_plus_eps(entry, data, eps) -> None:
    x, _ = data
    y = ENTRIES[entry](x, None, None, training=True, eps=eps).output
    var = x.var(dim=_dims(x), correction=0)
    torch.testing.assert_close(y.mean(dim=_dims(x)), torch.zeros_like(var), rtol=0, atol=1e-9)
    torch.testing.assert_close(
        y.var(dim=_dims(x), correction=0), var / (var + eps), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(data=batches(), eps=EPS, a=st.floats(1e-2, 1e2), b=st.floats(-1e3, 1e3))
def test_scale_shift_invariance_with_scaled_eps(entry, data, eps, a, b) -> None:
    """y(a x + b; eps a^2) = y(x; eps) for a > 0, exactly in real arithmetic."""
    x, p = data
    f = ENTRIES[entry]
    y = f(x, None, None, p["weight"], p["bias"], training=True, eps=eps).output
    y_ab = f(a * x + b, None, None, p["weight"], p["bias"], training=True, eps=eps * a * a).output
    torch.testing.assert_close(y_ab, y, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(data=batches())
def test_per_channel_scale_shift_invariance(entry, data) -> None:
    """Per-channel a > 0 and b, with eps negligible against every channel's variance."""
    x, p = data
    a, b = p["a"].view(_cs(x)), p["b"].view(_cs(x))
    f = ENTRIES[entry]
    eps = 1e-100
    y = f(x, None, None, p["weight"], p["bias"], training=True, eps=eps).output
    y_ab = f(x * a + b, None, None, p["weight"], p["bias"], training=True, eps=eps).output
    torch.testing.assert_close(y_ab, y, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(data=batches(), momentum=st.sampled_from([0.1, 0.5, None]))
def test_batch_permutation_equivariance(entry, data, momentum) -> None:
    x, p = data
    perm = p["perm"]
    f = ENTRIES[entry]
    args = (p["running_mean"], p["running_var"], p["weight"], p["bias"])
    nbt = torch.tensor(2)
    out = f(x, *args, training=True, momentum=momentum, num_batches_tracked=nbt)
    out_p = f(x[perm], *args, training=True, momentum=momentum, num_batches_tracked=nbt)
    torch.testing.assert_close(out_p.output, out.output[perm], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_p.running_mean, out.running_mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_p.running_var, out.running_var, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(data=batches(), training=st.booleans())
def test_channel_permutation_equivariance(entry, data, training) -> None:
    """Channels are independent: permuting them with their parameters permutes the output."""
    x, p = data
    cp = p["channel_perm"]
    f = ENTRIES[entry]
    keys = ("running_mean", "running_var", "weight", "bias")
    out = f(x, *(p[k] for k in keys), training=training)
    out_p = f(x[:, cp], *(p[k][cp] for k in keys), training=training)
    torch.testing.assert_close(out_p.output, out.output[:, cp], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_p.running_var, out.running_var[cp], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(data=batches(), affine=st.booleans(), eps=EPS)
def test_input_grad_sums_to_zero_and_is_orthogonal_to_x_hat(entry, data, affine, eps) -> None:
    """Training: grad_x sums to 0 per channel and is orthogonal to x_hat (up to eps)."""
    x, p = data
    x = x.clone().requires_grad_()
    w, b = (p["weight"], p["bias"]) if affine else (None, None)
    y = ENTRIES[entry](x, None, None, w, b, training=True, eps=eps).output
    (gx,) = torch.autograd.grad(y, x, p["grad_y"])
    dims = _dims(x)
    x = x.detach()
    inv_std = (x.var(dim=dims, correction=0) + eps).rsqrt()
    # The size of the terms that cancel: |weight| * inv_std * sum |grad_y| per channel.
    k1 = inv_std if w is None else w * inv_std
    scale = k1 * p["grad_y"].abs().sum(dim=dims)
    assert (gx.sum(dim=dims).abs() / scale).max().item() < 1e-9
    # Along x_hat only eps leaks through: sum(grad_x * x_hat) = k1 * sum(g * x_hat) *
    # eps / (var + eps) (zero for eps -> 0).
    var = x.var(dim=dims, correction=0)
    x_hat = (x - x.mean(dim=dims, keepdim=True)) * inv_std.view(_cs(x))
    along = k1 * (p["grad_y"] * x_hat).sum(dim=dims) * eps / (var + eps)
    assert (((gx * x_hat).sum(dim=dims) - along).abs() / scale).max().item() < 1e-9


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(
    data=batches(),
    momentum=st.one_of(st.none(), st.floats(0.0, 1.0)),
    count=st.integers(0, 50),
)
def test_running_statistics_update_formula(entry, data, momentum, count) -> None:
    x, p = data
    nbt = torch.tensor(count)
    out = ENTRIES[entry](
        x,
        p["running_mean"],
        p["running_var"],
        training=True,
        momentum=momentum,
        num_batches_tracked=nbt,
    )
    m = 1.0 / (count + 1) if momentum is None else momentum
    dims = _dims(x)
    expected_mean = (1 - m) * p["running_mean"] + m * x.mean(dim=dims)
    expected_var = (1 - m) * p["running_var"] + m * x.var(dim=dims, correction=1)
    torch.testing.assert_close(out.running_mean, expected_mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.running_var, expected_var, rtol=1e-10, atol=1e-10)
    assert int(out.num_batches_tracked) == count + 1


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(data=batches(), eps=EPS, affine=st.booleans())
def test_eval_is_the_per_channel_affine_map_of_the_running_statistics(
    entry, data, eps, affine
) -> None:
    x, p = data
    w, b = (p["weight"], p["bias"]) if affine else (None, None)
    out = ENTRIES[entry](x, p["running_mean"], p["running_var"], w, b, training=False, eps=eps)
    cs = _cs(x)
    expected = (x - p["running_mean"].view(cs)) / (p["running_var"].view(cs) + eps).sqrt()
    if affine:
        expected = expected * p["weight"].view(cs) + p["bias"].view(cs)
    torch.testing.assert_close(out.output, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("entry", ENTRY_IDS)
@given(
    data=batches(),
    training=st.booleans(),
    momentum=st.one_of(st.none(), st.floats(0.0, 1.0)),
    track=st.booleans(),
    affine=st.booleans(),
)
def test_pure_arguments_are_never_written(entry, data, training, momentum, track, affine) -> None:
    x, p = data
    if not track:
        training = True
    args = {
        "running_mean": p["running_mean"] if track else None,
        "running_var": p["running_var"] if track else None,
        "weight": p["weight"] if affine else None,
        "bias": p["bias"] if affine else None,
        "num_batches_tracked": torch.tensor(3),
    }
    tensors = {"x": x, **{k: v for k, v in args.items() if v is not None}}
    before = {k: (v.clone(), v._version) for k, v in tensors.items()}
    ENTRIES[entry](x, **args, training=training, momentum=momentum)
    for k, v in tensors.items():
        assert torch.equal(v, before[k][0]), k  # exact: no argument may be written
        assert v._version == before[k][1], f"{k} written in place"


@given(data=batches(), training=st.booleans(), momentum=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_autograd_entry_equals_functional(data, training, momentum) -> None:
    """Same outputs, statistics and grads (x, weight, bias) through both entry points."""
    x, p = data
    results = []
    for f in ENTRIES.values():
        xr = x.clone().requires_grad_()
        w = p["weight"].clone().requires_grad_()
        b = p["bias"].clone().requires_grad_()
        out = f(
            xr,
            p["running_mean"],
            p["running_var"],
            w,
            b,
            training=training,
            momentum=momentum,
            num_batches_tracked=torch.tensor(1),
        )
        grads = torch.autograd.grad(out.output, (xr, w, b), p["grad_y"])
        results.append((out, grads))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1, o2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
