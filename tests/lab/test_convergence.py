"""``convergence``: BN and the steps to a target, each arm at its tuned lr.

A tiny run end to end ("no verdict at this budget", the tuning table, the figure,
resume), the lr rule, first-reach and censoring, the declared rule on synthetic
per-seed numbers whose answer is known (including the null and a censored BN seed).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab import convergence, kit, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.runner import Bench, Cell


def tiny_config(**kw) -> convergence.ConvergenceConfig:
    tiny = {
        "seeds": 2,
        "lrs": (0.3, 1.0),
        "steps": 6,
        "batch": 16,
        "window": 3,
        "eval_every": 3,
        "train_size": 64,
        "test_size": 32,
        "margin": 2.0,
    }
    return dataclasses.replace(convergence.ConvergenceConfig.quick(), **(tiny | kw))


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("convergence")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(64, 32), quick=True)
    raw = results["raw"]
    assert set(raw["lr"]) == {"none", "bn"}
    assert all(lr in config.lrs for lr in raw["lr"].values())
    assert (out / "convergence.png").is_file()
    per_seed = raw["per_seed"][""]
    for arm in ("none", "bn"):
        for steps in per_seed[arm]["steps_to_loss"]:
            assert 1 <= steps <= config.steps
    (verdict,) = results["verdicts"]
    assert verdict["holds"] is None
    assert verdict["measured"].startswith("no verdict at this budget: ")
    assert verdict["measured"].startswith(convergence.CLAIMS[0].rule(results)[1] + ":")
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 * 2 + 2 * 2  # tuning (arm x lr) + measured (arm x seed)
    next(u for u in units if u.name.startswith("bn-seed")).unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(64, 32), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    strip = {"seconds_to_loss", "seconds_to_acc"}
    for arm in ("none", "bn"):
        for metric, values in per_seed[arm].items():
            if metric not in strip:
                assert again["raw"]["per_seed"][""][arm][metric] == values


def test_choose_lr_takes_the_lowest_finite_final_loss() -> None:
    # the tuning runs sit in the setting "" (kit.paired.tune_grid); the rule is the kit's
    tuning = {"none": {0.1: 2.3, 0.3: 1.1, 1.0: None}, "bn": {0.1: 0.5, 0.3: math.nan}}
    assert kit.paired.choose_lrs({"": tuning}) == {"": {"none": 0.3, "bn": 0.1}}
    assert kit.paired.choose_lrs({"": {"none": {0.1: None}}}) == {"": {"none": None}}
    grid = convergence.tune_grid(tiny_config())
    keys = [grid.key(c) for c in grid.cells()]  # the first edition's unit names and order
    assert keys[:2] == ["tune-lr0.3-none-seed1000", "tune-lr1-none-seed1000"]


def test_first_reach_and_censoring() -> None:
    steps = [1, 2, 3, 4]
    assert convergence.first_reach([2.3, 0.9, 0.5, 0.4], steps, 0.6, below=True) == 3
    assert convergence.first_reach([2.3, 0.9, 0.7, 0.65], steps, 0.6, below=True) is None
    assert convergence.first_reach([10, 50, math.nan, 80], steps, 75, below=False) == 4
    config = tiny_config(steps=4, loss_target=0.6, acc_target=75.0)
    run = {
        "loss_ma": [2.3, 0.9, 0.7, 0.65],
        "clock": [0.1, 0.2, 0.3, 0.4],
        "evals": {"steps": [2, 4], "test_acc": [60.0, 80.0], "train_s": [0.2, 0.4]},
    }
    got = convergence._to_target(config, run)
    assert got["steps_to_loss"] == 4  # censored at the budget
    assert got["censored_loss"] is True
    assert got["seconds_to_loss"] == pytest.approx(0.4)
    assert (got["steps_to_acc"], got["censored_acc"], got["seconds_to_acc"]) == (4, False, 0.4)


NOISE = np.array([10.0, -20.0, 5.0, 15.0, -10.0])


def synthetic(bn: float, none: float, *, bn_noise=NOISE, censored_bn=None) -> dict:
    config = convergence.ConvergenceConfig()
    per_seed = {
        "": {
            "bn": {
                "steps_to_loss": list(bn + bn_noise),
                "final_test_acc": [85.0] * 5,
            },
            "none": {"steps_to_loss": [none] * 5, "final_test_acc": [80.0] * 5},
        }
    }
    return {
        "raw": {
            "per_seed": per_seed,
            "specs": [spec_record(s) for s in convergence.specs(config)],
            "censored_loss": {"bn": censored_bn or [False] * 5, "none": [False] * 5},
        }
    }


def test_rule_on_known_numbers() -> None:
    rule = convergence.convergence_rule
    assert rule(synthetic(300.0, 1500.0))[1] == stats.SUPPORTED
    assert rule(synthetic(1500.0, 1500.0))[1] == stats.REFUTED  # equal within 234 steps
    assert rule(synthetic(1800.0, 1200.0))[1] == stats.REFUTED  # BN slower
    # the null with seed noise larger than the margin: inconclusive, with a budget
    wide = np.array([400.0, -300.0, 250.0, -450.0, 100.0])
    evidence, verdict = rule(synthetic(1500.0, 1500.0, bn_noise=wide))
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5


def test_a_censored_bn_seed_cannot_support() -> None:
    censored = [False, True, False, False, False]
    evidence, verdict = convergence.convergence_rule(synthetic(300.0, 1500.0, censored_bn=censored))
    assert verdict == stats.INCONCLUSIVE
    assert evidence["censored_bn_seeds"] == [1]
    assert "understates" in evidence["censoring"]


def test_runs_at_chance_are_excluded() -> None:
    results = synthetic(300.0, 1500.0)
    results["raw"]["per_seed"][""]["none"]["final_test_acc"][2] = 10.4
    evidence, verdict = convergence.convergence_rule(results)
    assert verdict == stats.NO_VERDICT  # 4 pairs left < 5
    assert evidence["excluded"] == [
        {
            "arm": "none",
            "seed": 2,
            "reason": "never left chance (final_test_acc within 2.0 of 10.0)",
            "setting": "",
        }
    ]


def test_one_measured_run(fake_data) -> None:
    config = tiny_config()
    bench = Bench(config.subsets(fake_data(64, 32), "convergence"), torch.device("cpu"))
    got = convergence.measure(config, Cell("", "bn", 0), bench, 0.3)
    assert 1 <= got["steps_to_loss"] <= config.steps
    assert got["final_test_acc"] is not None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lrs": ()}, r"lrs must be positive values, got \(\)"),
        ({"lrs": (0.1, -1.0)}, "lrs must be positive values"),
        ({"steps": 0}, "steps must be > 0, got 0"),
    ],
)
def test_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        convergence.main_grid(tiny_config(**kw))
