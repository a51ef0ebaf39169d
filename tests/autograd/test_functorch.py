"""``torch.func`` transforms (vmap, grad, vjp, jvp, jacrev) over bnlab's layers, against
torch's twins (issue 19).

Before the fix, batch norm in training mode (``track_running_stats=False``) raised under
every transform: its ``autograd.Function`` has no ``setup_context``. Now calls under a
transform take the torch-ops forward, differentiable op by op, and the dispatch of
``bnlab.kernels`` refuses them (the kernels read raw memory). Each case runs at a size
below and above the kernels' threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import grad, jacrev, jvp, vjp, vmap

import bnlab.nn

SHAPES = {"small": (4, 3, 5, 5), "large": (16, 3, 16, 16)}


def _pairs(shape: tuple[int, ...]) -> dict[str, tuple[nn.Module, nn.Module]]:
    c = shape[1]
    pairs = {
        "batch-train-untracked": (
            bnlab.nn.BatchNorm2d(c, track_running_stats=False),
            nn.BatchNorm2d(c, track_running_stats=False),
        ),
        "batch-eval": (bnlab.nn.BatchNorm2d(c).eval(), nn.BatchNorm2d(c).eval()),
        "group": (bnlab.nn.GroupNorm(3, c), nn.GroupNorm(3, c)),
        "layer": (bnlab.nn.LayerNorm(shape[1:]), nn.LayerNorm(shape[1:])),
        "instance": (bnlab.nn.InstanceNorm2d(c, affine=True), nn.InstanceNorm2d(c, affine=True)),
    }
    gen = torch.Generator().manual_seed(1)
    for ours, twin in pairs.values():
        with torch.no_grad():
            for name, t in ours.state_dict().items():
                if t.is_floating_point():
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                    if name.endswith("bias") or name.endswith("mean"):
                        t.sub_(1.0)
        twin.load_state_dict(ours.state_dict())
    return pairs


def _transforms(x: torch.Tensor) -> dict[str, Callable[[nn.Module], torch.Tensor]]:
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    small = x[:2, :, :2, :2].contiguous()
    return {
        "vmap": lambda m: vmap(m)(torch.stack([x, 2 * x + 1])),
        "grad": lambda m: grad(lambda t: (m(t) * v).pow(2).sum())(x),
        "vjp": lambda m: vjp(m, x)[1](v)[0],
        "jvp": lambda m: jvp(m, (x,), (v,))[1],
        "jacrev": lambda m: jacrev(m)(small),
    }


@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("transform", ["vmap", "grad", "vjp", "jvp", "jacrev"])
@pytest.mark.parametrize(
    "layer", ["batch-train-untracked", "batch-eval", "group", "layer", "instance"]
)
def test_torch_func_transforms_match_torch(layer: str, transform: str, size: str) -> None:
    shape = SHAPES[size]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if layer == "layer" and transform == "jacrev":
        shape = (2, 3, 2, 2)  # the layer's normalized shape follows the input
    ours, twin = _pairs(shape if layer == "layer" else SHAPES[size])[layer]
    run = _transforms(x)[transform]
    if layer == "layer" and transform == "jacrev":
        small = x[:2, :, :2, :2].contiguous()
        got, want = jacrev(ours)(small), jacrev(twin)(small)
    else:
        got, want = run(ours), run(twin)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
