"""``predict-mode``: tiny run (results, figures, resume), the class-sorted loader, the
batch-of-one text, momentum setting, and the verdict rules on synthetic numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import predict_mode
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.models import create


def tiny_config() -> predict_mode.PredictModeConfig:
    return dataclasses.replace(
        predict_mode.PredictModeConfig.quick(),
        train_size=64,
        test_size=48,
        batch_size=16,
        test_batches=(1, 2, 8),
        sorted_test_batch=16,
    )


def test_quick_run_writes_results_figures_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("predict-mode")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(96, 48), quick=True)
    cells = results["raw"]["cells"]
    assert len(cells) == (len(config.momenta) + 1) * config.seeds
    for name in ("test_batch.png", "momentum.png", "non_iid.png"):
        assert (out / name).is_file()
    base = [c for c in cells if c["training"] == "shuffled" and c["momentum"] == "0.1"]
    assert all(c["batch_stats"]["1"].startswith("ValueError: Expected more than 1") for c in base)
    assert all(isinstance(c["batch_stats"]["2"], float) for c in base)
    assert {c["momentum"] for c in cells} == {"0.1", "cumulative"}
    for verdict, rule in zip(
        results["verdicts"],
        (predict_mode.moving_average_rule, predict_mode.recalibration_rule, predict_mode.iid_rule),
        strict=True,
    ):
        assert verdict["holds"] == {"supported": True, "not supported": False}.get(rule(results)[1])
    (out / "units" / "sorted-m0.1-seed0.json").unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(96, 48), resume=True, quick=True)
    assert again["units_reused"] == len(cells) - 1
    assert again["raw"]["cells"] == json.loads(json.dumps(cells))
    keys = [f"{c.variant}-seed{c.seed}" for c in predict_mode.grid(config).cells()]
    assert keys == [  # the old unit order: per seed, each momentum shuffled, then sorted
        f"{arm}-seed{s}"
        for s in (0, 1)
        for arm in ("shuffled-m0.1", "shuffled-mcumulative", "sorted-m0.1")
    ]
    with pytest.raises(ValueError, match=r"default_momentum 0.5 is not in momenta \(0.1, None\)"):
        predict_mode.grid(dataclasses.replace(config, default_momentum=0.5))


def test_class_sorted_loader_batches_hold_one_or_two_classes() -> None:
    x, y = fake_images_labels(100, seed=0)
    loader = predict_mode.ClassSortedLoader(x, y.long(), 10, seed=1)
    seen = []
    for bx, by in loader:
        assert bx.shape[1:] == (1, 28, 28)
        assert bx.dtype == torch.float32
        assert len(set(by.tolist())) <= 2
        seen += by.tolist()
    assert sorted(seen) == sorted(y.tolist())
    assert len(loader) == 10
    assert loader.batch_size == 10
    first = [b.tolist() for _, b in loader]
    loader.set_epoch(1)
    assert [b.tolist() for _, b in loader] != first  # another batch order per epoch
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        predict_mode.ClassSortedLoader(x, y, 0)
    with pytest.raises(ValueError, match="100 images but 99 labels"):
        predict_mode.ClassSortedLoader(x, y[:99], 4)


def test_batch_stats_by_size_keeps_the_batch_of_one_error() -> None:
    model = create("lenet", norm="bnlab")
    x, y = fake_images_labels(8, seed=0)
    got = predict_mode.batch_stats_by_size(model, x, y.long(), [1, 4], device="cpu")
    assert got["1"].startswith(
        "ValueError: BatchNorm1d: expected more than 1 value per channel when training"
    )
    assert 0.0 <= got["4"] <= 1.0
    assert predict_mode.set_bn_momentum(model, None) == 4
    assert model.norm1.momentum is None


def _results(moving, batch2, recal, sorted_moving, shuffled_bs, sorted_bs) -> dict:
    cells = []
    for s in range(3):
        cells.append(
            {
                "training": "shuffled",
                "momentum": "0.1",
                "seed": s,
                "moving_acc": moving[s],
                "recal_acc": recal[s],
                "batch_stats": {"1": "ValueError: ...", "2": batch2[s]},
                "batch_stats_shuffled": shuffled_bs[s],
                "batch_stats_sorted": sorted_bs[s],
            }
        )
        cells.append(
            {
                "training": "sorted",
                "momentum": "0.1",
                "seed": s,
                "moving_acc": sorted_moving[s],
                "recal_acc": sorted_moving[s],
                "batch_stats_shuffled": shuffled_bs[s],
                "batch_stats_sorted": sorted_bs[s],
            }
        )
    return {
        "raw": {
            "cells": cells,
            "momenta": ["0.1"],
            "default_momentum": "0.1",
            "min_effect": 0.01,
        }
    }


def test_rules_on_synthetic_numbers() -> None:
    hi, lo, same = [0.80, 0.81, 0.79], [0.50, 0.52, 0.51], [0.80, 0.80, 0.81]
    r = _results(hi, lo, same, lo, hi, lo)
    assert predict_mode.moving_average_rule(r)[1] == "supported"
    assert predict_mode.recalibration_rule(r)[1] == "supported"
    assert predict_mode.iid_rule(r)[1] == "supported"
    r = _results(hi, same, lo, hi, hi, same)
    assert predict_mode.moving_average_rule(r)[1] == "mixed"  # only B=1 fails
    assert predict_mode.recalibration_rule(r)[1] == "not supported"
    assert predict_mode.iid_rule(r)[1] == "not supported"
    r = _results(hi, lo, hi, lo, hi, same)
    assert predict_mode.iid_rule(r)[1] == "mixed"


def test_rules_on_the_null() -> None:
    """Equal accuracies everywhere: only the batch of one's error speaks for the claim."""
    same = [0.70, 0.72, 0.71]
    r = _results(same, same, same, same, same, same)
    evidence, verdict = predict_mode.moving_average_rule(r)
    assert verdict == "mixed"  # a test batch of one raises; batches of 2 are no worse
    assert evidence["batch_of_one_fails"] is True
    assert evidence["moving_minus_batch2"]["direction"] == "unclear"
    evidence, verdict = predict_mode.recalibration_rule(r)
    assert verdict == "supported"  # "at least as good": equal is good enough
    assert evidence["0.1"]["diff"] == pytest.approx(0.0, abs=1e-12)
    evidence, verdict = predict_mode.iid_rule(r)
    assert verdict == "not supported"
    assert {g["direction"] for g in evidence.values()} == {"unclear"}
