"""``bnlab.lab.kit.fits``: one fit run per cell, records and rows (the first edition's
sweep helpers and their tests were removed with the last experiment that used them)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bnlab.lab.kit import fits, train_variant
from bnlab.lab.runner import Bench
from bnlab.models import create
from bnlab.train import TrainConfig

TINY = fits.FitConfig(seeds=2, train_size=48, test_size=32, epochs=1, batch_size=16)


def test_fit_is_train_variant_on_the_config_subsets(fake_data) -> None:
    data = fake_data()
    got = TINY.fit(create("mlp", hidden=(8,)), Bench(data, torch.device("cpu")), 1, lr=0.1)
    train = TrainConfig(lr=0.1, epochs=1, batch_size=16, seed=1, device="cpu")
    direct = train_variant(create("mlp", hidden=(8,)), data, train, train_size=48, test_size=32)
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
    config = dataclasses.replace(TINY, epochs=2)
    config.fit(None, Bench(fake_data(), torch.device("cpu")), 3, lr=2.0, init="default", x=1)
    assert seen["train"].init == "default"
    assert (seen["train"].lr, seen["train"].seed, seen["train"].batch_size) == (2.0, 3, 16)
    assert (seen["train_size"], seen["test_size"], seen["x"]) == (48, 32, 1)
    assert seen["train"].epochs == 2
    seen.clear()
    config.fit(None, Bench({}, torch.device("cpu")), 0, lr=1.0)
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
    cells = [{"v": "a", "x": 1.0}, {"v": "a", "x": 3.0}, {"v": "b", "x": 9.0}]
    mean, std = fits.mean_std_row(cells, ["x"], v="a")
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(2**0.5)
    quick = fits.FitConfig(**fits.FitConfig.QUICK)
    assert (quick.seeds, quick.epochs) == (2, 1)
