"""``input-norm``: the standardizers, BN placement in the models, a tiny run end to end, the
rule on synthetic numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab.lab import input_norm
from bnlab.lab.experiment import get_lab, run_lab


def test_standardizers_give_mean_zero_std_one(fake_data) -> None:
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


def test_quick_run(tmp_path: Path, fake_data) -> None:
    config = dataclasses.replace(input_norm.InputNormConfig.quick(), train_size=64, test_size=64)
    results = run_lab(get_lab("input-norm"), config, tmp_path / "run", data=fake_data(), quick=True)
    assert len(results["raw"]["cells"]) == 2 * 3 * 2 * config.seeds
    for figure in ("input_norm_loss.png", "input_norm_acc.png"):
        assert (tmp_path / "run" / figure).is_file()
    evidence, verdict = input_norm.input_norm_rule(results)
    assert len(evidence["comparisons"]) == 4
    # The shown verdict is the rule's on the run's own numbers.
    assert results["verdicts"][0]["measured"].startswith(verdict + ":")
    assert results["verdicts"][0]["holds"] == {"supported": True, "not supported": False}.get(
        verdict
    )


def _cells(loss: dict[tuple[str, str], float]) -> dict:
    """Three seeds (spread 0.01) of the training loss ``loss[model, inputs]`` without BN
    (1.0 where not given), and with BN a loss that must not matter (9.0)."""
    cells = [
        {
            "model": model,
            "inputs": inputs,
            "bn": bn,
            "seed": seed,
            "train_loss": (9.0 if bn else loss.get((model, inputs), 1.0)) + 0.01 * seed,
            "test_acc": 0.8,
        }
        for model in input_norm.MODELS
        for inputs in input_norm.INPUTS
        for bn in (False, True)
        for seed in range(3)
    ]
    return {"raw": {"cells": cells}}


LOWER = {(m, i): 0.5 for m in input_norm.MODELS for i in ("global", "per_pixel")}


@pytest.mark.parametrize(
    ("loss", "verdict", "helps"),
    [
        (LOWER, "supported", 4),  # standardized inputs reach a lower loss in every pair
        ({k: 1.5 for k in LOWER}, "not supported", 0),  # a higher loss in every pair
        ({("softmax", "global"): 0.5}, "mixed", 1),  # lower in one pair, equal in three
        ({}, "not supported", 0),  # the null: equal numbers everywhere
    ],
)
def test_rule_on_synthetic_numbers(loss: dict, verdict: str, helps: int) -> None:
    evidence, got = input_norm.input_norm_rule(_cells(loss))
    assert got == verdict
    assert evidence["helps"] == helps
    assert [c["direction"] for c in evidence["comparisons"]].count("unclear") == (
        4 - helps - evidence["hurts"]
    )
