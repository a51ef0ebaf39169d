"""``regularization``: the arms' layers (BN with population statistics has no batch
noise), a tiny run end to end ("no verdict at this budget", tuning, figures, resume),
the lr choice, the declared rules on synthetic per-seed numbers whose verdict is known
(clear effect, the null, noise, too few seeds, runs at chance excluded), config errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import bnlab.nn
from bnlab.lab import regularization, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab


def tiny_config(**kw) -> regularization.RegularizationConfig:
    tiny = {
        "lrs": (0.1, 1.0),
        "hidden": (16, 16),
        "steps": 8,
        "batch": 16,
        "window": 3,
        "train_size": 48,
        "val_size": 32,
        "test_size": 64,
        "fit_target": 2.5,
    }
    return dataclasses.replace(regularization.RegularizationConfig.quick(), **(tiny | kw))  # fmt: skip


def norms(model: nn.Module) -> list[type]:
    return [type(m) for name, m in model.named_children() if name.startswith("norm")]


def test_each_arm_has_its_norm_and_the_same_weights() -> None:
    config = tiny_config()
    models = {arm: regularization.build_model(config, arm, seed=3) for arm in regularization.ARMS}
    assert norms(models["none"]) == []
    assert norms(models["bn"]) == [bnlab.nn.BatchNorm1d] * 2
    assert norms(models["bn-pop"]) == [bnlab.nn.BatchRenorm1d] * 2
    assert norms(models["bn-vb8"]) == [bnlab.nn.GhostBatchNorm1d] * 2
    assert norms(models["bn-at-common-lr"]) == [bnlab.nn.BatchNorm1d] * 2
    assert norms(models["bn-pop-at-common-lr"]) == [bnlab.nn.BatchRenorm1d] * 2
    assert models["bn-vb8"].norm1.virtual_batch_size == 8
    assert models["bn-pop"].norm2.r_max == math.inf
    for model in models.values():  # paired: the same initial weights in every arm
        torch.testing.assert_close(model.fc1.weight, models["none"].fc1.weight)
        torch.testing.assert_close(model.out.weight, models["none"].out.weight)
    with pytest.raises(ValueError, match="unknown arm 'dropout'; choose one of: none, bn"):
        regularization.build_model(config, "dropout", 0)


def test_population_statistics_bn_has_no_batch_noise() -> None:
    # bn-pop's training output of an example does not depend on the rest of its batch;
    # BN's does (the noise that d2l's chapter calls regularizing).
    torch.manual_seed(0)
    x = torch.randn(8, 16) * 3 + 1
    other = torch.cat([x[:1], torch.randn(7, 16) * 5 - 2])
    config = tiny_config()
    for arm, same in (("bn-pop", True), ("bn", False)):
        layer = regularization.build_model(config, arm, 0).norm1
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(4.0)
        first = layer.train()(x)[0]
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(4.0)
        second = layer(other)[0]
        assert torch.allclose(first, second, atol=1e-5) == same
    pop = regularization.build_model(config, "bn-pop", 0).norm1.train()
    pop.running_mean.fill_(0.5)
    pop.running_var.fill_(4.0)
    torch.testing.assert_close(pop(x), (x - 0.5) / torch.sqrt(torch.tensor(4.0 + pop.eps)))


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("regularization")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(), quick=True)
    raw = results["raw"]
    assert raw["lr"]["bn-vb8"] == raw["lr"]["bn"]
    assert raw["lr"]["bn-at-none-lr"] == raw["lr"]["none"]
    assert {raw["lr"][arm] for arm in regularization.TUNED} <= set(config.lrs)
    assert set(raw["tuning"]) == {"none", "bn", "bn-pop"}  # bn-pop has its own lr
    for figure in results["figures"]:
        assert (out / figure["file"]).is_file()
    common = min(raw["lr"]["bn"], raw["lr"]["bn-pop"])
    assert raw["lr"]["bn-at-common-lr"] == raw["lr"]["bn-pop-at-common-lr"] == common
    units = sorted((out / "units").glob("*.json"))
    same = raw["same_as"]
    assert same == regularization.same_as(raw["lr"])
    assert len(same) >= 1  # one of the common-lr arms is its tuned arm
    assert len(units) == 3 * 2 + (len(regularization.ARMS) - len(same)) * config.seeds
    assert (out / "units" / "bn-pop-seed200.json").is_file()  # fresh seeds 200, 201
    for arm in same:  # a duplicate is not rerun
        assert not (out / "units" / f"{arm}-seed200.json").exists()
    per_seed = raw["per_seed"][""]
    assert set(per_seed) == set(regularization.ARMS)
    for arm, base in same.items():  # shown and voted with its base arm's values
        assert per_seed[arm] == per_seed[base]
    for step in per_seed["bn"]["steps_to_fit"]:
        # the fit is read every fit_every steps and at the last step
        assert step is None or step == config.steps or step % config.fit_every == 0
    assert "test_nll_at_2.2" in per_seed["none"]  # a shown fit level
    assert len(results["verdicts"]) == 3
    for verdict, rule in zip(results["verdicts"], regularization.CLAIMS, strict=True):
        assert verdict["holds"] is None
        assert verdict["measured"].startswith("no verdict at this budget: ")
        assert verdict["measured"].startswith(rule.rule(results)[1] + ":")
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(), resume=True, quick=True)
    assert again["units_reused"] == len(units)
    assert again["raw"]["per_seed"] == raw["per_seed"]


def test_choose_lr_takes_the_best_validation_accuracy() -> None:
    tuning = {"none": {0.1: 80.0, 0.3: 85.0, 1.0: None}, "bn": {0.1: 84.0, 0.3: 84.0}}
    assert regularization.choose_lr(tuning) == {"none": 0.3, "bn": 0.1}  # a tie: the smaller
    assert regularization.choose_lr({"none": {0.1: None}}) == {"none": None}


def test_common_lr_and_duplicate_arms() -> None:
    # the run at 60f72f8: none 0.3, bn 0.3, bn-pop 0.1
    lrs = regularization.arm_lrs({"none": 0.3, "bn": 0.3, "bn-pop": 0.1})
    assert lrs["bn-at-common-lr"] == lrs["bn-pop-at-common-lr"] == 0.1
    assert regularization.same_as(lrs) == {"bn-at-none-lr": "bn", "bn-pop-at-common-lr": "bn-pop"}
    grid = regularization.main_grid(regularization.RegularizationConfig(), lrs)
    assert {c.variant for c in grid.cells()} == {
        "none",
        "bn",
        "bn-pop",
        "bn-vb8",
        "bn-at-common-lr",
    }
    assert len(grid.cells()) == 5 * 5
    # bn tuned lower than bn-pop: bn runs at the common lr, bn-pop is rerun there
    lrs = regularization.arm_lrs({"none": 0.1, "bn": 0.3, "bn-pop": 1.0})
    assert regularization.same_as(lrs) == {"bn-at-common-lr": "bn"}
    # bn-pop diverged everywhere: no common lr, nothing duplicated there
    lrs = regularization.arm_lrs({"none": 0.3, "bn": 0.3, "bn-pop": None})
    assert lrs["bn-at-common-lr"] is None
    assert regularization.same_as(lrs) == {"bn-at-none-lr": "bn", "bn-pop-at-common-lr": "bn-pop"}
    arms = regularization.with_duplicates({"bn": {"x": [1]}}, {"bn-at-none-lr": "bn"})
    assert arms["bn-at-none-lr"] == {"x": [1]}


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="virtual_batch 6 must divide the batch 64"):
        regularization.RegularizationConfig(virtual_batch=6)
    with pytest.raises(ValueError, match=r"lrs must be positive values, got \(\)"):
        regularization.RegularizationConfig(lrs=())
    with pytest.raises(ValueError, match=r"fit_target must be > 0, got -0\.1"):
        regularization.RegularizationConfig(fit_target=-0.1)


def test_full_config_is_the_declared_design() -> None:
    full = regularization.RegularizationConfig()
    assert full.seeds == full.min_seeds == 5
    assert full.test_size is None  # the full test set
    assert full.train_size + full.val_size <= 60000  # validation disjoint from training
    assert full.first_seed == 200  # fresh seeds for the confirmatory run
    assert [s.metric for s in regularization.specs(full)] == [
        "test_nll_at_fit",
        "test_acc",
        "test_nll_at_fit",
    ]
    noise = regularization.specs(full)[2]  # voted at the common lr
    assert (noise.arm, noise.reference) == ("bn-at-common-lr", "bn-pop-at-common-lr")


SPREAD = [-0.01, 0.005, 0.0, 0.01, -0.005]


def results_of(nll: dict[str, float], acc: dict[str, float], n: int = 5) -> dict:
    """Per-seed matched-fit test NLL and final test accuracy per arm (spread per seed)."""
    arms = {
        arm: {
            "test_nll_at_fit": [nll[arm] + d for d in SPREAD[:n]],
            "test_acc": [acc[arm] + 10 * d for d in SPREAD[:n]],
        }
        for arm in ("none", "bn", "bn-pop")
    }
    # the noise claim's arms at the common lr (here the same numbers as bn, bn-pop)
    arms["bn-at-common-lr"], arms["bn-pop-at-common-lr"] = arms["bn"], arms["bn-pop"]
    specs = [spec_record(s) for s in regularization.specs(regularization.RegularizationConfig())]
    return {"raw": {"per_seed": {"": arms}, "specs": specs}}


def verdicts(results: dict) -> dict[str, str]:
    return {c.key: c.rule(results)[1] for c in regularization.CLAIMS}


def test_rules_on_synthetic_numbers() -> None:
    clear = results_of(
        {"none": 0.50, "bn": 0.40, "bn-pop": 0.48}, {"none": 84.0, "bn": 86.0, "bn-pop": 85.0}
    )
    assert verdicts(clear) == dict.fromkeys(
        ("bn-regularizes", "bn-improves-generalization", "bn-noise-regularizes"), stats.SUPPORTED
    )
    # the null: equal numbers -> refuted (equivalence within the margins)
    null = results_of(
        {"none": 0.45, "bn": 0.45, "bn-pop": 0.45}, {"none": 85.0, "bn": 85.0, "bn-pop": 85.0}
    )
    assert set(verdicts(null).values()) == {stats.REFUTED}
    # BN overfits more (higher NLL at matched fit): refuted, not merely "not significant"
    worse = results_of(
        {"none": 0.45, "bn": 0.55, "bn-pop": 0.55}, {"none": 85.0, "bn": 85.0, "bn-pop": 85.0}
    )
    assert verdicts(worse)["bn-regularizes"] == stats.REFUTED
    # too few seeds: no verdict
    few = results_of(
        {"none": 0.5, "bn": 0.4, "bn-pop": 0.5}, {"none": 84.0, "bn": 86.0, "bn-pop": 85.0}, n=3
    )
    assert set(verdicts(few).values()) == {stats.NO_VERDICT}


def test_noise_is_inconclusive_and_chance_runs_are_excluded() -> None:
    noisy = results_of(
        {"none": 0.45, "bn": 0.45, "bn-pop": 0.45}, {"none": 85.0, "bn": 85.0, "bn-pop": 85.0}
    )
    arms = noisy["raw"]["per_seed"][""]
    arms["bn"]["test_nll_at_fit"] = [0.35, 0.55, 0.40, 0.56, 0.38]
    evidence, verdict = regularization.CLAIMS[0].rule(noisy)
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    # a BN seed at chance is excluded: 4 seeds left, fewer than min_seeds
    arms["bn"]["test_acc"][2] = 10.5
    evidence, verdict = regularization.CLAIMS[0].rule(noisy)
    assert evidence["excluded"][0]["seed"] == 2
    assert verdict == stats.NO_VERDICT


def test_matched_fit_reads_the_clock_every_few_steps(fake_data) -> None:
    # The fit is a clock read every `clock_every` steps (and at the last): the readout is
    # taken at the first reading at or below each target, not at the mini-batch loss.
    from bnlab.lab.kit import sweeps
    from bnlab.lab.runner import Bench

    readings = iter([3.0, 1.5, 0.9, 0.4])
    got = sweeps.train_run(
        regularization.build_model(tiny_config(), "none", 0),
        fake_data(),
        lr=0.1,
        steps=8,
        batch=16,
        seed=0,
        bench=Bench(None, torch.device("cpu")),
        window=3,
        readout=lambda m: {"acc": 50.0},
        fit_targets=(1.0, 0.5, 0.1),
        clock=lambda m: next(readings),
        clock_every=2,
    )
    assert got["clock"] == {"steps": [2, 4, 6, 8], "values": [3.0, 1.5, 0.9, 0.4]}
    assert got["at_fit"]["1.0"] == {"step": 6, "fit": 0.9, "acc": 50.0}
    assert got["at_fit"]["0.5"]["step"] == 8
    assert got["at_fit"]["0.1"] is None  # never reached: no value (excluded)
