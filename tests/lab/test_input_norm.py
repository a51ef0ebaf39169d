"""``input-norm``: the standardizers, BN placement in the models, a tiny run end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import input_norm
from bnlab.lab.claims import VERDICTS
from bnlab.lab.experiment import get_lab, run_lab


def fake_data(train: int = 96, test: int = 64) -> dict[str, torch.Tensor]:
    x, y = fake_images_labels(train, seed=0)
    tx, ty = fake_images_labels(test, seed=1)
    return {
        "train_images": x,
        "train_labels": y.long(),
        "test_images": tx,
        "test_labels": ty.long(),
    }


def test_standardizers_give_mean_zero_std_one() -> None:
    images = fake_data()["train_images"]
    x = images.float().div(255).unsqueeze(1)
    assert input_norm.standardizer(images, "raw", 0.05) is None
    g = input_norm.standardizer(images, "global", 1e-6)(x)
    assert abs(float(g.mean())) < 1e-4
    assert abs(float(g.std()) - 1) < 1e-4
    p = input_norm.standardizer(images, "per_pixel", 1e-6)(x)
    varying = x.std(0)[0] > 1e-3
    torch.testing.assert_close(
        p.mean(0)[0][varying], torch.zeros(int(varying.sum())), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        p.std(0)[0][varying], torch.ones(int(varying.sum())), atol=1e-3, rtol=0
    )


def test_per_pixel_std_is_clamped() -> None:
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)  # constant pixels: std 0
    s = input_norm.standardizer(images, "per_pixel", 0.05)
    assert float(s.std.min()) == pytest.approx(0.05)


def test_errors_name_the_value() -> None:
    with pytest.raises(
        ValueError, match="unknown inputs 'zca'; choose one of: raw, global, per_pixel"
    ):
        input_norm.standardizer(torch.zeros(2, 28, 28, dtype=torch.uint8), "zca", 0.05)
    with pytest.raises(ValueError, match=r"std must be > 0 everywhere, got minimum 0\.0"):
        input_norm.Standardize(torch.zeros(()), torch.zeros(()))


def test_bn_goes_on_the_inputs_of_softmax_and_the_hidden_layer_of_the_mlp() -> None:
    config = input_norm.InputNormConfig.quick()
    softmax = input_norm.build_model(config, "softmax", True, None)
    norms = [m for m in softmax.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [784]
    mlp = input_norm.build_model(config, "mlp", True, None)
    norms = [m for m in mlp.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [config.hidden]
    assert input_norm.build_model(config, "softmax", False, None)(
        torch.rand(3, 1, 28, 28)
    ).shape == (3, 10)


def test_quick_run(tmp_path: Path) -> None:
    config = dataclasses.replace(input_norm.InputNormConfig.quick(), train_size=64, test_size=64)
    results = run_lab(get_lab("input-norm"), config, tmp_path / "run", data=fake_data(), quick=True)
    assert len(results["raw"]["cells"]) == 2 * 3 * 2 * config.seeds
    for figure in ("input_norm_loss.png", "input_norm_acc.png"):
        assert (tmp_path / "run" / figure).is_file()
    evidence, verdict = input_norm.input_norm_rule(results)
    assert verdict in VERDICTS
    assert len(evidence["comparisons"]) == 4
