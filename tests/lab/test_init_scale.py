"""``init``: weight scaling, a tiny run end to end (results, figure, verdict from the rule),
the rule on synthetic numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bnlab.lab import init_scale
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.models import create


def test_scale_weights_scales_weights_only() -> None:
    model = create("mlp", norm="torch", hidden=(8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_scale.scale_weights(model, 3.0)
    after = model.state_dict()
    torch.testing.assert_close(after["fc1.weight"], 3 * before["fc1.weight"])
    torch.testing.assert_close(after["out.weight"], 3 * before["out.weight"])
    torch.testing.assert_close(after["fc1.bias"], before["fc1.bias"])
    torch.testing.assert_close(after["norm1.weight"], before["norm1.weight"])


def test_scale_weights_rejects_a_non_positive_factor() -> None:
    with pytest.raises(ValueError, match=r"factor must be > 0, got -1\.0"):
        init_scale.scale_weights(create("mlp", hidden=(4,)), -1.0)


def test_bn_output_ignores_the_scale_of_the_weights_before_it() -> None:
    # The reason the claim could hold: BN(a W x) == BN(W x) in train mode.
    torch.manual_seed(0)
    a = create("mlp", norm="torch", hidden=(16,), norm_position="before")
    b = create("mlp", norm="torch", hidden=(16,), norm_position="before")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.fc1.weight.mul_(50.0)
        b.fc1.bias.mul_(50.0)
    x = torch.rand(32, 1, 28, 28)
    torch.testing.assert_close(a(x), b(x), rtol=1e-3, atol=1e-4)


def test_quick_run(tmp_path: Path, fake_data) -> None:
    config = dataclasses.replace(
        init_scale.InitConfig.quick(), factors=(0.1, 1.0), train_size=64, test_size=64
    )
    results = run_lab(get_lab("init"), config, tmp_path / "run", data=fake_data(), quick=True)
    assert len(results["raw"]["cells"]) == 2 * 2 * config.seeds
    assert (tmp_path / "run" / "init_scale.png").is_file()
    # The shown verdict is the rule's on the run's own numbers.
    _, verdict = init_scale.init_rule(results)
    assert results["verdicts"][0]["measured"].startswith(verdict + ":")
    assert results["verdicts"][0]["holds"] == {"supported": True, "not supported": False}.get(
        verdict
    )


def _sweep(trains: dict[str, set[float]]) -> dict:
    """Per-seed test accuracy 0.8 (spread 0.01) at the factors that train, chance elsewhere."""
    cells = [
        {
            "variant": variant,
            "factor": factor,
            "seed": seed,
            "test_acc": (0.8 if factor in good else 0.1) + 0.01 * seed,
            "diverged": False,
        }
        for variant, good in trains.items()
        for factor in (0.01, 1.0, 100.0)
        for seed in range(3)
    ]
    return {"raw": {"cells": cells, "train_fraction": 0.9, "min_acc": 0.2}}


@pytest.mark.parametrize(
    ("trains", "verdict"),
    [
        ({"bn": {0.01, 1.0, 100.0}, "none": {1.0}}, "supported"),  # more factors train
        ({"bn": {1.0}, "none": {0.01, 1.0}}, "not supported"),  # fewer
        # The null: equal numbers, some factor failing for both.
        ({"bn": {1.0}, "none": {1.0}}, "not supported"),
        # The null where every factor trains: the grid does not separate them.
        ({"bn": {0.01, 1.0, 100.0}, "none": {0.01, 1.0, 100.0}}, "mixed"),
    ],
)
def test_rule_on_synthetic_numbers(trains: dict[str, set[float]], verdict: str) -> None:
    evidence, got = init_scale.init_rule(_sweep(trains))
    assert got == verdict
    assert evidence["factors_that_train_bn"] == sorted(trains["bn"])
    assert (evidence["count_bn"], evidence["count_none"]) == (
        len(trains["bn"]),
        len(trains["none"]),
    )
