"""``predict-mode``: the quick run end to end (no verdict, figures, resume), the replayed
moving averages against BN's own, the declared rules on synthetic per-seed numbers whose
answer is known (including the null and too few seeds), config errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlab.lab import predict_mode, stats
from bnlab.lab.claims import spec_record, stats_rule
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.models.lenet import LeNet


def tiny_config(**kw) -> predict_mode.PredictModeConfig:
    tiny = {
        "train_size": 64,
        "test_size": 48,
        "batch": 16,
        "test_batches": (2, 8),
        "sorted_test_batch": 16,
    }
    return dataclasses.replace(predict_mode.PredictModeConfig.quick(), **(tiny | kw))


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("predict-mode")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(96, 48), quick=True)
    raw = results["raw"]
    for name in ("test_batch.png", "statistics.png"):
        assert (out / name).is_file()
    cells = raw["cells"]
    assert len(cells) == config.seeds
    assert all(c["batch_of_one"].startswith("ValueError: Expected more than 1") for c in cells)
    assert all(c["hook_vs_layer_max_diff"] < 1e-4 for c in cells)
    assert all(c["moving"]["0.1"] == c["model_acc"] for c in cells)
    assert set(raw["per_seed"]) == {
        "test batch 2",
        "test batch 8",
        "momentum 0.01",
        "momentum 0.1",
        "momentum 0.5",
        "momentum cumulative",
        "epoch 1, momentum 0.01",
        "epoch 1, momentum 0.1",
        "epoch 1, momentum 0.5",
        "epoch 1, momentum cumulative",
        "test batch 16, class-sorted",
    }
    assert all(c["mid"]["step"] == config.checkpoint_step > 0 for c in cells)
    (shown,) = raw["shown"]
    assert [r["setting"] for r in shown["settings"]] == [
        "momentum cumulative",
        "epoch 1, momentum cumulative",
    ]
    voted = raw["claims"][1]["settings"]
    assert "momentum cumulative" not in [r["setting"] for r in voted]
    assert len(voted) == 6
    for verdict, rule in zip(results["verdicts"], predict_mode.CLAIMS, strict=True):
        assert verdict["holds"] is None
        assert verdict["measured"].startswith("no verdict at this budget: ")
        assert verdict["measured"].startswith(rule.rule(results)[1] + ":")
    (out / "units" / "lenet-bn-seed1.json").unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(96, 48), resume=True, quick=True)
    assert again["units_reused"] == config.seeds - 1
    assert again["raw"]["per_seed"]["momentum 0.5"] == raw["per_seed"]["momentum 0.5"]


@pytest.mark.parametrize("layer_momentum", [0.1, None])
def test_replayed_moving_averages_equal_bn_own(layer_momentum) -> None:
    torch.manual_seed(0)
    model = LeNet("torch")
    for m in model.modules():
        if isinstance(getattr(m, "running_mean", None), torch.Tensor):
            m.momentum = layer_momentum
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with predict_mode.MovingAverages(model, (0.01, layer_momentum)) as averages:
        for _ in range(4):
            x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        model(torch.rand(2, 1, 28, 28))  # eval forwards do not count
    assert not any(m._forward_pre_hooks for m in model.modules())
    mine = averages.stats[predict_mode.momentum_key(layer_momentum)]
    for name, layer in averages.layers.items():
        torch.testing.assert_close(mine[name][0], layer.running_mean)
        torch.testing.assert_close(mine[name][1], layer.running_var)
    other = predict_mode.with_statistics(model, averages.stats["0.01"])
    name = next(iter(averages.layers))
    torch.testing.assert_close(
        dict(other.named_modules())[name].running_mean, averages.stats["0.01"][name][0]
    )
    assert not torch.equal(
        dict(other.named_modules())[name].running_mean, averages.layers[name].running_mean
    )


NOISE = np.array([0.1, -0.2, 0.05, 0.15, -0.1])


def synthetic(moving: float, batch2: float, recal: float, sorted_: float, *, noise=NOISE, seeds=5):
    """Per-cell results with ``seeds`` seeds: every readout at its value plus ``noise``."""
    config = predict_mode.PredictModeConfig(
        test_batches=(2,), momenta=(0.1,), sorted_test_batch=256
    )
    results = [
        {
            "model_acc": moving + noise[s],
            "moving": {"0.1": moving + noise[s]},
            "recalibrated": recal + noise[s] * 0.5,
            "mid": {"moving": {"0.1": moving - 1 + noise[s]}, "recalibrated": recal - 1 + noise[s]},
            "batch_stats": {"2": batch2 - noise[s]},
            "class_sorted": sorted_ - noise[s],
            "shuffled": 85.0 + noise[s] * 0.3,
        }
        for s in range(seeds)
    ]
    raw = {
        "per_seed": predict_mode.per_seed_of(config, results),
        "specs": [spec_record(s) for s in predict_mode.specs(config)],
    }
    return {"raw": raw}


def verdicts(results) -> dict[str, str]:
    return {c.key: c.rule(results)[1] for c in predict_mode.CLAIMS}


def test_rules_on_known_numbers() -> None:
    assert verdicts(synthetic(85.0, 60.0, 86.5, 25.0)) == {
        "bn-predict-with-moving-averages": stats.SUPPORTED,
        "precise-bn-beats-moving-averages": stats.SUPPORTED,
        "non-iid-batches-hurt-bn": stats.SUPPORTED,
    }
    # the null: every readout equal within the margin -> refuted (equivalence shown)
    assert set(verdicts(synthetic(85.0, 85.0, 85.0, 85.0)).values()) == {stats.REFUTED}
    # noise larger than the margin: inconclusive, with a budget
    wide = np.array([3.0, -2.0, 2.5, -3.5, 0.0])
    evidence, verdict = stats_rule("non-iid-batches-hurt-bn")(
        synthetic(85.0, 85.0, 85.0, 85.0, noise=wide)
    )
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    # fewer seeds than the declared minimum: no verdict
    assert set(verdicts(synthetic(85.0, 60.0, 86.5, 25.0, seeds=3)).values()) == {stats.NO_VERDICT}


def test_context_dependent_across_test_batches() -> None:
    config = predict_mode.PredictModeConfig(test_batches=(2, 256), momenta=(0.1,))
    results = [
        {
            "model_acc": 85.0 + n,
            "moving": {"0.1": 85.0 + n},
            "recalibrated": 85.0 + n,
            "mid": {"moving": {"0.1": 83.0 + n}, "recalibrated": 84.0 + n * 1.1},
            "batch_stats": {"2": 60.0 + n, "256": 85.0 + n * 1.1},
            "class_sorted": 25.0,
            "shuffled": 85.0,
        }
        for n in NOISE
    ]
    raw = {
        "per_seed": predict_mode.per_seed_of(config, results),
        "specs": [spec_record(s) for s in predict_mode.specs(config)],
    }
    evidence, verdict = stats_rule("bn-predict-with-moving-averages")({"raw": raw})
    assert verdict == stats.CONTEXT_DEPENDENT
    assert [r["status"] for r in evidence["settings"]] == ["better", "equivalent"]
    # precise BN: better mid-training (the EMA lags), equivalent at the end
    evidence, verdict = stats_rule("precise-bn-beats-moving-averages")({"raw": raw})
    assert verdict == stats.CONTEXT_DEPENDENT
    assert [(r["setting"], r["status"]) for r in evidence["settings"]] == [
        ("momentum 0.1", "equivalent"),
        ("epoch 1, momentum 0.1", "better"),
    ]


def test_a_model_at_chance_is_excluded() -> None:
    results = synthetic(85.0, 60.0, 86.5, 25.0)
    for arms in results["raw"]["per_seed"].values():
        for arm in arms.values():
            arm["model_acc"][2] = 10.5
    evidence, verdict = stats_rule("non-iid-batches-hurt-bn")(results)
    assert verdict == stats.NO_VERDICT  # 4 pairs left < 5
    assert {e["reason"] for e in evidence["excluded"]} == {
        "never left chance (model_acc within 2.0 of 10.0)"
    }


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"default_momentum": 0.5, "momenta": (0.1, None)},
            r"default_momentum 0.5 is not in momenta \(0.1, None\)",
        ),
        ({"test_batches": (1, 8)}, r"test_batches must be sizes >= 2 .*got \(1, 8\)"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"margin": -1.0}, "margin must be > 0, got -1.0"),
        ({"momenta": (None,)}, r"momenta must hold a momentum other than None"),
        ({"checkpoint_epoch": 2}, r"checkpoint_epoch must be in \[0, epochs\) = \[0, 2\), got 2"),
        ({"first_seed": -1}, "first_seed must be >= 0, got -1"),
    ],
)
def test_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        predict_mode.grid(tiny_config(**kw))


def test_without_checkpoint_and_cumulative_is_not_voted() -> None:
    config = predict_mode.PredictModeConfig(checkpoint_epoch=0)
    (_, precise, _) = predict_mode.specs(config)
    assert precise.settings == ("momentum 0.01", "momentum 0.1", "momentum 0.5")
    assert predict_mode.shown_specs(config)[0].settings == ("momentum cumulative",)
    assert predict_mode.shown_specs(dataclasses.replace(config, momenta=(0.1,))) == []
    full = predict_mode.PredictModeConfig()
    assert full.checkpoint_step == 234
    assert [c.seed for c in predict_mode.grid(full).cells()] == list(range(300, 320))
