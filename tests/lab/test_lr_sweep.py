"""``lr-sweep``: a tiny run end to end (results, figure, verdict from the rule), resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import lr_sweep
from bnlab.lab.claims import VERDICTS
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.kit import take, train_variant, trainable_values
from bnlab.models import create
from bnlab.train import TrainConfig


def fake_data(train: int = 96, test: int = 64) -> dict[str, torch.Tensor]:
    x, y = fake_images_labels(train, seed=0)
    tx, ty = fake_images_labels(test, seed=1)
    return {
        "train_images": x,
        "train_labels": y.long(),
        "test_images": tx,
        "test_labels": ty.long(),
    }


def test_quick_run_writes_results_and_resumes(tmp_path: Path) -> None:
    spec = get_lab("lr-sweep")
    config = dataclasses.replace(
        lr_sweep.LrSweepConfig.quick(),
        lrs=(0.1, 1000.0),
        archs=("mlp-relu",),
        train_size=64,
        test_size=64,
    )
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(), quick=True)
    cells = results["raw"]["cells"]
    assert len(cells) == 2 * 2 * config.seeds
    assert (out / "lr_sweep.png").is_file()
    _evidence, verdict = lr_sweep.lr_rule(results)
    assert verdict in VERDICTS
    holds = results["verdicts"][0]["holds"]
    assert holds == {"supported": True, "not supported": False}.get(verdict)
    assert all(isinstance(c["diverged"], bool) for c in cells)
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "lr-sweep"
    again = run_lab(spec, config, out, data=fake_data(), resume=True, quick=True)
    assert again["units_reused"] == len(cells)
    assert again["raw"]["cells"] == json.loads(json.dumps(cells))


def test_unknown_arch_is_named() -> None:
    with pytest.raises(
        ValueError, match=r"archs must name some of lenet, mlp-relu, got \('vgg',\)"
    ):
        lr_sweep.LrSweepConfig(archs=("vgg",))


def test_quick_config_is_small() -> None:
    quick, full = lr_sweep.LrSweepConfig.quick(), lr_sweep.LrSweepConfig()
    assert quick.train_size * quick.epochs * len(quick.lrs) < full.train_size * full.epochs
    assert full.seeds == 3
    assert min(full.lrs) == 0.01
    assert max(full.lrs) == 10.0


def test_train_variant_records_a_nan_loss_as_diverged() -> None:
    data = fake_data()
    got = train_variant(
        create("mlp", norm="none"), data, TrainConfig(lr=1e30, epochs=2, batch_size=32)
    )
    assert got["diverged"]
    assert got["nonfinite"]
    assert "loss" in got["error"]
    json.dumps(got)  # JSON-ready: no NaN left in it


def test_take_is_a_fixed_subset_and_names_bad_splits() -> None:
    data = fake_data()
    a, _ = take(data, "train", 10, seed=3)
    b, _ = take(data, "train", 10, seed=3)
    assert torch.equal(a, b)
    assert a.shape[0] == 10
    assert take(data, "test", None)[0].shape[0] == 64
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'valid'"):
        take(data, "valid", 3)


def test_trainable_values_rule() -> None:
    cells = [
        {"g": "a", "x": 1.0, "acc": 0.8, "diverged": False},
        {"g": "a", "x": 2.0, "acc": 0.7, "diverged": False},
        {"g": "a", "x": 3.0, "acc": 0.8, "diverged": True},
        {"g": "b", "x": 1.0, "acc": 0.4, "diverged": False},
        {"g": "b", "x": 2.0, "acc": 0.38, "diverged": False},
    ]
    common = trainable_values(cells, group_key="g", grid_key="x", fraction=0.9, metric="acc")
    assert common["groups"]["a"]["trains"] == [1.0]
    assert common["groups"]["b"]["trains"] == []
    own = trainable_values(
        cells, group_key="g", grid_key="x", fraction=0.9, metric="acc", per_group=True
    )
    assert own["groups"]["b"]["trains"] == [1.0, 2.0]
