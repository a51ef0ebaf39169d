"""Probes record what layers see and are removed on exit, also after an error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.lab.kit.probes import capture, layers_of_type


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def test_layers_of_type() -> None:
    net = _net()
    assert list(layers_of_type(net, nn.Linear)) == ["0", "2"]
    with pytest.raises(ValueError, match="Sequential has no layer of type Conv2d, ReLU"):
        layers_of_type(net, nn.Conv2d, nn.ReLU)
    with pytest.raises(ValueError, match="give at least one layer type"):
        layers_of_type(net)


def test_capture_inputs_outputs_and_gradients() -> None:
    net = _net()
    x = torch.randn(5, 4)
    linears = layers_of_type(net, nn.Linear)
    with (
        capture(linears, what="input") as inputs,
        capture(linears, what="output") as outputs,
        capture(linears, what="grad_output", reduce=lambda g: g.norm().item()) as grads,
    ):
        y = net(x)
        y.sum().backward()
    torch.testing.assert_close(inputs["0"][0], x)
    torch.testing.assert_close(outputs["0"][0], net[0](x))
    torch.testing.assert_close(inputs["2"][0], torch.sigmoid(net[0](x)))
    # d(sum y)/dy is all ones: its norm is sqrt(5 * 2).
    assert grads["2"] == [pytest.approx(10**0.5)]
    assert len(grads["0"]) == 1
    assert _hook_count(net) == 0


def test_hooks_are_removed_after_an_error() -> None:
    net = _net()
    counts = []

    def fail() -> None:
        with capture(layers_of_type(net, nn.Linear)):
            counts.append(_hook_count(net))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert counts == [2]
    assert _hook_count(net) == 0


def test_capture_errors() -> None:
    with (
        pytest.raises(
            ValueError, match="what must be 'input', 'output' or 'grad_output', got 'grad'"
        ),
        capture({"a": nn.ReLU()}, what="grad"),
    ):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match="capture: no layers to probe"), capture({}):
        pass
