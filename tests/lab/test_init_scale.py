"""``init``: weight scaling, BN's scale invariance, a tiny run end to end ("no verdict
at this budget", the tuning table, the figure, resume), the lr choice, the declared rule
on synthetic per-seed numbers whose verdict is known (clear effect, the null, noise,
too few seeds, a width censored at the grid's ends), config errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from bnlab.lab import init_scale, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.runner import Cell, GridRun
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


def tiny_config(**kw) -> init_scale.InitConfig:
    tiny = {
        "factors": (0.1, 1.0),
        "lrs": (0.1, 1.0),
        "activations": ("relu",),
        "hidden": (16,),
        "steps": 6,
        "batch": 16,
        "window": 3,
        "train_size": 48,
        "val_size": 32,
        "test_size": 64,
        "target_acc": 5.0,
    }
    return dataclasses.replace(init_scale.InitConfig.quick(), **(tiny | kw))  # fmt: skip


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("init")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(), quick=True)
    raw = results["raw"]
    assert (out / "init_scale.png").is_file()
    assert set(raw["lr"]) == {"relu/none", "relu/bn"}
    assert all(lr in config.lrs for lr in raw["lr"].values())
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 * 2 + 2 * 2 * config.seeds  # tuning (lr x arm) + factor x arm x seed
    assert sum(u.name.startswith("tune-") for u in units) == 4
    (verdict,) = results["verdicts"]
    assert verdict["holds"] is None
    assert verdict["measured"].startswith("no verdict at this budget: ")
    assert verdict["measured"].startswith(init_scale.CLAIMS[0].rule(results)[1] + ":")
    again = run_lab(spec, config, out, data=fake_data(), resume=True, quick=True)
    assert again["units_reused"] == len(units)
    assert again["raw"]["per_seed"] == raw["per_seed"]


def test_choose_lrs_takes_the_best_validation_accuracy() -> None:
    cells = [Cell(("relu", lr), arm, 1000) for arm in ("none", "bn") for lr in (0.1, 1.0, 10.0)]
    results = [
        {"lr": 0.1, "diverged": False, "val_acc": 80.0},
        {"lr": 1.0, "diverged": False, "val_acc": 85.0},
        {"lr": 10.0, "diverged": True, "val_acc": None},
        {"lr": 0.1, "diverged": False, "val_acc": 70.0},
        {"lr": 1.0, "diverged": False, "val_acc": 70.0},  # a tie: the smaller lr
        {"lr": 10.0, "diverged": False, "val_acc": math.nan},
    ]
    assert init_scale.choose_lrs(GridRun(cells, results)) == {"relu/none": 1.0, "relu/bn": 0.1}
    diverged = [{"lr": 0.1, "diverged": True, "val_acc": None}]
    assert init_scale.choose_lrs(GridRun(cells[:1], diverged)) == {"relu/none": None}


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"factors must be at least two increasing positive"):
        init_scale.InitConfig(factors=(1.0,))
    with pytest.raises(ValueError, match=r"lrs must be at least two increasing positive"):
        init_scale.InitConfig(lrs=(-1.0, 1.0))
    with pytest.raises(ValueError, match=r"InitConfig: margin must be > 0, got 0"):
        init_scale.InitConfig(margin=0)


def test_full_config_is_the_declared_design() -> None:
    full = init_scale.InitConfig()
    assert full.seeds == full.min_seeds == 5
    assert full.test_size is None  # the full test set
    assert full.train_size + full.val_size <= 60000  # validation disjoint from training
    assert full.factors[0] == 0.001
    assert full.factors[-1] == 1000.0
    assert full.margin == 1.0  # one grid step (a factor of 10)
    assert full.first_seed == 100  # fresh seeds for the second run


def results_of(bn: list[float], none: list[float], **censored: list[bool]) -> dict:
    """init results with per-seed ``n_train`` (one activation)."""
    config = dataclasses.replace(init_scale.InitConfig(), activations=("relu",))
    n = len(bn)
    arms = {
        arm: {
            "n_train": values,
            "width_censored": censored.get(f"{arm}_censored", [False] * n),
        }
        for arm, values in (("bn", bn), ("none", none))
    }
    specs = [spec_record(s) for s in init_scale.specs(config)]
    return {"raw": {"per_seed": {"relu": arms}, "specs": specs}}


RULE = init_scale.CLAIMS[0].rule


@pytest.mark.parametrize(
    ("bn", "none", "verdict"),
    [
        ([5.0, 5.0, 4.0, 5.0, 5.0], [1.0, 2.0, 1.0, 1.0, 1.0], stats.SUPPORTED),
        ([2.0] * 5, [2.0] * 5, stats.REFUTED),  # the null: the same width
        ([1.0] * 5, [3.0, 3.0, 2.0, 3.0, 3.0], stats.REFUTED),  # narrower with BN
        ([5.0, 1.0, 3.0, 2.0, 4.0], [3.0, 3.0, 3.0, 3.0, 3.0], stats.INCONCLUSIVE),
        ([5.0] * 4, [1.0] * 4, stats.NO_VERDICT),  # under min_seeds
    ],
)
def test_rule_on_synthetic_numbers(bn: list[float], none: list[float], verdict: str) -> None:
    evidence, got = RULE(results_of(bn, none))
    assert got == verdict
    assert evidence["metric"] == "n_train"


def test_a_censored_width_withdraws_a_verdict_it_could_flip() -> None:
    clear = ([5.0, 5.0, 4.0, 5.0, 5.0], [1.0, 2.0, 1.0, 1.0, 1.0])
    one = [True, False, False, False, False]
    # BN training at an end of the grid: its width is a lower bound, 'supported' stands
    assert RULE(results_of(*clear, bn_censored=[True] * 5))[1] == stats.SUPPORTED
    # a no-BN width censored: it could be wider still, 'supported' is withdrawn
    evidence, verdict = RULE(results_of(*clear, none_censored=one))
    assert verdict == stats.INCONCLUSIVE
    assert "relu/seed#0" in evidence["censoring"]
    # the null with BN censored: not refuted
    assert RULE(results_of([7.0] * 5, [7.0] * 5, bn_censored=[True] * 5))[1] == stats.INCONCLUSIVE
