"""``batch-size``: a tiny run end to end (results, figure, verdicts), resume, rules, model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import batch_size
from bnlab.lab.claims import VERDICTS
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.train.fit import StepInfo


def fake_data(train: int = 64, test: int = 32) -> dict[str, torch.Tensor]:
    x, y = fake_images_labels(train, seed=0)
    tx, ty = fake_images_labels(test, seed=1)
    return {
        "train_images": x,
        "train_labels": y.long(),
        "test_images": tx,
        "test_labels": ty.long(),
    }


def tiny_config() -> batch_size.BatchSizeConfig:
    return dataclasses.replace(
        batch_size.BatchSizeConfig.quick(),
        batch_sizes=(2, 8),
        reference_batch=8,
        train_size=16,
        test_size=32,
    )


def test_quick_run_writes_results_figure_and_resumes(tmp_path: Path) -> None:
    spec = get_lab("batch-size")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(), quick=True)
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
    again = run_lab(spec, config, out, data=fake_data(), resume=True, quick=True)
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
    for r in (degrade, flat, both):
        for rule in (batch_size.bn_degrades_rule, batch_size.renorm_ghost_rule):
            assert rule(r)[1] in VERDICTS


def test_model_shapes_norms_and_errors() -> None:
    x = torch.randn(3, 1, 28, 28)
    for norm in batch_size.NORMS:
        for twins in (True, False):
            model = batch_size.SmallReluCNN(norm, twins=twins)
            assert model(x).shape == (3, 10)
    ghost = batch_size.SmallReluCNN("ghost", ghost_virtual_batch=4)
    assert ghost.norm1.virtual_batch_size == 4
    assert batch_size.SmallReluCNN("groupnorm").norm2.num_groups == 4
    with pytest.raises(ValueError, match="unknown norm 'bn' for SmallReluCNN; choose one of: none"):
        batch_size.SmallReluCNN("bn")
    with pytest.raises(ValueError, match="group_size 3 does not divide 8 channels"):
        batch_size.SmallReluCNN("groupnorm", group_size=3)


def test_config_checks_and_full_defaults(tmp_path: Path) -> None:
    full = batch_size.BatchSizeConfig()
    assert full.batch_sizes == (2, 4, 8, 16, 32, 64, 128, 256)
    assert full.seeds == 3
    assert set(full.norms) == set(batch_size.NORMS)
    bad = dataclasses.replace(tiny_config(), reference_batch=32)
    with pytest.raises(ValueError, match=r"reference_batch 32 is not in batch_sizes \(2, 8\)"):
        run_lab(get_lab("batch-size"), bad, tmp_path / "bad", data=fake_data())


def test_renorm_warmup_scales_the_paper_schedule() -> None:
    assert batch_size.renorm_warmup(batch_size.SmallReluCNN("bnlab"), 100) is None
    model = batch_size.SmallReluCNN("batchrenorm")
    on_step = batch_size.renorm_warmup(model, 100, ramp=0.5)
    assert (model.norm1.r_max, model.norm1.d_max) == (1.0, 0.0)  # batch norm at first
    on_step(StepInfo(epoch=1, step=50, batch=50, num_batches=100, batch_size=2, loss=1.0))
    assert model.norm2.r_max == pytest.approx(3.0)  # r_max's final value at half the run
    assert model.norm2.d_max == pytest.approx(5.0)
