"""``batch-size``: a tiny run end to end (results, figure, verdicts), resume, rules on
synthetic numbers, one cell, the renorm warm-up. The network: tests/models/test_small_cnn.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bnlab.lab import batch_size
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.kit import renorm_warmup
from bnlab.lab.runner import Bench, Cell
from bnlab.models.small_cnn import SmallReluCNN
from bnlab.train.fit import StepInfo


def tiny_config() -> batch_size.BatchSizeConfig:
    return dataclasses.replace(
        batch_size.BatchSizeConfig.quick(),
        batch_sizes=(2, 8),
        reference_batch=8,
        train_size=16,
        test_size=32,
    )


def test_quick_run_writes_results_figure_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("batch-size")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(64, 32), quick=True)
    cells = results["raw"]["cells"]
    assert len(cells) == len(batch_size.NORMS) * 2 * config.seeds
    assert (out / "batch_size.png").is_file()
    for cell in cells:
        assert (cell["test_acc_recal"] is None) == (cell["norm"] not in batch_size.BN_FAMILY)
        assert cell["lr"] == pytest.approx(config.base_lr * cell["batch_size"] / 256)
    assert [v["holds"] for v in results["verdicts"]] == [
        {"supported": True, "not supported": False}.get(rule(results)[1])
        for rule in (
            batch_size.bn_degrades_rule,
            batch_size.gn_stable_rule,
            batch_size.renorm_ghost_rule,
        )
    ]
    paper = results["tables"][3]["rows"]
    assert paper[0][1:3] == [23.6, 34.7]
    assert paper[1][1:3] == [24.1, 24.1]
    # Resume: delete one unit; it is recomputed to the same numbers, the rest reused.
    units = sorted((out / "units").glob("*.json"))
    units[0].unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(64, 32), resume=True, quick=True)
    assert again["units_reused"] == len(cells) - 1
    strip = [{k: v for k, v in c.items() if k != "wall_time_s"} for c in cells]
    assert [{k: v for k, v in c.items() if k != "wall_time_s"} for c in again["raw"]["cells"]] == (
        json.loads(json.dumps(strip))
    )


def _results(acc: dict[tuple[str, int], list[float]], recal=None) -> dict:
    cells = []
    for (norm, batch), values in acc.items():
        for seed, v in enumerate(values):
            r = None if recal is None else recal.get((norm, batch), [None] * 3)[seed]
            cells.append(
                {
                    "norm": norm,
                    "batch_size": batch,
                    "seed": seed,
                    "test_acc": v,
                    "test_acc_recal": r,
                }
            )
    return {"raw": {"cells": cells, "small_batch": 2, "reference_batch": 32, "min_effect": 0.01}}


def test_rules_on_synthetic_numbers() -> None:
    good, bad, same = [0.80, 0.81, 0.79], [0.60, 0.62, 0.61], [0.795, 0.80, 0.805]
    degrade = _results(
        {
            ("bnlab", 32): good,
            ("bnlab", 2): bad,
            ("none", 32): good,
            ("none", 2): same,
            ("groupnorm", 32): good,
            ("groupnorm", 2): same,
            ("batchrenorm", 2): good,
            ("ghost", 2): bad,
        }
    )
    assert batch_size.bn_degrades_rule(degrade)[1] == "supported"
    assert batch_size.gn_stable_rule(degrade)[1] == "supported"
    assert batch_size.renorm_ghost_rule(degrade)[1] == "mixed"
    flat = _results(
        {
            ("bnlab", 32): good,
            ("bnlab", 2): same,
            ("groupnorm", 32): good,
            ("groupnorm", 2): bad,
            ("batchrenorm", 2): same,
            ("ghost", 2): same,
        },
        recal={("bnlab", 32): good, ("bnlab", 2): bad},
    )
    assert batch_size.bn_degrades_rule(flat)[1] == "mixed"  # only the recalibrated drops
    assert batch_size.gn_stable_rule(flat)[1] == "not supported"
    assert batch_size.renorm_ghost_rule(flat)[1] == "not supported"
    flat_no_recal = _results({("bnlab", 32): good, ("bnlab", 2): same})
    assert batch_size.bn_degrades_rule(flat_no_recal)[1] == "not supported"
    both = _results({("bnlab", 2): bad, ("batchrenorm", 2): good, ("ghost", 2): good})
    assert batch_size.renorm_ghost_rule(both)[1] == "supported"
    # GroupNorm flat, but no better than a flat BN: stable, not more stable than BN.
    no_gain = _results(
        {("bnlab", 32): good, ("bnlab", 2): same, ("groupnorm", 32): good, ("groupnorm", 2): same}
    )
    assert batch_size.gn_stable_rule(no_gain)[1] == "mixed"
    assert batch_size.gn_stable_rule(_results({("bnlab", 32): good}))[1] == "not supported"


def test_rules_on_the_null() -> None:
    """Equal numbers everywhere: no drop, no reduction, nothing better than BN."""
    same = [0.70, 0.72, 0.71]
    null = _results(
        {(n, b): same for n in ("bnlab", "groupnorm", "batchrenorm", "ghost") for b in (2, 32)},
        recal={("bnlab", 32): same, ("bnlab", 2): same},
    )
    evidence, verdict = batch_size.bn_degrades_rule(null)
    assert verdict == "not supported"
    assert evidence["bn_drop"]["drop"] == pytest.approx(0.0, abs=1e-12)
    assert evidence["bn_drop"]["direction"] == "unclear"
    assert evidence["bn_drop_recalibrated"]["direction"] == "unclear"
    evidence, verdict = batch_size.gn_stable_rule(null)
    assert verdict == "mixed"  # GroupNorm does not drop, but is not better than BN
    assert evidence["gn_vs_bn"]["direction"] == "unclear"
    evidence, verdict = batch_size.renorm_ghost_rule(null)
    assert verdict == "not supported"
    assert {evidence[n]["direction"] for n in ("batchrenorm", "ghost")} == {"unclear"}


def test_one_cell_trains_at_the_linear_rule_lr(fake_data) -> None:
    config = tiny_config()
    got = batch_size.measure(
        config, Cell(8, "batchrenorm", 0), Bench(fake_data(64, 32), torch.device("cpu"))
    )
    assert got["lr"] == pytest.approx(0.4 * 8 / 256)
    assert got["steps"] == 2  # 16 images, batch 8, one epoch
    assert 0.0 <= got["test_acc"] <= 1.0
    assert 0.0 <= got["test_acc_recal"] <= 1.0
    grid = batch_size.grid(config)
    assert [grid.key(c) for c in grid.cells()][:3] == [
        "none-b2-seed0",
        "none-b8-seed0",
        "bnlab-b2-seed0",
    ]


def test_config_checks_and_full_defaults(tmp_path: Path, fake_data) -> None:
    full = batch_size.BatchSizeConfig()
    assert full.batch_sizes == (2, 4, 8, 16, 32, 64, 128, 256)
    assert full.seeds == 3
    assert set(full.norms) == set(batch_size.NORMS)
    bad = dataclasses.replace(tiny_config(), reference_batch=32)
    with pytest.raises(ValueError, match=r"reference_batch 32 is not in batch_sizes \(2, 8\)"):
        run_lab(get_lab("batch-size"), bad, tmp_path / "bad", data=fake_data(64, 32))


def test_renorm_warmup_scales_the_paper_schedule() -> None:
    assert renorm_warmup(SmallReluCNN("bnlab"), 100) is None
    model = SmallReluCNN("batchrenorm")
    on_step = renorm_warmup(model, 100, ramp=0.5)
    assert (model.norm1.r_max, model.norm1.d_max) == (1.0, 0.0)  # batch norm at first
    on_step(StepInfo(epoch=1, step=50, batch=50, num_batches=100, batch_size=2, loss=1.0))
    assert model.norm2.r_max == pytest.approx(3.0)  # r_max's final value at half the run
    assert model.norm2.d_max == pytest.approx(5.0)
