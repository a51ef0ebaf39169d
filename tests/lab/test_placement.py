"""``placement``: the models get BN where asked, the tuning runs hold out a validation
split, a tiny run end to end (no verdict, figure, resume), the declared rule on synthetic
per-seed numbers whose answer is known (including the null and too few seeds), config
errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnlab.lab import placement, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.runner import Bench


def tiny_config(**kw) -> placement.PlacementConfig:
    tiny = {"train_size": 64, "test_size": 32, "validation": 16, "batch": 16, "hidden": (8,)}
    return dataclasses.replace(placement.PlacementConfig.quick(), **(tiny | kw))


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("placement")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(64, 32), quick=True)
    raw = results["raw"]
    assert (out / "placement.png").is_file()
    assert set(raw["per_seed"]) == {"relu", "sigmoid"}
    assert all(set(arms) == {"before", "after"} for arms in raw["per_seed"].values())
    assert all(lr in config.lrs for arms in raw["lr"].values() for lr in arms.values())
    (verdict,) = results["verdicts"]
    assert verdict["holds"] is None
    assert verdict["measured"].startswith("no verdict at this budget: ")
    assert verdict["measured"].startswith(placement.CLAIMS[0].rule(results)[1] + ":")
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 * 2 * 2 + 2 * 2 * 2  # tuning (activation x lr x placement) + measured
    assert (out / "units" / "tune-relu-lr0.03-before.json").is_file()
    (out / "units" / "sigmoid-after-seed1.json").unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(64, 32), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    assert again["raw"]["per_seed"] == raw["per_seed"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_bn_sits_where_asked_and_tuning_holds_out_validation(where: str, fake_data) -> None:
    config = tiny_config(epochs=1)
    data = config.subsets(fake_data(64, 32), "placement")
    got = placement.train_run(
        config, "relu", where, 0.1, 0, Bench(data, torch.device("cpu")), validate=True
    )
    assert set(got["metrics"]) == {"val_error", "train_loss_last50"}
    assert 0.0 <= got["metrics"]["val_error"] <= 100.0
    model = placement.create(
        "mlp", norm="torch", hidden=(8,), activation="relu", norm_position=where
    )
    kinds = [type(m) for m in model if not isinstance(m, nn.Flatten)]
    norm_at, act_at = kinds.index(nn.BatchNorm1d), kinds.index(nn.ReLU)
    assert (norm_at < act_at) == (where == "before")


NOISE = np.array([0.05, -0.1, 0.08, -0.03, 0.0])


def synthetic(before: dict[str, float], after: float = 88.0, *, noise=NOISE) -> dict:
    config = placement.PlacementConfig()
    per_seed = {
        a: {
            "before": {
                "test_acc": list(before[a] + noise),
                "train_loss_last50": [0.3] * len(noise),
            },
            "after": {"test_acc": [after] * len(noise), "train_loss_last50": [0.3] * len(noise)},
        }
        for a in before
    }
    return {
        "raw": {"per_seed": per_seed, "specs": [spec_record(s) for s in placement.specs(config)]}
    }


@pytest.mark.parametrize(
    ("before", "verdict", "statuses", "superiority"),
    [
        (
            {"relu": 89.0, "sigmoid": 88.8},
            stats.SUPPORTED,
            ["non-inferior", "non-inferior"],
            ["better", "better"],
        ),
        # the null of superiority: equal within the margin is non-inferior
        (
            {"relu": 88.0, "sigmoid": 88.0},
            stats.SUPPORTED,
            ["non-inferior", "non-inferior"],
            ["equivalent", "equivalent"],
        ),
        # before worse by more than the margin in both settings
        (
            {"relu": 87.0, "sigmoid": 87.2},
            stats.REFUTED,
            ["inferior", "inferior"],
            ["opposite", "opposite"],
        ),
        (
            {"relu": 89.0, "sigmoid": 87.0},
            stats.CONTEXT_DEPENDENT,
            ["non-inferior", "inferior"],
            ["better", "opposite"],
        ),
        # worse, but not by more than the margin: neither non-inferior nor inferior
        (
            {"relu": 87.7, "sigmoid": 87.7},
            stats.INCONCLUSIVE,
            ["undecided", "undecided"],
            ["opposite", "opposite"],
        ),
    ],
)
def test_rule_on_known_numbers(
    before: dict, verdict: str, statuses: list, superiority: list
) -> None:
    evidence, got = placement.CLAIMS[0].rule(synthetic(before))
    assert got == verdict
    assert [r["status"] for r in evidence["settings"]] == statuses
    assert [r["superiority_status"] for r in evidence["settings"]] == superiority
    assert evidence["text"].startswith(verdict + ": test_acc: before - after, non-inferiority")


def test_rule_on_noise_chance_and_too_few_seeds() -> None:
    wide = np.array([1.0, -0.8, 0.6, -1.2, 0.3])
    evidence, verdict = placement.CLAIMS[0].rule(
        synthetic({"relu": 88.0, "sigmoid": 88.0}, noise=wide)
    )
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    few = synthetic({"relu": 89.0, "sigmoid": 89.0}, noise=NOISE[:4])
    assert placement.CLAIMS[0].rule(few)[1] == stats.NO_VERDICT
    at_chance = synthetic({"relu": 89.0, "sigmoid": 89.0})
    at_chance["raw"]["per_seed"]["relu"]["after"]["test_acc"][0] = 10.3
    evidence, verdict = placement.CLAIMS[0].rule(at_chance)
    assert verdict == stats.SUPPORTED  # relu keeps 4 seeds: excluded; sigmoid decides
    assert evidence["settings"][1]["status"] == "non-inferior"
    assert evidence["settings"][0]["status"] == "excluded"
    assert evidence["excluded"][0]["reason"] == "never left chance (test_acc within 2.0 of 10.0)"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lrs": ()}, r"lrs must be positive values, got \(\)"),
        ({"activations": ()}, "activations must name at least one activation"),
        ({"epochs": 0}, "epochs must be > 0, got 0"),
        ({"margin": 0.0}, "margin must be > 0, got 0.0"),
        ({"first_seed": -1}, "first_seed must be an int >= 0, got -1"),
    ],
)
def test_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        placement.main_grid(tiny_config(**kw))


def test_default_grid_reaches_past_one_and_seeds_are_fresh() -> None:
    config = placement.PlacementConfig()
    assert max(config.lrs) == 10.0
    assert 3.0 in config.lrs
    assert {c.seed for c in placement.main_grid(config).cells()} == set(range(200, 205))
