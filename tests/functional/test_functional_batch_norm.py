"""``bnlab.functional.batch_norm`` (and ``bnlab.autograd.batch_norm``, same contract).

Compared with ``torch.nn.functional.batch_norm`` (which updates running statistics in
place, on clones here) over every rank and input layout; purity; the running-statistics
formulas; the empty batch; and one test per error message.

Tolerances: float64 rtol = atol = 1e-10; float32 rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import bnlab.autograd
import bnlab.functional
from bnlab.functional import BatchNormOutput

# Each test runs on the torch-ops path, the kernels and the kernels without the C++
# node (the ``implementation`` fixture of tests/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")


ENTRIES = {
    "functional": bnlab.functional.batch_norm,
    "autograd": bnlab.autograd.batch_norm,
}

SHAPES = [(6, 3), (4, 3, 5), (3, 2, 4, 3), (2, 2, 3, 2, 3)]
SHAPE_IDS = ["NC", "NCL", "NCHW", "NCDHW"]
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-5)}


def _layouts(shape: tuple[int, ...]) -> dict[str, Callable[[Tensor], Tensor]]:
    """Ways of presenting a tensor of ``shape`` (the values stay the same)."""
    out: dict[str, Callable[[Tensor], Tensor]] = {"contiguous": lambda t: t}
    nd = len(shape)
    order = tuple(reversed(range(nd)))
    out["permuted"] = lambda t: t.permute(order).contiguous().permute(order)
    out["sliced"] = lambda t: torch.stack([t, t], dim=-1)[..., 0]
    if nd == 4:
        out["channels_last"] = lambda t: t.contiguous(memory_format=torch.channels_last)
    if nd == 5:
        out["channels_last"] = lambda t: t.contiguous(memory_format=torch.channels_last_3d)
    return out


LAYOUT_CASES = [(shape, layout) for shape in SHAPES for layout in _layouts(shape)]
LAYOUT_IDS = [f"{len(s)}D-{layout}" for s, layout in LAYOUT_CASES]


def _data(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2
    stats = {
        "running_mean": torch.randn(c, generator=gen, dtype=torch.float64),
        "running_var": torch.rand(c, generator=gen, dtype=torch.float64) + 0.5,
        "weight": torch.rand(c, generator=gen, dtype=torch.float64) + 0.5,
        "bias": torch.randn(c, generator=gen, dtype=torch.float64),
    }
    return x.to(dtype), {k: v.to(dtype) for k, v in stats.items()}


def _torch_reference(x, p, training, momentum, eps, affine=True, track=True):
    rm = p["running_mean"].clone() if track else None
    rv = p["running_var"].clone() if track else None
    y = torch.nn.functional.batch_norm(
        x,
        rm,
        rv,
        p["weight"] if affine else None,
        p["bias"] if affine else None,
        training=training,
        momentum=momentum,
        eps=eps,
    )
    return y, rm, rv


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("shape", "layout"), LAYOUT_CASES, ids=LAYOUT_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_torch_functional(entry, dtype, shape, layout, training) -> None:
    x, p = _data(shape, dtype)
    x = _layouts(shape)[layout](x)
    rtol, atol = TOL[dtype]
    nbt = torch.tensor(5)
    out = ENTRIES[entry](
        x,
        p["running_mean"],
        p["running_var"],
        p["weight"],
        p["bias"],
        training=training,
        momentum=0.2,
        eps=1e-3,
        num_batches_tracked=nbt,
    )
    y_ref, rm_ref, rv_ref = _torch_reference(x, p, training, 0.2, 1e-3)
    assert isinstance(out, BatchNormOutput)
    assert out.output.dtype == dtype
    torch.testing.assert_close(out.output, y_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(out.running_mean, rm_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(out.running_var, rv_ref, rtol=rtol, atol=atol)
    assert int(out.num_batches_tracked) == (6 if training else 5)
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert out.output.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(
    ("affine", "track", "training"),
    [(False, True, True), (True, False, True), (False, False, True), (False, True, False)],
    ids=["affine_off", "untracked", "bare", "affine_off_eval"],
)
def test_options_match_torch_functional(entry, shape, affine, track, training) -> None:
    x, p = _data(shape, torch.float64, seed=1)
    out = ENTRIES[entry](
        x,
        p["running_mean"] if track else None,
        p["running_var"] if track else None,
        p["weight"] if affine else None,
        p["bias"] if affine else None,
        training=training,
        momentum=0.1,
        eps=1e-5,
    )
    y_ref, rm_ref, rv_ref = _torch_reference(x, p, training, 0.1, 1e-5, affine, track)
    torch.testing.assert_close(out.output, y_ref, rtol=1e-10, atol=1e-10)
    if track:
        torch.testing.assert_close(out.running_mean, rm_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out.running_var, rv_ref, rtol=1e-10, atol=1e-10)
    else:
        assert out.running_mean is None
        assert out.running_var is None
    assert out.num_batches_tracked is None


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0, None])
def test_running_statistics_formula(entry, momentum) -> None:
    """running = (1 - m) * running + m * batch; var unbiased; m = 1/nbt for None."""
    x, p = _data((5, 3, 4), torch.float64, seed=2)
    nbt = torch.tensor(3)
    out = ENTRIES[entry](
        x,
        p["running_mean"],
        p["running_var"],
        training=True,
        momentum=momentum,
        num_batches_tracked=nbt,
    )
    m = 1.0 / 4 if momentum is None else momentum
    mean = x.mean(dim=(0, 2))
    var_unbiased = x.var(dim=(0, 2), correction=1)
    torch.testing.assert_close(
        out.running_mean, (1 - m) * p["running_mean"] + m * mean, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        out.running_var, (1 - m) * p["running_var"] + m * var_unbiased, rtol=1e-12, atol=1e-12
    )
    assert out.num_batches_tracked.dtype == torch.long
    assert int(out.num_batches_tracked) == 4
    assert int(nbt) == 3  # the caller's counter is not incremented in place


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
def test_cumulative_average_over_batches_is_the_plain_mean(entry) -> None:
    """momentum=None from a fresh counter: running_mean is the mean of the batch means."""
    gen = torch.Generator().manual_seed(3)
    rm, rv, nbt = (
        torch.zeros(2, dtype=torch.float64),
        torch.ones(2, dtype=torch.float64),
        torch.tensor(0),
    )
    batches = [
        torch.randn(4, 2, 3, generator=gen, dtype=torch.float64) * (i + 1) + i for i in range(5)
    ]
    for xb in batches:
        _, rm, rv, nbt = ENTRIES[entry](
            xb, rm, rv, training=True, momentum=None, num_batches_tracked=nbt
        )
    means = torch.stack([xb.mean(dim=(0, 2)) for xb in batches])
    vars_ = torch.stack([xb.var(dim=(0, 2), correction=1) for xb in batches])
    torch.testing.assert_close(rm, means.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, vars_.mean(0), rtol=1e-12, atol=1e-12)
    assert int(nbt) == 5


def test_counter_stays_none_when_not_passed() -> None:
    x, p = _data((4, 3), torch.float64)
    out = bnlab.functional.batch_norm(x, p["running_mean"], p["running_var"], training=True)
    assert out.num_batches_tracked is None


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_pure_inputs_unchanged(entry, training, shape) -> None:
    """No argument is written to: same values and the same version counter."""
    x, p = _data(shape, torch.float32)
    nbt = torch.tensor(2)
    args = {"x": x, **p, "num_batches_tracked": nbt}
    copies = {k: v.clone() for k, v in args.items()}
    versions = {k: v._version for k, v in args.items()}
    out = ENTRIES[entry](
        x,
        p["running_mean"],
        p["running_var"],
        p["weight"],
        p["bias"],
        training=training,
        momentum=0.3,
        eps=1e-5,
        num_batches_tracked=nbt,
    )
    for k, v in args.items():
        assert torch.equal(v, copies[k]), k  # exact: no input may be written
        assert v._version == versions[k], f"{k} was written in place"
    assert out.output.data_ptr() != x.data_ptr()
    if training:
        assert out.running_mean.data_ptr() != p["running_mean"].data_ptr()
        assert out.running_var.data_ptr() != p["running_var"].data_ptr()
        assert out.num_batches_tracked.data_ptr() != nbt.data_ptr()
    # A later in-place change of the output must not reach the inputs either.
    out.output.add_(1)
    assert torch.equal(x, copies["x"])  # exact: x must not be written


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_pure_for_every_dtype_and_layout(entry, dtype) -> None:
    x, p = _data((3, 2, 4, 3), dtype)
    for layout, make in _layouts((3, 2, 4, 3)).items():
        xl = make(x)
        before, version = xl.clone(), xl._version
        for training in (True, False):
            ENTRIES[entry](
                xl, p["running_mean"], p["running_var"], p["weight"], p["bias"], training=training
            )
        assert torch.equal(xl, before), layout  # exact: x must not be written
        assert xl._version == version, layout


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
def test_eval_returns_the_statistics_it_was_given(entry) -> None:
    x, p = _data((4, 3, 2), torch.float64)
    nbt = torch.tensor(7)
    out = ENTRIES[entry](
        x, p["running_mean"], p["running_var"], training=False, num_batches_tracked=nbt
    )
    # Exact: eval passes the statistics through, no arithmetic.
    assert torch.equal(out.running_mean, p["running_mean"])
    assert torch.equal(out.running_var, p["running_var"])
    assert int(out.num_batches_tracked) == 7


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_empty_batch(entry, training, shape) -> None:
    _, p = _data(shape, torch.float64)
    x = torch.randn((0, *shape[1:]), dtype=torch.float64, requires_grad=True)
    w = p["weight"].clone().requires_grad_()
    b = p["bias"].clone().requires_grad_()
    nbt = torch.tensor(4)
    out = ENTRIES[entry](
        x,
        p["running_mean"],
        p["running_var"],
        w,
        b,
        training=training,
        momentum=None,
        num_batches_tracked=nbt,
    )
    assert out.output.shape == x.shape
    assert out.output.dtype == x.dtype
    # Exact: an empty batch passes the statistics through, and sums over it are 0.
    assert torch.equal(out.running_mean, p["running_mean"])
    assert torch.equal(out.running_var, p["running_var"])
    assert int(out.num_batches_tracked) == 4
    out.output.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
def test_empty_batch_untracked_and_half(entry) -> None:
    x = torch.randn(0, 3, 4, 4).half().contiguous(memory_format=torch.channels_last)
    out = ENTRIES[entry](x, None, None, torch.ones(3), torch.zeros(3), training=True)
    assert out.output.shape == x.shape
    assert out.output.dtype == torch.float16
    assert out.running_mean is None


# ------------------------------------------------------------------- errors

X = torch.randn(4, 3, 5)
C3 = torch.ones(3)
C4 = torch.ones(4)

ERRORS = [
    # (desc, kwargs overriding the defaults, exception, rendered message part)
    (
        "rank_1",
        {"x": torch.randn(5)},
        ValueError,
        "batch_norm: expected an input of shape (N, C, *) with at least 2 dims, "
        "got 1D input of shape (5,)",
    ),
    (
        "rank_0",
        {"x": torch.tensor(1.0)},
        ValueError,
        "got 0D input of shape ()",
    ),
    (
        "int_dtype",
        {"x": torch.ones(4, 3, dtype=torch.int32)},
        TypeError,
        "batch_norm: expected a floating-point input (float16, bfloat16, float32 or float64), "
        "got dtype torch.int32",
    ),
    (
        "complex_dtype",
        {"x": torch.ones(4, 3, dtype=torch.complex128)},
        TypeError,
        "got dtype torch.complex128",
    ),
    (
        "not_a_tensor",
        {"x": [[1.0, 2.0]]},
        TypeError,
        "batch_norm: expected a torch.Tensor input, got list",
    ),
    (
        "weight_shape",
        {"weight": C4},
        ValueError,
        "batch_norm: weight must have shape (3,), one value per channel of the input, got shape (4,)",
    ),
    (
        "bias_shape",
        {"bias": torch.ones(3, 1)},
        ValueError,
        "batch_norm: bias must have shape (3,), one value per channel of the input, got shape (3, 1)",
    ),
    (
        "running_mean_shape",
        {"running_mean": C4, "running_var": C3},
        ValueError,
        "batch_norm: running_mean must have shape (3,), one value per channel of the input, "
        "got shape (4,)",
    ),
    (
        "running_var_shape",
        {"running_mean": C3, "running_var": torch.ones(())},
        ValueError,
        "batch_norm: running_var must have shape (3,), one value per channel of the input, "
        "got shape ()",
    ),
    (
        "weight_not_a_tensor",
        {"weight": [1.0, 1.0, 1.0]},
        TypeError,
        "batch_norm: weight must be a torch.Tensor or None, got list",
    ),
    (
        "only_running_mean",
        {"running_mean": C3, "running_var": None},
        ValueError,
        "batch_norm: pass both running_mean and running_var, or neither",
    ),
    (
        "only_running_var",
        {"running_mean": None, "running_var": C3, "training": True},
        ValueError,
        "batch_norm: pass both running_mean and running_var, or neither",
    ),
    (
        "eval_without_running_stats",
        {"running_mean": None, "running_var": None, "training": False},
        ValueError,
        "batch_norm: training=False normalizes with running_mean and running_var, but they are None",
    ),
    (
        "momentum_none_without_counter",
        {"momentum": None, "training": True},
        ValueError,
        "batch_norm: momentum=None (cumulative average) needs num_batches_tracked",
    ),
    (
        "eps_zero",
        {"eps": 0.0},
        ValueError,
        "batch_norm: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got 0.0",
    ),
    (
        "eps_negative",
        {"eps": -1.0},
        ValueError,
        "batch_norm: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got -1.0",
    ),
    (
        "momentum_above_1",
        {"momentum": 1.01},
        ValueError,
        "batch_norm: momentum must be in [0, 1] (the weight of the new batch, PyTorch's "
        "convention; a decay of 0.9 is momentum=0.1), or None for a cumulative average, got 1.01",
    ),
    ("momentum_negative", {"momentum": -0.5}, ValueError, "got -0.5"),
    (
        "one_value_per_channel",
        {"x": torch.randn(1, 3), "training": True},
        ValueError,
        "batch_norm: expected more than 1 value per channel when training, got input of shape (1, 3)",
    ),
    (
        "one_value_per_channel_untracked",
        {"x": torch.randn(1, 3, 1, 1), "running_mean": None, "running_var": None, "training": True},
        ValueError,
        "batch_norm: expected more than 1 value per channel when training, "
        "got input of shape (1, 3, 1, 1)",
    ),
]


@pytest.mark.parametrize("entry", list(ENTRIES), ids=list(ENTRIES))
@pytest.mark.parametrize(
    ("overrides", "exc", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors(entry, overrides, exc, message) -> None:
    kwargs = {
        "x": X,
        "running_mean": torch.zeros(3),
        "running_var": torch.ones(3),
        "weight": C3,
        "bias": C3,
        "training": False,
        "momentum": 0.1,
        "eps": 1e-5,
        "num_batches_tracked": None,
        **overrides,
    }
    x = kwargs.pop("x")
    with pytest.raises(exc, match=re.escape(message)):
        ENTRIES[entry](x, **kwargs)


def test_autograd_errors_carry_the_given_name() -> None:
    with pytest.raises(ValueError, match=re.escape("MyNorm: weight must have shape (3,)")):
        bnlab.autograd.batch_norm(X, None, None, C4, training=True, name="MyNorm")


def test_one_value_per_channel_in_eval_is_fine() -> None:
    x = torch.randn(1, 3, dtype=torch.float64)
    out = bnlab.functional.batch_norm(
        x, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    )
    torch.testing.assert_close(out.output, x / (1 + 1e-5) ** 0.5, rtol=1e-12, atol=1e-12)


# batch_norm_eval is public: it checks its arguments like batch_norm(training=False).
EVAL_ERRORS = [
    (
        lambda: bnlab.functional.batch_norm_eval(
            torch.randn(3), torch.zeros(3), torch.ones(3), None, None, 1e-5
        ),
        ValueError,
        "batch_norm_eval: expected an input of shape (N, C, *) with at least 2 dims, got 1D "
        "input of shape (3,)",
    ),
    (
        lambda: bnlab.functional.batch_norm_eval(
            torch.ones(2, 3, dtype=torch.long), torch.zeros(3), torch.ones(3), None, None, 1e-5
        ),
        TypeError,
        "batch_norm_eval: expected a floating-point input (float16, bfloat16, float32 or "
        "float64), got dtype torch.int64; convert it first, for example with x.float()",
    ),
    (
        lambda: bnlab.functional.batch_norm_eval(
            torch.randn(2, 3), torch.zeros(3), torch.ones(3), None, None, -1.0
        ),
        ValueError,
        None,
    ),
    (
        lambda: bnlab.functional.batch_norm_eval(
            torch.randn(2, 3), torch.zeros(4), torch.ones(3), None, None, 1e-5
        ),
        ValueError,
        "batch_norm_eval: running_mean must have shape (3,), one value per channel of the "
        "input, got shape (4,)",
    ),
    (
        lambda: bnlab.functional.batch_norm_eval(
            torch.randn(2, 3), None, torch.ones(3), None, None, 1e-5
        ),
        TypeError,
        "batch_norm_eval: running_mean must be a tensor of shape (C,), got NoneType",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), EVAL_ERRORS)
def test_batch_norm_eval_checks_its_arguments(call, error, message) -> None:
    with pytest.raises(error) as exc:
        call()
    if message is not None:
        assert str(exc.value) == message
    else:
        assert str(exc.value).startswith("batch_norm_eval: eps must be")


def test_batch_norm_eval_equals_batch_norm_in_eval() -> None:
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    w, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    expected = bnlab.functional.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3).output
    torch.testing.assert_close(bnlab.functional.batch_norm_eval(x, rm, rv, w, b, 1e-3), expected)
