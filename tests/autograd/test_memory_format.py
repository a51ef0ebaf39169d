"""Outputs in torch's memory format for every input layout (issue 19).

For batch, group, layer and instance norm, in training and eval mode, on inputs that
are contiguous, channels_last, channels_last_3d, transposed (last two dims) and
permuted (all dims reversed), at a size below and above the kernels' thresholds: the
output has torch's strides. Before the fix, 66 of these cases differed (transposed and
permuted inputs kept their strides; group norm lost channels_last, layer and instance
norm kept it).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab.nn

SHAPES = ((8, 4, 6), (8, 4, 6, 5), (4, 4, 3, 6, 5), (64, 4, 32, 32))
LAYOUTS = ("contiguous", "channels_last", "transposed", "permuted")
FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


def _input(shape: tuple[int, ...], layout: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if layout == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[len(shape)]
        return torch.randn(shape, generator=gen).contiguous(memory_format=fmt)
    if layout == "transposed":
        return torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen).transpose(-1, -2)
    if layout == "permuted":
        return torch.randn(shape[::-1], generator=gen).permute(*reversed(range(len(shape))))
    return torch.randn(shape, generator=gen)


def _pair(kind: str, x: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    rank = x.dim() - 3
    ours, twin = {
        "batch": lambda: (
            (bnlab.nn.BatchNorm1d, bnlab.nn.BatchNorm2d, bnlab.nn.BatchNorm3d)[rank](4),
            (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[rank](4),
        ),
        "group": lambda: (bnlab.nn.GroupNorm(2, 4), nn.GroupNorm(2, 4)),
        "layer": lambda: (bnlab.nn.LayerNorm(x.shape[-1]), nn.LayerNorm(x.shape[-1])),
        "instance": lambda: (
            (bnlab.nn.InstanceNorm1d, bnlab.nn.InstanceNorm2d, bnlab.nn.InstanceNorm3d)[rank](
                4, track_running_stats=True
            ),
            (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[rank](
                4, track_running_stats=True
            ),
        ),
    }[kind]()
    twin.load_state_dict(ours.state_dict())
    return ours, twin


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["batch", "group", "layer", "instance"])
def test_output_strides_are_torchs(kind, shape, layout, mode) -> None:
    if layout == "channels_last" and len(shape) not in (4, 5):
        pytest.skip("channels_last needs 4 or 5 dims")
    x = _input(shape, layout)
    ours, twin = _pair(kind, x)
    ours.train(mode == "train")
    twin.train(mode == "train")
    xg = x.detach().requires_grad_()
    got = ours(xg)
    with torch.no_grad():
        want = twin(x)
    assert got.stride() == want.stride(), f"strides {got.stride()} != torch's {want.stride()}"
    for fmt in FORMATS:
        try:
            expected = want.is_contiguous(memory_format=fmt)
        except RuntimeError:  # channels_last(_3d) of another rank
            continue
        assert got.is_contiguous(memory_format=fmt) == expected, f"{fmt}"
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-4)
    got.sum().backward()  # the format change is differentiable
    assert xg.grad.shape == x.shape
