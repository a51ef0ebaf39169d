"""``bnlab.nn.GhostBatchNorm1d/2d/3d``: twin of ``torch.nn.BatchNorm*d`` with one virtual
batch (state_dict both ways, train steps, eval: outputs, all grads, all buffers); k
chunks equal torch's batch norm per chunk; gradcheck; hard cases; the error tables."""

from __future__ import annotations

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
from bnlab.functional.ghost import ghost_chunk_sizes

F64 = torch.float64
GHOST = {
    "BatchNorm1d": "GhostBatchNorm1d",
    "BatchNorm2d": "GhostBatchNorm2d",
    "BatchNorm3d": "GhostBatchNorm3d",
}


def _ghost(case: BNCase, **kwargs) -> torch.nn.Module:
    return getattr(bnlab.nn, GHOST[case.cls])(case.num_features, **case.kwargs, **kwargs)


# ---------------------------------------------------------------------------- one chunk


@pytest.mark.parametrize("source", ["ours_to_torch", "torch_to_ours"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_virtual_batch_is_torch_batch_norm(case, source) -> None:
    gen = torch.Generator().manual_seed(31)
    ours = _ghost(case, virtual_batch_size=case.shape[0], dtype=F64)
    theirs = case.theirs(dtype=F64)
    src, dst = (ours, theirs) if source == "ours_to_torch" else (theirs, ours)
    randomize(src, gen)
    dst.load_state_dict(src.state_dict())
    assert_twins(ours, theirs, case, F64, gen)


@given(
    rank=st.integers(2, 5),
    n=st.integers(2, 6),
    extra=st.integers(0, 3),
    momentum=st.sampled_from([0.0, 0.1, 1.0, None]),
    seed=st.integers(0, 2**31 - 1),
)
def test_one_virtual_batch_is_torch_batch_norm_property(rank, n, extra, momentum, seed) -> None:
    cls = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[rank]
    case = BNCase(cls, (n, 2) + (2,) * (rank - 2), "h", {"momentum": momentum})
    gen = torch.Generator().manual_seed(seed)
    ours, theirs = _ghost(case, virtual_batch_size=n + extra, dtype=F64), case.theirs(dtype=F64)
    randomize(theirs, gen)
    ours.load_state_dict(theirs.state_dict())
    assert_twins(ours, theirs, case, F64, gen, steps=2)


# ---------------------------------------------------------------------------- k chunks


@pytest.mark.parametrize(
    ("cls", "shape", "vbs"),
    [
        ("GhostBatchNorm1d", (12, 3), 4),
        ("GhostBatchNorm1d", (10, 3, 2), 4),
        ("GhostBatchNorm1d", (9, 3), 4),
        ("GhostBatchNorm2d", (6, 3, 2, 2), 2),
        ("GhostBatchNorm3d", (5, 2, 2, 1, 2), 2),
    ],
)
def test_k_chunks_are_torch_batch_norm_per_chunk(cls, shape, vbs) -> None:
    """Outputs and grads against torch's batch norm run on each chunk (with the same
    parameters), and the buffers against the documented rule."""
    gen = torch.Generator().manual_seed(32)
    m = getattr(bnlab.nn, cls)(shape[1], virtual_batch_size=vbs, dtype=F64)
    randomize(m, gen)
    t = torch.nn.BatchNorm3d(shape[1], dtype=F64)  # only F.batch_norm is used below
    t.load_state_dict(m.state_dict())
    x = torch.randn(shape, generator=gen, dtype=F64) * 2 + 1
    g = torch.randn(shape, generator=gen, dtype=F64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    m(x1).backward(g)
    sizes = ghost_chunk_sizes(shape[0], vbs, x[0, 0].numel())
    ref = torch.cat(
        [
            torch.nn.functional.batch_norm(c, None, None, t.weight, t.bias, True)
            for c in x2.split(sizes)
        ]
    )
    ref.backward(g)
    torch.testing.assert_close(m.weight.grad, t.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.bias.grad, t.bias.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)
    dims = (0, *range(2, x.dim()))
    chunks = x.split(sizes)
    pooled = sum((c.numel() // shape[1] - 1) * c.var(dims) for c in chunks) / (
        x.numel() // shape[1] - len(chunks)
    )
    torch.testing.assert_close(m.running_mean, 0.9 * t.running_mean + 0.1 * x.mean(dims))
    torch.testing.assert_close(m.running_var, 0.9 * t.running_var + 0.1 * pooled)
    assert int(m.num_batches_tracked) == 4  # randomize_ set 3; one step per call
    m.eval()
    t.eval()
    torch.testing.assert_close(
        m(x), torch.nn.functional.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias)
    )


def test_untracked_uses_virtual_batches_in_eval() -> None:
    m = bnlab.nn.GhostBatchNorm1d(3, track_running_stats=False, virtual_batch_size=2).eval()
    x = torch.randn(6, 3, dtype=F64)
    ref = torch.cat(
        [torch.nn.functional.batch_norm(c, None, None, training=True) for c in x.split(2)]
    )
    torch.testing.assert_close(m.double()(x), ref)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        ("GhostBatchNorm1d", (7, 2)),
        ("GhostBatchNorm2d", (5, 2, 2, 2)),
        ("GhostBatchNorm3d", (4, 2, 1, 2, 2)),
    ],
)
def test_module_gradcheck(cls, shape, training) -> None:
    gen = torch.Generator().manual_seed(33)
    m = getattr(bnlab.nn, cls)(2, virtual_batch_size=2, dtype=F64).train(training)
    randomize(m, gen)
    x = torch.randn(shape, generator=gen, dtype=F64) * 2 + 1
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
    gen = torch.Generator().manual_seed(34)
    x = (1e4 + 1e-3 * torch.randn(12, 2, 8, generator=gen, dtype=F64)).float()
    m32 = bnlab.nn.GhostBatchNorm1d(2, virtual_batch_size=4)
    m64 = bnlab.nn.GhostBatchNorm1d(2, virtual_batch_size=4, dtype=F64)
    torch.testing.assert_close(m32(x).double(), m64(x.double()), rtol=0, atol=1e-3)
    torch.testing.assert_close(m32.running_var.double(), m64.running_var, rtol=1e-4, atol=1e-9)


def test_constant_channel() -> None:
    m = bnlab.nn.GhostBatchNorm2d(2, virtual_batch_size=2)
    y = m(torch.full((6, 2, 3, 3), 5.0))
    # Exact: sums of equal values 5.0 are small multiples of 5 (exact in any order) and
    # sum / n is correctly rounded, so the mean is exactly 5, x - mean is exactly 0, and
    # y = 0 * scale + (0 - 0 * scale) = 0.
    assert torch.equal(y, torch.zeros_like(y))


def test_empty_batch_leaves_buffers_untouched() -> None:
    m = bnlab.nn.GhostBatchNorm2d(3, virtual_batch_size=2)
    randomize(m, torch.Generator().manual_seed(35))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert m(torch.randn(0, 3, 2, 2)).shape == (0, 3, 2, 2)
    # Exact: an empty batch must not write the buffers.
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_in_a_float32_module(dtype) -> None:
    gen = torch.Generator().manual_seed(36)
    x = torch.randn(10, 3, 4, 4, generator=gen) * 2 + 1
    m_half, m_ref = (
        bnlab.nn.GhostBatchNorm2d(3, virtual_batch_size=4),
        bnlab.nn.GhostBatchNorm2d(3, virtual_batch_size=4),
    )
    y = m_half(x.to(dtype).requires_grad_())
    y.float().sum().backward()
    assert y.dtype == dtype
    assert m_half.weight.grad.dtype == torch.float32
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(y.float(), m_ref(x.to(dtype).float()), rtol=tol, atol=tol)
    torch.testing.assert_close(m_half.running_var, m_ref.running_var, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", ["GhostBatchNorm2d", "GhostBatchNorm3d"])
def test_channels_last(cls) -> None:
    gen = torch.Generator().manual_seed(37)
    shape, fmt = (
        ((9, 3, 2, 3), torch.channels_last)
        if cls.endswith("2d")
        else ((9, 3, 2, 2, 3), torch.channels_last_3d)
    )
    x = torch.randn(shape, generator=gen)
    a, b = (
        getattr(bnlab.nn, cls)(3, virtual_batch_size=4),
        getattr(bnlab.nn, cls)(3, virtual_batch_size=4),
    )
    y = a(x.contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, b(x))
    torch.testing.assert_close(a.running_var, b.running_var)


def test_virtual_batch_of_one_with_spatial_dims() -> None:
    m = bnlab.nn.GhostBatchNorm2d(3, virtual_batch_size=1, dtype=F64)
    x = torch.randn(3, 3, 2, 2, dtype=F64)
    ref = torch.nn.functional.instance_norm(x)  # one sample per virtual batch
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- module contract


def test_defaults_repr_and_state_dict() -> None:
    m = bnlab.nn.GhostBatchNorm2d(3)
    assert (m.virtual_batch_size, m.momentum) == (128, 0.1)
    assert repr(m) == (
        "GhostBatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
        "track_running_stats=True, virtual_batch_size=128)"
    )
    assert list(m.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())


CONSTRUCTOR_ERRORS = [
    (
        "vbs_zero",
        {"virtual_batch_size": 0},
        ValueError,
        "GhostBatchNorm2d: virtual_batch_size must be >= 1 (samples per virtual batch), got 0",
    ),
    ("vbs_negative", {"virtual_batch_size": -4}, ValueError, "got -4"),
    (
        "vbs_float",
        {"virtual_batch_size": 32.0},
        TypeError,
        "GhostBatchNorm2d: virtual_batch_size must be an int (samples per virtual batch), got 32.0 of type float",
    ),
    ("vbs_str", {"virtual_batch_size": "32"}, TypeError, "got '32' of type str"),
    ("vbs_bool", {"virtual_batch_size": True}, TypeError, "got True of type bool"),
    ("eps_zero", {"eps": 0.0}, ValueError, "GhostBatchNorm2d: eps must be > 0"),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [e[1:] for e in CONSTRUCTOR_ERRORS],
    ids=[e[0] for e in CONSTRUCTOR_ERRORS],
)
def test_constructor_errors(kwargs, exc, message) -> None:
    with pytest.raises(exc, match=re.escape(message)):
        bnlab.nn.GhostBatchNorm2d(3, **kwargs)


def _bad_vbs_attribute():
    m = bnlab.nn.GhostBatchNorm1d(3)
    m.virtual_batch_size = 0
    return m


FORWARD_ERRORS = [
    (
        "rank",
        lambda: bnlab.nn.GhostBatchNorm2d(3),
        torch.randn(4, 3),
        ValueError,
        "GhostBatchNorm2d: expected 4D input (N, C, H, W), got 2D input of shape (4, 3)",
    ),
    (
        "channels",
        lambda: bnlab.nn.GhostBatchNorm1d(3),
        torch.randn(4, 5),
        ValueError,
        "GhostBatchNorm1d: expected 3 channels in dim 1, got 5",
    ),
    (
        "batch_of_one",
        lambda: bnlab.nn.GhostBatchNorm1d(3),
        torch.randn(1, 3),
        ValueError,
        "GhostBatchNorm1d: expected more than 1 value per channel when training, got input of shape (1, 3)",
    ),
    (
        "vbs_1_one_value",
        lambda: bnlab.nn.GhostBatchNorm1d(3, virtual_batch_size=1),
        torch.randn(4, 3),
        ValueError,
        "GhostBatchNorm1d: virtual_batch_size=1 gives virtual batches with a single value per channel "
        "(input of shape (4, 3)), which have no variance; use virtual_batch_size >= 2, or call .eval()",
    ),
    (
        "bad_vbs_attribute",
        _bad_vbs_attribute,
        torch.randn(4, 3),
        ValueError,
        "GhostBatchNorm1d: virtual_batch_size must be >= 1 (samples per virtual batch), got 0",
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


def test_virtual_batch_of_one_works_in_eval() -> None:
    m = bnlab.nn.GhostBatchNorm1d(3, virtual_batch_size=1).eval()
    assert m(torch.randn(4, 3)).shape == (4, 3)
