"""``regularization``: dropout placement, a tiny run end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import regularization
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


def test_quick_run(tmp_path: Path) -> None:
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
    _, verdict = regularization.regularization_rule(results)
    assert verdict in VERDICTS
