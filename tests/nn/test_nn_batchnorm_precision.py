"""Modules with float16/bfloat16 inputs (module in float32 and in the 16-bit dtype) and
with a large offset, against a float64 ``torch.nn`` twin fed the same rounded input.

Tolerances: outputs within twice the rounding of the 16-bit format (float16 1e-3,
bfloat16 8e-3, relative and absolute); running statistics within 1e-5 for float32
buffers and 2 roundings per step for 16-bit buffers (float16 4e-3, bfloat16 3e-2).
"""

from __future__ import annotations

import pytest
import torch
from bn_module_cases import BNCase
from bn_module_cases import randomize_ as randomize

HALF = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
HALF_IDS = ["float16", "bfloat16"]
CASES = [
    BNCase("BatchNorm1d", (8, 3), "2d_input"),
    BNCase("BatchNorm1d", (4, 3, 5), "3d_input"),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "default"),
    BNCase("BatchNorm2d", (4, 3, 5, 6), "momentum_none", {"momentum": None}),
    BNCase("BatchNorm3d", (3, 3, 2, 3, 4), "default"),
]


CASE_LAYOUTS = [
    (case, layout)
    for case in CASES
    for layout in ["contiguous", "channels_last"]
    if layout == "contiguous" or len(case.shape) >= 4
]


@pytest.mark.parametrize("module_dtype", ["float32", "half"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=HALF_IDS)
@pytest.mark.parametrize(
    ("case", "layout"), CASE_LAYOUTS, ids=[f"{c.id}-{layout}" for c, layout in CASE_LAYOUTS]
)
def test_16_bit_inputs_against_float64_twin(case, layout, dtype, module_dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    ours = case.ours()
    randomize(ours, gen)
    if module_dtype == "half":
        ours = ours.to(dtype)
    ref = case.theirs(dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())  # the (rounded) parameters, in float64
    tol = HALF[dtype]
    stat_tol = 1e-5 if module_dtype == "float32" else 4 * tol
    fmt = torch.channels_last if len(case.shape) == 4 else torch.channels_last_3d
    for training in (True, True, True, False):
        ours.train(training)
        ref.train(training)
        x = (torch.randn(case.shape, generator=gen) * 3 + 2).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=fmt)
        x.requires_grad_()
        x64 = x.detach().double().requires_grad_()
        y, y64 = ours(x), ref(x64)
        assert y.dtype == dtype
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(y.double(), y64, rtol=tol, atol=tol)
        g = torch.randn(case.shape, generator=gen).to(dtype)
        (gx,) = torch.autograd.grad(y, x, g)
        (gx64,) = torch.autograd.grad(y64, x64, g.double())
        assert gx.dtype == dtype
        scale = gx64.abs().max().item()
        torch.testing.assert_close(gx.double(), gx64, rtol=2 * tol, atol=2 * tol * scale)
        for name in ("running_mean", "running_var"):
            got, want = getattr(ours, name), getattr(ref, name)
            assert got.dtype == (torch.float32 if module_dtype == "float32" else dtype)
            torch.testing.assert_close(got.double(), want, rtol=stat_tol, atol=stat_tol, msg=name)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=HALF_IDS)
def test_16_bit_module_parameter_grads_keep_their_dtype(dtype) -> None:
    import bnlab.nn

    m = bnlab.nn.BatchNorm2d(3).to(dtype)
    x = torch.randn(4, 3, 2, 2).to(dtype)
    m(x).float().sum().backward()
    assert m.weight.grad.dtype == m.bias.grad.dtype == dtype


@pytest.mark.parametrize(
    "case",
    [BNCase("BatchNorm1d", (16, 4), "2d_input"), BNCase("BatchNorm2d", (64, 3, 8, 8), "default")],
    ids=["BatchNorm1d", "BatchNorm2d"],
)
def test_large_offset_tiny_variance_module_float32(case) -> None:
    """A channel 1e4 + 1e-3 * noise normalizes as well as the noise (see the functional
    test for the tolerance: 1e-3 of a standard deviation, float32 rounding is ~1e-6)."""
    gen = torch.Generator().manual_seed(0)
    x = 1e4 + 1e-3 * torch.randn(case.shape, generator=gen)
    ours = case.ours(eps=1e-12)
    ref = case.theirs(eps=1e-12, dtype=torch.float64)
    y, y64 = ours(x), ref(x.double())
    err = (y.double() - y64).abs().max().item()
    assert err <= 1e-3, f"output off by {err:.3g} standard deviations"
    torch.testing.assert_close(ours.running_var.double(), ref.running_var, rtol=1e-3, atol=0)
