"""bnlab.nn.AvgPool2d: torch's AvgPool2d, its 2x2 stride-2 windows on bnlab's kernel.

The kernel sums each window in the order torch's CPU kernel does and divides by 4, so
its outputs match torch's to rounding (the tests allow a few ulps, not bitwise, since a
torch version may reorder its sum); its gradient is grad_y / 4, exact in binary floating
point, on each window's four inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bnlab import kernels
from bnlab.autograd.pool import AvgPool2x2Function, avg_pool2d
from bnlab.nn import AvgPool2d

_TOL = {torch.float32: {"rtol": 1e-6, "atol": 1e-6}, torch.float64: {"rtol": 1e-13, "atol": 1e-13}}


def _pair(x: torch.Tensor, layer: torch.nn.Module) -> None:
    """Forward and input gradient of ``layer`` against torch's AvgPool2d with its settings."""
    twin = torch.nn.AvgPool2d(
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.ceil_mode,
        layer.count_include_pad,
        layer.divisor_override,
    )
    a = x.detach().clone().requires_grad_()
    b = x.detach().clone().requires_grad_()
    ya, yb = layer(a), twin(b)
    torch.testing.assert_close(ya, yb, **_TOL[x.dtype])
    grad = torch.randn_like(yb)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, **_TOL[x.dtype])


@given(
    n=st.integers(1, 40),
    c=st.integers(1, 20),
    h=st.integers(1, 16).map(lambda k: 2 * k),
    w=st.integers(1, 16).map(lambda k: 2 * k),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    offset=st.sampled_from([0.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_on_even_planes(
    n: int, c: int, h: int, w: int, dtype: torch.dtype, offset: float, seed: int
) -> None:
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=dtype) * 3 + offset
    _pair(x, AvgPool2d(2, 2))
    _pair(x, AvgPool2d(2))  # stride defaults to the kernel size


def test_lenet_shapes_take_the_kernel() -> None:
    for shape in ((256, 6, 24, 24), (256, 16, 8, 8)):
        x = torch.randn(shape)
        assert kernels.avg_pool2_eligible(x)
        y = AvgPool2d(2, 2)(x.requires_grad_())
        assert y.grad_fn is not None
        assert "AvgPool2x2Function" in type(y.grad_fn).__name__
        _pair(x, AvgPool2d(2, 2))


def test_threads_give_the_same_values() -> None:
    # Disjoint windows, each computed by one thread: the split cannot change a value.
    x = torch.randn(64, 64, 28, 28)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = avg_pool2d(x, 2)
        torch.set_num_threads(2)
        two = avg_pool2d(x, 2)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # same operations on the same values, per element


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (AvgPool2d(2, 2), (8, 8, 27, 28)),  # odd height
        (AvgPool2d(3, 2), (8, 8, 28, 28)),
        (AvgPool2d(2, 1), (8, 8, 28, 28)),
        (AvgPool2d(2, 2, padding=1), (8, 8, 28, 28)),
        (AvgPool2d(2, 2, padding=1, count_include_pad=False), (8, 8, 28, 28)),
        (AvgPool2d(2, 2, ceil_mode=True), (8, 8, 27, 27)),
        (AvgPool2d(2, 2, divisor_override=3), (8, 8, 28, 28)),
        (AvgPool2d(2, 2), (8, 28, 28)),  # (C, H, W)
        (AvgPool2d(2, 2), (2, 2, 4, 4)),  # small: below the kernels' minimum
        (AvgPool2d(2, 2), (0, 8, 28, 28)),  # empty batch
    ],
)
def test_everything_else_is_torchs(layer: AvgPool2d, shape: tuple[int, ...]) -> None:
    _pair(torch.randn(shape), layer)


def test_channels_last_and_half_precision_are_torchs() -> None:
    x = torch.randn(16, 8, 28, 28).to(memory_format=torch.channels_last)
    assert not kernels.avg_pool2_eligible(x)
    _pair(x, AvgPool2d(2, 2))
    half = torch.randn(16, 8, 28, 28).to(torch.bfloat16)
    torch.testing.assert_close(AvgPool2d(2, 2)(half), F.avg_pool2d(half, 2, 2))


def test_errors_are_torchs() -> None:
    for bad in (torch.randn(2, 3), torch.randn(2, 3, 4, 4, 4)):
        with pytest.raises(Exception) as theirs:  # noqa: PT011 (whatever torch raises)
            torch.nn.AvgPool2d(2, 2)(bad)
        with pytest.raises(type(theirs.value)) as ours:
            AvgPool2d(2, 2)(bad)
        assert str(ours.value) == str(theirs.value)


def test_gradcheck_and_double_backward() -> None:
    x = torch.randn(1, 1, 64, 64, dtype=torch.float64, requires_grad=True)
    assert kernels.avg_pool2_eligible(x.detach())

    def pool(t: torch.Tensor) -> torch.Tensor:
        return AvgPool2x2Function.apply(t)

    assert torch.autograd.gradcheck(pool, (x,))
    assert torch.autograd.gradgradcheck(pool, (x,))


def test_drop_in_for_torch() -> None:
    layer = AvgPool2d(2, 2)
    assert isinstance(layer, torch.nn.AvgPool2d)
    assert repr(layer) == repr(torch.nn.AvgPool2d(2, 2))
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), layer)
    scripted = torch.jit.script(net)
    x = torch.randn(4, 1, 30, 30)
    torch.testing.assert_close(scripted(x), net(x))
    graph = torch.fx.symbolic_trace(net).graph
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["0", "1"]
