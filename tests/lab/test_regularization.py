"""``regularization``: dropout placement, a tiny run end to end, the rule on synthetic
numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from torch import nn

from bnlab.lab import regularization
from bnlab.lab.experiment import get_lab, run_lab


def test_dropout_follows_every_hidden_layer() -> None:
    config = regularization.RegularizationConfig.quick()
    model = regularization.build_model(config, "bn+dropout")
    names = [name for name, _ in model.named_children()]
    assert names == [
        "flatten", "fc1", "norm1", "act1", "drop1", "fc2", "norm2", "act2", "drop2", "out"
    ]  # fmt: skip
    plain = regularization.build_model(config, "none")
    assert not any(isinstance(m, nn.Dropout | nn.BatchNorm1d) for m in plain.modules())


def test_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="unknown variant 'l2'; choose one of: none, bn, dropout"):
        regularization.build_model(regularization.RegularizationConfig.quick(), "l2")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1\.5"):
        regularization.RegularizationConfig(dropout=1.5)
    with pytest.raises(ValueError, match="average_last must be an int >= 1, got 0"):
        regularization.RegularizationConfig(average_last=0)


def test_quick_run(tmp_path: Path, fake_data) -> None:
    config = dataclasses.replace(
        regularization.RegularizationConfig.quick(), train_size=64, test_size=64, hidden=(16, 16)
    )
    results = run_lab(
        get_lab("regularization"), config, tmp_path / "run", data=fake_data(), quick=True
    )
    cells = results["raw"]["cells"]
    assert len(cells) == 4 * config.seeds
    for cell in cells:
        assert cell["gap_acc"] == pytest.approx(cell["train_eval_acc"] - cell["test_acc"])
    # every epoch is evaluated on the training subset too (eval mode)
    curve = results["raw"]["curves"]["train accuracy (eval mode)"]["BN"][0]
    assert len(curve) == config.epochs
    assert all(0.0 <= v <= 1.0 for v in curve)
    for figure in results["figures"]:
        assert (tmp_path / "run" / figure["file"]).is_file()
    # The shown verdict is the rule's on the run's own numbers.
    _, verdict = regularization.regularization_rule(results)
    assert results["verdicts"][0]["measured"].startswith(verdict + ":")
    assert results["verdicts"][0]["holds"] == {"supported": True, "not supported": False}.get(
        verdict
    )


def _cells(gap_bn: float, acc_bn: float) -> dict:
    """Three seeds (spread 0.01) per variant: without BN a gap of 0.15 and test accuracy
    0.80, with BN ``gap_bn`` and ``acc_bn``; the dropout variants must not matter."""
    means = {"none": (0.15, 0.80), "bn": (gap_bn, acc_bn)}
    cells = [
        {
            "variant": v,
            "seed": seed,
            "gap_acc": means.get(v, (0.9, 0.1))[0] + 0.01 * seed,
            "test_acc": means.get(v, (0.9, 0.1))[1] + 0.01 * seed,
        }
        for v in regularization.VARIANTS
        for seed in range(3)
    ]
    return {"raw": {"cells": cells}}


@pytest.mark.parametrize(
    ("gap_bn", "acc_bn", "verdict", "gap", "acc"),
    [
        (0.05, 0.85, "supported", "smaller", "higher"),
        (0.05, 0.80, "supported", "smaller", "unclear"),  # test accuracy not lower
        (0.05, 0.70, "mixed", "smaller", "lower"),
        (0.15, 0.85, "mixed", "unclear", "higher"),
        (0.25, 0.80, "not supported", "larger", "unclear"),
        (0.15, 0.80, "not supported", "unclear", "unclear"),  # the null: equal numbers
    ],
)
def test_rule_on_synthetic_numbers(
    gap_bn: float, acc_bn: float, verdict: str, gap: str, acc: str
) -> None:
    evidence, got = regularization.regularization_rule(_cells(gap_bn, acc_bn))
    assert got == verdict
    assert (evidence["gap_direction"], evidence["test_acc_direction"]) == (gap, acc)
    assert evidence["gap_diff"] == pytest.approx(gap_bn - 0.15)
