"""``lr-sweep``: a tiny run end to end (results, figure, verdict from the rule), resume; the
rule on synthetic numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bnlab.lab import lr_sweep
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.kit import take, train_variant, trainable_values
from bnlab.models import create
from bnlab.train import TrainConfig


def test_quick_run_writes_results_and_resumes(tmp_path: Path, fake_data) -> None:
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
    # The shown verdict is the rule's on the run's own numbers.
    _evidence, verdict = lr_sweep.lr_rule(results)
    assert results["verdicts"][0]["measured"].startswith(verdict + ":")
    holds = results["verdicts"][0]["holds"]
    assert holds == {"supported": True, "not supported": False}.get(verdict)
    assert all(isinstance(c["diverged"], bool) for c in cells)
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "lr-sweep"
    again = run_lab(spec, config, out, data=fake_data(), resume=True, quick=True)
    assert again["units_reused"] == len(cells)
    # Exact: every cell is read back from the JSON the first run stored.
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
    # Exact: the grid's literal values.
    assert min(full.lrs) == 0.01
    assert max(full.lrs) == 10.0


def test_train_variant_records_a_nan_loss_as_diverged(fake_data) -> None:
    data = fake_data()
    got = train_variant(
        create("mlp", norm="none"), data, TrainConfig(lr=1e30, epochs=2, batch_size=32)
    )
    assert got["diverged"]
    assert got["nonfinite"]
    assert "loss" in got["error"]
    json.dumps(got)  # JSON-ready: no NaN left in it


def test_take_is_a_fixed_subset_and_names_bad_splits(fake_data) -> None:
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
    # Exact: the grid values are the cells' own, copied.
    assert common["groups"]["a"]["trains"] == [1.0]
    assert common["groups"]["b"]["trains"] == []
    own = trainable_values(
        cells, group_key="g", grid_key="x", fraction=0.9, metric="acc", per_group=True
    )
    assert own["groups"]["b"]["trains"] == [1.0, 2.0]


LRS = (0.1, 1.0, 10.0)


def _sweep(max_lr: dict[tuple[str, str], float | None], acc: float = 0.8) -> dict:
    """Per-seed test accuracy ``acc`` (spread 0.01) up to a variant's highest rate, chance
    above it (None: chance everywhere)."""
    cells = [
        {
            "arch": arch,
            "variant": variant,
            "group": f"{arch}/{variant}",
            "lr": lr,
            "seed": seed,
            "test_acc": (acc if top is not None and lr <= top else 0.1) + 0.01 * seed,
            "diverged": False,
        }
        for (arch, variant), top in max_lr.items()
        for lr in LRS
        for seed in range(3)
    ]
    return {"raw": {"cells": cells, "train_fraction": 0.9, "min_acc": 0.2}}


@pytest.mark.parametrize(
    ("max_lr", "verdict", "per_arch"),
    [
        # BN trains at a higher rate on both networks.
        ({("a", "bn"): 10.0, ("a", "none"): 0.1, ("b", "bn"): 1.0, ("b", "none"): 0.1},
         "supported", {"a": "higher", "b": "higher"}),
        # BN's highest rate is lower on both.
        ({("a", "bn"): 0.1, ("a", "none"): 1.0, ("b", "bn"): None, ("b", "none"): 10.0},
         "not supported", {"a": "not higher", "b": "not higher"}),
        # Higher on one network, lower on the other.
        ({("a", "bn"): 10.0, ("a", "none"): 1.0, ("b", "bn"): 0.1, ("b", "none"): 1.0},
         "mixed", {"a": "higher", "b": "not higher"}),
        # The null, inside the grid: equal numbers, the same highest rate below its top.
        ({("a", "bn"): 1.0, ("a", "none"): 1.0}, "not supported", {"a": "not higher"}),
        # The null at the top of the grid: it cannot separate the variants.
        ({("a", "bn"): 10.0, ("a", "none"): 10.0}, "mixed", {"a": "undecided"}),
    ],
)  # fmt: skip
def test_rule_on_synthetic_numbers(max_lr: dict, verdict: str, per_arch: dict) -> None:
    evidence, got = lr_sweep.lr_rule(_sweep(max_lr))
    assert got == verdict
    assert {a: e["verdict"] for a, e in evidence["archs"].items()} == per_arch
    assert evidence["archs"]["a"]["max_lr_bn"] == max_lr[("a", "bn")]


def test_rule_ignores_a_rate_where_a_seed_diverged() -> None:
    results = _sweep({("a", "bn"): 10.0, ("a", "none"): 1.0})
    for cell in results["raw"]["cells"]:
        if cell["variant"] == "bn" and cell["lr"] == 10.0 and cell["seed"] == 2:
            cell["diverged"] = True
    evidence, verdict = lr_sweep.lr_rule(results)
    assert evidence["archs"]["a"]["lrs_that_train_bn"] == [0.1, 1.0]
    assert verdict == "not supported"  # both now train up to 1.0, below the grid's top
