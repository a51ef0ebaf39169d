"""Non-finite inputs and overflowing statistics: NaN where torch gives NaN, never a finite
wrong answer (issue 19), on the fused kernels and on the torch-ops path.

* A NaN, +inf or -inf in one channel (batch norm), one group (group norm), one row
  (layer norm) or one (sample, channel) plane (instance norm) makes that slice of the
  output NaN, its running variance NaN, and leaves every other slice equal to torch's.
  Before the fix the kernels clamped a NaN variance to 0 (``v > 0 ? v : 0``): the
  channel's ``running_var`` stayed finite, and ±inf gave a mix of ±inf and NaN.
* Data spread beyond about 1e19 (float32) overflows ``sum((x - pivot)**2)``: the
  variance is +inf and ``1 / sqrt(inf + eps) = 0`` gave ``y = bias`` with zero
  gradients. Now NaN (``moments.checked_variance`` and ``inv_std_of`` in
  bn_kernels.cpp).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab.nn
from bnlab import kernels

SPECIALS = (float("nan"), float("inf"), float("-inf"))
# (64, 4, 32, 32) float32 = 1 MiB: batch norm's kernels (and the pool for GN/LN/IN);
# (2, 4, 3, 3): batch norm's torch-ops path (below kernels.MIN_NUMEL).
SHAPES = ((64, 4, 32, 32), (2, 4, 3, 3))


def _layers(shape: tuple[int, ...]) -> dict[str, tuple[nn.Module, nn.Module]]:
    pairs = {
        "batch": (bnlab.nn.BatchNorm2d(4), nn.BatchNorm2d(4)),
        "group": (bnlab.nn.GroupNorm(2, 4), nn.GroupNorm(2, 4)),
        "layer": (bnlab.nn.LayerNorm(shape[1:]), nn.LayerNorm(shape[1:])),
        "instance": (bnlab.nn.InstanceNorm2d(4), nn.InstanceNorm2d(4)),
    }
    for ours, twin in pairs.values():
        twin.load_state_dict(ours.state_dict())
    return pairs


def _hit(kind: str, y: torch.Tensor) -> torch.Tensor:
    """The slice of ``y`` that the special value at [1, 0, 1, 1] poisons."""
    return {"batch": y[:, 0], "group": y[1, :2], "layer": y[1], "instance": y[1, 0]}[kind]


def _rest(kind: str, y: torch.Tensor) -> torch.Tensor:
    return {
        "batch": y[:, 1:],
        "group": y[1, 2:],
        "layer": y[0],
        "instance": y[1, 1:],
    }[kind]


@pytest.mark.parametrize("fast", [True, False], ids=["kernels", "torch-ops"])
@pytest.mark.parametrize("shape", SHAPES, ids=["large", "small"])
@pytest.mark.parametrize("value", SPECIALS, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("kind", ["batch", "group", "layer", "instance"])
def test_a_special_value_makes_its_slice_nan_as_torch(kind, value, shape, fast) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape)
    x[1, 0, 1, 1] = value
    ours, twin = _layers(shape)[kind]
    with kernels.enabled(fast), torch.no_grad():
        y = ours(x)
        want = twin(x)
    assert _hit(kind, y).isnan().all(), f"{kind}: finite or inf output in the poisoned slice"
    assert _hit(kind, want).isnan().all()  # torch's answer
    torch.testing.assert_close(_rest(kind, y), _rest(kind, want), rtol=1e-4, atol=1e-4)
    if kind == "batch":
        assert ours.running_var[0].isnan(), "running_var of the poisoned channel is finite"
        assert twin.running_var[0].isnan()
        torch.testing.assert_close(ours.running_var[1:], twin.running_var[1:])


@pytest.mark.parametrize("fast", [True, False], ids=["kernels", "torch-ops"])
@pytest.mark.parametrize("shape", SHAPES, ids=["large", "small"])
@pytest.mark.parametrize("scale", [1e20, 1e30])
@pytest.mark.parametrize("kind", ["batch", "group", "layer", "instance"])
def test_overflowing_statistics_give_nan_not_bias(kind, scale, shape, fast) -> None:
    torch.manual_seed(0)
    x = (torch.randn(shape) * scale).requires_grad_()
    ours, _ = _layers(shape)[kind]
    with kernels.enabled(fast):
        y = ours(x)
        (grad,) = torch.autograd.grad((y * y).sum(), x)
    assert not torch.isfinite(y).any(), f"{kind}: finite output from overflowed statistics"
    assert not torch.isfinite(grad).any()


@pytest.mark.parametrize("fast", [True, False], ids=["kernels", "torch-ops"])
@pytest.mark.parametrize("kind", ["batch", "group", "layer", "instance"])
def test_large_but_representable_data_is_normalized(kind, fast) -> None:
    # 1e16 * randn: sum(d**2) stays finite in float32 (1e32 * n): the right answer.
    torch.manual_seed(0)
    x = torch.randn(SHAPES[0], dtype=torch.float64) * 1e16
    ours, _ = _layers(SHAPES[0])[kind]
    ref, _ = _layers(SHAPES[0])[kind]
    ref.double()
    with kernels.enabled(fast), torch.no_grad():
        got = ours(x.float())
        want = ref(x)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
