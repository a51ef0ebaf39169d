"""``placement``: the models get the norm where asked; a tiny run end to end; the rule on
synthetic numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bnlab.lab import placement
from bnlab.lab.experiment import get_lab, run_lab


def test_quick_run(tmp_path: Path, fake_data) -> None:
    config = dataclasses.replace(
        placement.PlacementConfig.quick(), train_size=64, test_size=64, hidden=(16,)
    )
    results = run_lab(get_lab("placement"), config, tmp_path / "run", data=fake_data(), quick=True)
    cells = results["raw"]["cells"]
    assert len(cells) == 2 * 3 * config.seeds
    assert {c["placement"] for c in cells} == {"before", "after", "none"}
    for figure in results["figures"]:
        assert (tmp_path / "run" / figure["file"]).is_file()
    evidence, verdict = placement.placement_rule(results)
    assert set(evidence["activations"]) == {"sigmoid", "relu"}
    # The shown verdict is the rule's on the run's own numbers.
    assert results["verdicts"][0]["measured"].startswith(verdict + ":")
    assert results["verdicts"][0]["holds"] == {"supported": True, "not supported": False}.get(
        verdict
    )


def test_no_reference_leaves_out_the_network_without_bn(tmp_path: Path, fake_data) -> None:
    config = dataclasses.replace(
        placement.PlacementConfig.quick(),
        seeds=1,
        activations=("relu",),
        train_size=32,
        test_size=32,
        hidden=(8,),
        reference=False,
    )
    results = run_lab(get_lab("placement"), config, tmp_path / "run", data=fake_data(), quick=True)
    assert {c["placement"] for c in results["raw"]["cells"]} == {"before", "after"}


def _cells(after: dict[str, float]) -> dict:
    """Three seeds (spread 0.01) per activation: training loss 0.5 with BN before the
    activation, ``after[activation]`` with BN after it, 9.0 without BN (must not matter)."""
    loss = {"before": lambda a: 0.5, "after": lambda a: after[a], "none": lambda a: 9.0}
    cells = [
        {
            "activation": a,
            "placement": p,
            "seed": seed,
            "train_loss": loss[p](a) + 0.01 * seed,
            "test_acc": 0.8,
        }
        for a in after
        for p in placement.PLACEMENTS
        for seed in range(3)
    ]
    return {"raw": {"cells": cells}}


@pytest.mark.parametrize(
    ("after", "verdict", "better"),
    [
        ({"sigmoid": 0.7, "relu": 0.6}, "supported", {"sigmoid": "before", "relu": "before"}),
        ({"sigmoid": 0.3, "relu": 0.4}, "not supported", {"sigmoid": "after", "relu": "after"}),
        ({"sigmoid": 0.7, "relu": 0.4}, "mixed", {"sigmoid": "before", "relu": "after"}),
        # The null: equal numbers, no difference for either activation.
        (
            {"sigmoid": 0.5, "relu": 0.5},
            "not supported",
            {"sigmoid": "no difference", "relu": "no difference"},
        ),
    ],
)
def test_rule_on_synthetic_numbers(after: dict[str, float], verdict: str, better: dict) -> None:
    evidence, got = placement.placement_rule(_cells(after))
    assert got == verdict
    assert {a: e["better"] for a, e in evidence["activations"].items()} == better
    assert evidence["activations"]["relu"]["test_acc_better"] == "no difference"
