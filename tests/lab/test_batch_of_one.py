"""``batch-of-one``: claim 1's exact checks and error texts, BN at a batch of one is
InstanceNorm in training, a tiny run end to end (no verdict, figure, resume), the rules on
synthetic numbers whose answer is known (including the null and too few seeds), config
errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab import batch_of_one, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.runner import Bench
from bnlab.models.small_cnn import SmallReluCNN


def tiny_config(**kw) -> batch_of_one.BatchOfOneConfig:
    tiny = {"online_steps": 8, "window": 4, "train_size": 64, "test_size": 32, "predict_batch": 16}
    return dataclasses.replace(batch_of_one.BatchOfOneConfig.quick(), **(tiny | kw))


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("batch-of-one")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(64, 32), quick=True)
    raw = results["raw"]
    assert (out / "online.png").is_file()
    assert set(raw["per_seed"]) == {"instancenorm", "layernorm", "eval mode"}
    assert raw["lr"]["bn"] == raw["lr"]["instancenorm"]  # BN takes InstanceNorm's lr
    for p in raw["predict"]:
        assert p["one at a time"] == pytest.approx(p["batch of 500"])
        assert p["max_logit_change"] < 1e-4
    fc, online, predict = results["verdicts"]
    assert fc["measured"].startswith("supported: ")  # exact checks: decided at any budget
    assert predict["measured"].startswith("supported: eval mode, 2 seeds: ")
    assert predict["measured"].startswith(batch_of_one.CLAIMS[2].rule(results)[1] + ":")
    assert online["holds"] is None
    assert online["measured"].startswith("no verdict at this budget: ")
    assert online["measured"].startswith(batch_of_one.CLAIMS[1].rule(results)[1] + ":")
    assert [s["name"] for s in raw["specs"]] == ["layer-instance-norm-online"]
    (lost, rest) = raw["bn_modes"]
    assert lost[0].startswith("BN train mode - BN eval mode")
    assert rest[0].startswith("InstanceNorm - BN train mode")
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 3 * 2 + 5 * 2 + 1  # tuning + (4 online + 1 predict) x seeds + fc-check
    (out / "units" / "online-layernorm-seed1.json").unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(64, 32), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    assert again["raw"]["per_seed"] == raw["per_seed"]


def test_fc_check_and_the_error_texts() -> None:
    facts = batch_of_one.fc_check()
    assert facts["torch_error"] == (
        "ValueError: Expected more than 1 value per channel when training, got input size "
        "torch.Size([1, 120])"
    )
    assert facts["bnlab_error"].startswith(
        "ValueError: BatchNorm1d: expected more than 1 value per channel when training, got "
        "input of shape (1, 120)"
    )
    assert facts["max_x_hat"] == facts["max_weight_grad"] == facts["max_logit_difference"] == 0.0
    evidence, verdict = batch_of_one.fc_rule({"raw": {"fc_check": facts}})
    assert verdict == stats.SUPPORTED
    assert evidence["raises"]
    assert evidence["exactly_zero"]
    trains = dict(facts, torch_error="ok")
    assert batch_of_one.fc_rule({"raw": {"fc_check": trains}})[1] == stats.REFUTED
    learns = dict(facts, max_weight_grad=1e-3)
    assert batch_of_one.fc_rule({"raw": {"fc_check": learns}})[1] == stats.REFUTED


def test_conv_bn_at_a_batch_of_one_trains_as_instance_norm(fake_data) -> None:
    """Same weights, same losses: BN over (N=1, H, W) is InstanceNorm in training."""
    config = tiny_config(online_steps=6, window=3)
    bench = Bench(config.subsets(fake_data(64, 32), "batch-of-one"), torch.device("cpu"))
    bn = batch_of_one._online(config, "bn", 0.05, 0, bench)["metrics"]
    inn = batch_of_one._online(config, "instancenorm", 0.05, 0, bench)["metrics"]
    assert bn["online_loss"] == pytest.approx(inn["online_loss"], rel=1e-5)
    assert bn["online_acc"] == inn["online_acc"]
    # BN in train mode, one test image at a time, predicts as InstanceNorm does
    assert bn["train_mode_test_acc"] == pytest.approx(inn["test_acc"])
    assert SmallReluCNN("bnlab")(torch.rand(1, 1, 28, 28)).shape == (1, 10)


NOISE = np.array([0.4, -0.6, 0.2, 0.5, -0.3])


def synthetic(inn: float, ln: float, bn: float, *, noise=NOISE, same: bool = True) -> dict:
    """Five seeds: online test accuracies, online accuracy 70 %, and claim 3's eval
    accuracies (equal one at a time and in a batch when ``same``)."""
    config = batch_of_one.BatchOfOneConfig()
    n = len(noise)

    def arm(value: float, spread) -> dict:
        return {"test_acc": list(value + spread), "online_acc": [70.0] * n}

    single = [88.0 + d for d in noise * 0.1]
    per_seed = {
        "instancenorm": {"per-example norm": arm(inn, noise), "bn": arm(bn, noise * 0.5)},
        "layernorm": {"per-example norm": arm(ln, -noise), "bn": arm(bn, noise * 0.5)},
        "eval mode": {
            "one at a time": {"test_acc": single if same else [s - 2.0 for s in single]},
            "batch of 500": {"test_acc": single},
        },
    }
    predict = [
        {
            "one at a time": b if same else b - 2.0,
            "batch of 500": b,
            "max_logit_change": 2e-6 if same else 0.5,
        }
        for b in single
    ]
    return {
        "raw": {
            "per_seed": per_seed,
            "specs": [spec_record(s) for s in batch_of_one.specs(config)],
            "predict": predict,
        }
    }


def verdicts(results: dict) -> list[str]:
    return [c.rule(results)[1] for c in batch_of_one.CLAIMS[1:]]


def test_rules_on_known_numbers() -> None:
    assert verdicts(synthetic(80.0, 78.0, 70.0)) == [stats.SUPPORTED, stats.SUPPORTED]
    # the null for claim 2: equal accuracies; claim 3 with a 2-point gap: refuted
    assert verdicts(synthetic(75.0, 75.0, 75.0, same=False)) == [stats.REFUTED, stats.REFUTED]
    assert verdicts(synthetic(80.0, 75.0, 75.0))[0] == stats.CONTEXT_DEPENDENT
    wide = np.array([4.0, -6.0, 3.0, 5.0, -2.0])
    evidence, verdict = batch_of_one.CLAIMS[1].rule(synthetic(75.0, 75.0, 75.0, noise=wide))
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    # claim 3 is an exact check: decided at any number of seeds
    assert verdicts(synthetic(80.0, 78.0, 70.0, noise=NOISE[:3])) == [
        stats.NO_VERDICT,
        stats.SUPPORTED,
    ]


def test_prediction_rule_is_an_exact_check() -> None:
    results = synthetic(80.0, 78.0, 70.0)
    evidence, verdict = batch_of_one.prediction_rule(results)
    assert verdict == stats.SUPPORTED
    assert evidence["accuracies_equal"]
    assert evidence["max_logit_change"] == 2e-6
    # logits beyond the tolerance, accuracies equal: refuted
    results["raw"]["predict"][0]["max_logit_change"] = 2 * batch_of_one.LOGIT_TOLERANCE
    assert batch_of_one.prediction_rule(results)[1] == stats.REFUTED
    # one prediction flipped in one seed (0.01 points of 10,000 images): refuted
    flipped = synthetic(80.0, 78.0, 70.0)
    flipped["raw"]["predict"][3]["one at a time"] -= 0.01
    assert batch_of_one.prediction_rule(flipped)[1] == stats.REFUTED
    assert batch_of_one.prediction_rule({"raw": {"predict": []}})[1] == stats.NO_VERDICT


def test_bn_modes_pair_by_seed() -> None:
    bn = [{"test_acc": 70.0 + d, "train_mode_test_acc": 80.0 + d} for d in NOISE]
    inn = [{"test_acc": 80.0 + d} for d in NOISE]
    (cost, rest) = batch_of_one.bn_modes({"bn": bn, "instancenorm": inn}, 1.0)
    assert cost[1:] == ["+10.00", "[+10.00, +10.00]", 5]
    assert rest[1:] == ["+0.00", "[+0.00, +0.00]", 5]
    assert batch_of_one.bn_modes({"bn": bn, "instancenorm": inn[:4]}, 1.0) == []


def test_runs_at_chance_are_excluded() -> None:
    results = synthetic(80.0, 78.0, 70.0)
    results["raw"]["per_seed"]["layernorm"]["per-example norm"]["online_acc"][1] = 11.0
    evidence, verdict = batch_of_one.CLAIMS[1].rule(results)
    assert verdict == stats.SUPPORTED  # InstanceNorm decides; LayerNorm keeps 4 seeds
    assert [r["status"] for r in evidence["settings"]] == ["better", "excluded"]
    assert evidence["excluded"][0]["reason"] == (
        "never left chance (online_acc within 2.0 of 10.0)"
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lrs": ()}, r"lrs must be positive values, got \(\)"),
        ({"online_steps": 0}, "online_steps must be > 0, got 0"),
        ({"window": 9}, "window 9 exceeds online_steps 8"),
        ({"equivalence_margin": 0.0}, "equivalence_margin must be > 0, got 0.0"),
    ],
)
def test_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        batch_of_one.main_grid(tiny_config(**kw))
