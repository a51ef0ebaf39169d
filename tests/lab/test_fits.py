"""``bnlab.lab.kit.fits``: one fit run per cell, records, and the trainability sweeps'
table, series, rule groups and texts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bnlab.lab.kit import fits, train_variant
from bnlab.lab.runner import Bench
from bnlab.models import create
from bnlab.train import TrainConfig

TINY = fits.SweepConfig(seeds=2, train_size=48, test_size=32, epochs=1, batch_size=16)


def test_fit_is_train_variant_on_the_config_subsets(fake_data) -> None:
    data = fake_data()
    got = TINY.fit(create("mlp", hidden=(8,)), Bench(data, torch.device("cpu")), 1, lr=0.1)
    train = TrainConfig(lr=0.1, epochs=1, batch_size=16, seed=1, device="cpu")
    direct = train_variant(
        create("mlp", hidden=(8,)), data, train, train_size=48, test_size=32, divergence_margin=0.01
    )
    # Exact: the same seeded computation twice on the same machine.
    assert {k: v for k, v in got.items() if k != "wall_time_s"} == {
        k: v for k, v in direct.items() if k != "wall_time_s"
    }
    assert got["epochs_done"] == 1


def test_fit_passes_the_init_and_the_options(fake_data, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def spy(model, data, train, **options):
        seen.update(train=train, **options)
        return {}

    monkeypatch.setattr(fits, "train_variant", spy)
    config = dataclasses.replace(TINY, divergence_margin=0.5)
    config.fit(None, Bench(fake_data(), torch.device("cpu")), 3, lr=2.0, init="default", x=1)
    assert seen["train"].init == "default"
    assert (seen["train"].lr, seen["train"].seed, seen["train"].batch_size) == (2.0, 3, 16)
    assert (seen["train_size"], seen["test_size"], seen["x"]) == (48, 32, 1)
    assert seen["divergence_margin"] == 0.5  # the sweep's margin
    seen.clear()
    fits.FitConfig.fit(config, None, Bench({}, torch.device("cpu")), 0, lr=1.0)
    assert seen["train"].init == "xavier_uniform"  # TrainConfig's default
    assert "divergence_margin" not in seen  # FitConfig leaves train_variant's default


def test_records_and_rows() -> None:
    got = {
        "final": {"test_acc": 0.5, "train_loss": 1.0},
        "initial_loss": 2.3,
        "diverged": False,
        "nonfinite": False,
    }
    assert fits.fit_record(got, ("diverged",), variant="bn", seed=0) == {
        "variant": "bn",
        "seed": 0,
        "test_acc": 0.5,
        "train_loss": 1.0,
        "diverged": False,
    }
    # Exact: values are copied, never computed.
    assert fits.sweep_record(got, lr=0.1)["initial_loss"] == 2.3
    cells = [{"v": "a", "x": 1.0}, {"v": "a", "x": 3.0}, {"v": "b", "x": 9.0}]
    mean, std = fits.mean_std_row(cells, ["x"], v="a")
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(2**0.5)
    assert fits.span([0.3, 0.1, 1.0]) == [0.1, 1.0, 3]
    assert fits.span([]) == [None, None, 0]


def _cells() -> list[dict]:
    """Variant "bn" trains at every value of the grid, "none" at 1.0 only; one "bn" seed
    diverged at 10.0."""
    cells = []
    for variant in ("none", "bn"):
        for lr in (0.1, 1.0, 10.0):
            for seed in range(2):
                trains = variant == "bn" or lr == 1.0
                cells.append(
                    {
                        "variant": variant,
                        "lr": lr,
                        "seed": seed,
                        "test_acc": 0.8 if trains else 0.1,
                        "diverged": variant == "bn" and lr == 10.0 and seed == 1,
                    }
                )
    return cells


def test_sweep_groups_table_and_series() -> None:
    cells = _cells()
    groups = fits.sweep_groups(
        {"cells": cells, "train_fraction": 0.9, "min_acc": 0.2}, "variant", "lr"
    )
    # Exact: grid values are the cells' own, copied.
    assert groups["bn"]["trains"] == [0.1, 1.0]  # 10.0: a seed diverged
    assert groups["none"]["trains"] == [1.0]
    table = fits.sweep_table("t", cells, ("lr", "lr", (0.1, 10.0)), ("none", "bn"), 2)
    assert table.columns[:4] == ["lr", "none test acc", "none std", "none diverged"]
    assert table.rows[1][0] == 10.0
    assert table.rows[1][4] == pytest.approx(0.8)
    assert table.rows[1][3] == "0/2"
    assert table.rows[1][6] == "1/2"
    series = fits.sweep_series(cells, ("lr", (0.1, 1.0)), {"none": "no BN"}, 2)
    # Exact: the cells' own literal values, read back.
    assert series == {"no BN": {"x": [0.1, 1.0], "runs": [[0.1, 0.8], [0.1, 0.8]]}}


def test_sweep_rules_texts() -> None:
    rules = TINY.rules("the same variant")
    assert rules["train_fraction"] == TINY.train_fraction
    assert "of the same variant, and at least 0.2" in rules["trains_rule"]
    assert "by more than 1%" in rules["divergence_rule"]
    quick = fits.FitConfig(**fits.FitConfig.QUICK)
    assert (quick.seeds, quick.epochs) == (2, 1)
