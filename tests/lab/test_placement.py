"""``placement``: the models get the norm where asked; a tiny run end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import placement
from bnlab.lab.claims import VERDICTS
from bnlab.lab.experiment import get_lab, run_lab


def fake_data(train: int = 96, test: int = 64) -> dict[str, torch.Tensor]:
    x, y = fake_images_labels(train, seed=0)
    tx, ty = fake_images_labels(test, seed=1)
    return {
        "train_images": x,
        "train_labels": y.long(),
        "test_images": tx,
        "test_labels": ty.long(),
    }


def test_quick_run(tmp_path: Path) -> None:
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
    assert verdict in VERDICTS
    assert set(evidence["activations"]) == {"sigmoid", "relu"}
    assert results["verdicts"][0]["measured"].startswith(verdict)


def test_no_reference_leaves_out_the_network_without_bn(tmp_path: Path) -> None:
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
