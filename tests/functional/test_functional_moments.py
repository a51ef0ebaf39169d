"""``bnlab.functional.batch_moments`` and ``reduction_dims``: per-channel statistics over
every dim but 1, for every rank and memory layout, accumulated in float32 for 16-bit
inputs; plus batch norm on tensors above the small-tensor fast path (> 2**20 elements)."""

from __future__ import annotations

import pytest
import torch

import bnlab.autograd
import bnlab.functional
from bnlab.functional import batch_moments, reduction_dims


@pytest.mark.parametrize(
    ("ndim", "dims"), [(2, (0,)), (3, (0, 2)), (4, (0, 2, 3)), (5, (0, 2, 3, 4))]
)
def test_reduction_dims(ndim, dims) -> None:
    assert tuple(reduction_dims(ndim)) == dims


LAYOUTS = {
    "contiguous": lambda t: t,
    "permuted": lambda t: (
        t.permute(*reversed(range(t.dim()))).contiguous().permute(*reversed(range(t.dim())))
    ),
    "sliced": lambda t: torch.stack([t, t], dim=-1)[..., 1],
    "channels_last": lambda t: t.contiguous(
        memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    ),
    "expanded": lambda t: t.narrow(-1, 0, 1).expand(t.shape),
}
CASES = [
    (shape, layout)
    for shape in [(7, 3), (4, 3, 5), (3, 2, 4, 5), (2, 3, 2, 3, 4)]
    for layout in LAYOUTS
    if layout != "channels_last" or len(shape) >= 4
]
CASE_IDS = [f"{len(s)}D-{layout}" for s, layout in CASES]


@pytest.mark.parametrize(
    "dtype",
    [torch.float64, torch.float32, torch.float16, torch.bfloat16],
    ids=["float64", "float32", "float16", "bfloat16"],
)
@pytest.mark.parametrize(("shape", "layout"), CASES, ids=CASE_IDS)
def test_batch_moments_against_float64(shape, layout, dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = LAYOUTS[layout]((torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5).to(dtype))
    before = x.clone()
    mean, var = batch_moments(x)
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    assert mean.dtype == var.dtype == acc
    assert mean.shape == var.shape == (shape[1],)
    x64 = x.double()
    dims = reduction_dims(x.dim())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(mean.double(), x64.mean(dims), rtol=tol, atol=tol)
    torch.testing.assert_close(var.double(), x64.var(dims, correction=0), rtol=tol, atol=tol)
    assert torch.equal(x, before)  # exact: the input must not be written


def test_batch_moments_of_a_constant_is_exact() -> None:
    mean, var = batch_moments(torch.full((5, 2, 3), 0.75))
    # Exact in float arithmetic too: the sums of equal values 0.75 are small multiples of
    # 0.75 (exact in any order) and sum / n is correctly rounded, so the pivot is exactly
    # 0.75 and every deviation from it is exactly 0.
    assert torch.equal(mean, torch.full((2,), 0.75))
    assert torch.equal(var, torch.zeros(2))


# ------------------------------------------------------------------- large tensors


@pytest.mark.parametrize("entry", ["functional", "autograd"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_above_2_pow_20_elements(entry, layout) -> None:
    """2 * 4 * 384 * 384 = 1.18e6 elements: the large-tensor code paths, float32."""
    f = {"functional": bnlab.functional.batch_norm, "autograd": bnlab.autograd.batch_norm}[entry]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 384, 384, generator=gen) * 2 + 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(4, generator=gen) + 0.5, torch.randn(4, generator=gen)
    rm, rv = torch.randn(4, generator=gen), torch.rand(4, generator=gen) + 0.5
    before = x.clone()
    for training in (True, False):
        out = f(x, rm, rv, w, b, training=training)
        ref = torch.nn.functional.batch_norm(
            x.double(), rm.double(), rv.double(), w.double(), b.double(), training=training
        )
        torch.testing.assert_close(out.output.double(), ref, rtol=1e-5, atol=2e-5)
        if layout == "channels_last":
            assert out.output.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, before)  # exact: the input must not be written
    xr = x.clone().requires_grad_()
    g = torch.randn(x.shape, generator=gen)
    (gx,) = torch.autograd.grad(f(xr, None, None, w, b, training=True).output, xr, g)
    x64 = x.double().requires_grad_()
    y64 = torch.nn.functional.batch_norm(x64, None, None, w.double(), b.double(), training=True)
    (gx64,) = torch.autograd.grad(y64, x64, g.double())
    torch.testing.assert_close(gx.double(), gx64, rtol=1e-4, atol=1e-5 * gx64.abs().max().item())
