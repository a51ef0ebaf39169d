"""recalibrate_batchnorm: population statistics, split invariance, state restored, errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import bnlab.nn
from bnlab.nn.precise_bn import recalibrate_batchnorm
from bnlab.textbook import BatchNorm as TextbookBatchNorm


def _bn(kind: str, c: int) -> nn.Module:
    if kind == "torch":
        return nn.BatchNorm2d(c, dtype=torch.float64)
    if kind == "bnlab":
        return bnlab.nn.BatchNorm2d(c, dtype=torch.float64)
    return TextbookBatchNorm(c, 4).double()


@pytest.mark.parametrize("kind", ["torch", "bnlab", "textbook"])
@pytest.mark.parametrize("batch_size", [7, 25, 60])
def test_first_layer_gets_the_statistics_of_all_the_data(kind: str, batch_size: int) -> None:
    torch.manual_seed(0)
    data = torch.randn(60, 3, 4, 4, dtype=torch.float64) * 2 + 5
    model = nn.Sequential(_bn(kind, 3), nn.ReLU(), _bn(kind, 3))
    report = recalibrate_batchnorm(model, data.split(batch_size))
    mean = data.mean((0, 2, 3))
    var = data.var((0, 2, 3), unbiased=True)
    first = model[0]
    got_mean = getattr(first, "running_mean", getattr(first, "moving_mean", None)).reshape(-1)
    got_var = getattr(first, "running_var", getattr(first, "moving_var", None)).reshape(-1)
    torch.testing.assert_close(got_mean, mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_var, var, rtol=1e-10, atol=1e-10)
    assert report.batches == len(data.split(batch_size))
    assert report.samples == 60
    assert report.layers == ["0", "2"]
    # The moving averages started at (0, 1): far from mean 5, var 4.
    assert report.mean_shift["0"] > 2.0


def test_state_is_restored_and_weights_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), bnlab.nn.BatchNorm1d(5, momentum=0.3), nn.Dropout(0.5))
    model.train()
    model[1].num_batches_tracked.fill_(7)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    recalibrate_batchnorm(model, [torch.randn(8, 4) for _ in range(3)])
    assert model.training
    assert all(m.training for m in model.modules())
    assert model[1].momentum == 0.3
    for key, value in weights.items():
        # Exact: recalibration writes only the running statistics (the count is
        # restored by assignment).
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_dropout_is_off_during_the_pass() -> None:
    torch.manual_seed(0)
    data = torch.randn(40, 6)
    model = nn.Sequential(nn.Dropout(0.9), nn.BatchNorm1d(6))
    recalibrate_batchnorm(model, data.split(10))
    torch.testing.assert_close(model[1].running_mean, data.mean(0))


def test_interrupted_pass_restores_everything() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3, momentum=0.2))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def batches():
        yield torch.randn(4, 3)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        recalibrate_batchnorm(model, batches())
    assert not model.training
    assert not model[0].training
    assert model[0].momentum == 0.2
    for key, value in before.items():
        # Exact: the saved state is copied back.
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_num_batches_and_tuples() -> None:
    data = [(torch.full((4, 2), float(i)) + torch.randn(4, 2), torch.zeros(4)) for i in range(5)]
    model = nn.Sequential(nn.BatchNorm1d(2))
    report = recalibrate_batchnorm(model, data, num_batches=2)
    assert report.batches == 2
    assert report.samples == 8
    expected = torch.cat([x for x, _ in data[:2]]).mean(0)
    torch.testing.assert_close(model[0].running_mean, expected)


def test_errors() -> None:
    with pytest.raises(
        ValueError, match=re.escape("has no BatchNorm layer with running statistics")
    ):
        recalibrate_batchnorm(nn.Sequential(nn.Linear(2, 2)), [torch.randn(2, 2)])
    with pytest.raises(ValueError, match=re.escape("batches is empty")):
        recalibrate_batchnorm(nn.Sequential(nn.BatchNorm1d(2)), [])
    with pytest.raises(ValueError, match=re.escape("num_batches must be >= 1 or None, got 0")):
        recalibrate_batchnorm(nn.Sequential(nn.BatchNorm1d(2)), [torch.randn(3, 2)], num_batches=0)
