"""``batch-size`` (second edition): BN's statistics batch at a fixed SGD batch.

A tiny run end to end (results, figure, "no verdict at this budget", resume), the
declared rule on synthetic per-seed numbers whose answer is known (including the null),
one cell of each setting, paired init across arms, config errors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab import batch_size, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab, seeded
from bnlab.lab.runner import Bench, Cell

FIXED, EQUAL = batch_size.FIXED, batch_size.EQUAL


def tiny_config(**kw) -> batch_size.BatchSizeConfig:
    tiny = {
        "seeds": 2,
        "steps": 3,
        "batch": 8,
        "virtual_batches": (2, 4, 8),
        "widths": (4, 8, 8),
        "train_size": 64,
        "test_size": 32,
    }
    return dataclasses.replace(batch_size.BatchSizeConfig.quick(), **(tiny | kw))


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("batch-size")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(64, 32), quick=True)
    per_seed = results["raw"]["per_seed"]
    assert set(per_seed) == {FIXED, EQUAL}
    assert set(per_seed[FIXED]) == {"bn-vb2", "bn-vb4", "bn-vb8", "groupnorm", "none"}
    assert set(per_seed[EQUAL]) == {"bn-vb2", "groupnorm"}
    assert all(len(m["test_acc"]) == 2 for arms in per_seed.values() for m in arms.values())
    assert (out / "batch_size.png").is_file()
    # two seeds < min_seeds: the declared rule gives no verdict, and says so
    assert [c["verdict"] for c in results["raw"]["claims"]] == [stats.NO_VERDICT] * 2
    for v in results["verdicts"]:
        assert v["holds"] is None
        assert v["measured"].startswith("no verdict at this budget: ")
        assert "fewer than the declared minimum of 5" in v["measured"]
    # the shown verdict is the rule applied to the run's own results
    for rule, v in zip(batch_size.CLAIMS, results["verdicts"], strict=True):
        assert v["measured"].startswith(rule.rule(results)[1] + ":")
    # resume: one unit deleted is recomputed to the same numbers, the others reused
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 * (5 + 2)
    units[0].unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(64, 32), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    assert again["raw"]["per_seed"] == per_seed


NOISE = np.array([0.10, -0.20, 0.05, 0.15, -0.10])


def synthetic(acc: dict[str, float], noise: dict[str, np.ndarray] | None = None) -> dict:
    """results with per-seed accuracies ``acc[arm] + noise`` at the fixed batch."""
    noise = noise or {}
    config = batch_size.BatchSizeConfig()
    per_seed = {
        FIXED: {
            arm: {"test_acc": list(80.0 + mean + noise.get(arm, NOISE))}
            for arm, mean in acc.items()
        }
    }
    return {
        "raw": {"per_seed": per_seed, "specs": [spec_record(s) for s in batch_size.specs(config)]}
    }


def verdicts(results: dict) -> list[str]:
    return [c.rule(results)[1] for c in batch_size.CLAIMS]


def test_rule_on_known_numbers() -> None:
    base = {"bn-vb32": 0.0, "groupnorm": -0.3}
    # BN at batch 2 three points lower, GroupNorm 2.7 above it: both claims supported
    assert verdicts(synthetic({**base, "bn-vb2": -3.0})) == [stats.SUPPORTED, stats.SUPPORTED]
    # BN at batch 2 equal to batch 32 (within 0.05): refuted; GroupNorm 0.3 below BN at
    # batch 2, inside the margin: refuted
    assert verdicts(synthetic({**base, "bn-vb2": 0.0})) == [stats.REFUTED, stats.REFUTED]
    # BN at batch 2 *better* by 3 points: refuted (significant and opposite)
    assert verdicts(synthetic({**base, "bn-vb2": 3.0}))[0] == stats.REFUTED


def test_rule_on_the_null_with_noise_is_inconclusive() -> None:
    """Equal means, seed noise of about 1.5 points: neither a difference nor equivalence
    within 0.5 points is shown; the verdict says how many seeds would decide."""
    big = {"bn-vb2": np.array([2.0, -1.0, 1.5, -2.0, 0.5]), "bn-vb32": np.zeros(5)}
    results = synthetic({"bn-vb2": 0.0, "bn-vb32": 0.0, "groupnorm": 0.0}, big)
    evidence, verdict = batch_size.CLAIMS[0].rule(results)
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    assert "would give 80% power" in evidence["budget_advice"]


def test_runs_at_chance_are_excluded() -> None:
    results = synthetic({"bn-vb2": -3.0, "bn-vb32": 0.0, "groupnorm": 0.0})
    results["raw"]["per_seed"][FIXED]["bn-vb2"]["test_acc"][0] = 10.5  # never left chance
    evidence, verdict = batch_size.CLAIMS[0].rule(results)
    assert verdict == stats.NO_VERDICT  # 4 seeds left < 5
    assert evidence["excluded"][0]["seed"] == 0


def test_cells_of_both_settings(fake_data) -> None:
    config = tiny_config()
    bench = Bench(batch_size.prepare(config, fake_data(64, 32)), torch.device("cpu"))
    fixed = batch_size.measure(config, Cell(FIXED, "bn-vb2", 0), bench)
    assert (fixed["batch"], fixed["steps"], fixed["lr"]) == (8, 3, config.lr)
    equal = batch_size.measure(config, Cell(EQUAL, "bn-vb2", 0), bench)
    assert (equal["batch"], equal["steps"]) == (2, 12)
    assert equal["lr"] == pytest.approx(config.lr * 2 / 8)
    assert 0.0 <= fixed["metrics"]["test_acc"] <= 100.0


def test_arms_share_their_initial_weights() -> None:
    def convs(arm: str) -> list[torch.Tensor]:
        with seeded(3):
            model = batch_size._model(batch_size.BatchSizeConfig(), arm)
        return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    reference = convs("bn-vb32")
    for arm in ("bn-vb2", "groupnorm", "none"):
        for a, b in zip(convs(arm), reference, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"virtual_batches": (2, 3, 8)}, "virtual batch 3 must be >= 2 and divide"),
        ({"virtual_batches": (4, 8)}, "must include the small batch 2"),
        ({"steps": 0}, "steps must be > 0, got 0"),
    ],
)
def test_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        batch_size.grid(tiny_config(**kw))
