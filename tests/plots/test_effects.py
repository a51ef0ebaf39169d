"""bnlab.plots.effects: paired arms and curves to a target as real PNGs, missing values
allowed."""

from __future__ import annotations

import math
from pathlib import Path

from bnlab.plots.effects import plot_arms, plot_to_target

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_arms(tmp_path: Path) -> None:
    arms = {"bn-vb2": [80.1, 80.5, None], "bn-vb32": [82.9, 83.0, 82.5], "none": [math.nan]}
    path = plot_arms(arms, tmp_path / "arms.png", ylabel="test accuracy (%)", title="t")
    assert path.read_bytes().startswith(PNG)
    assert [p.name for p in tmp_path.iterdir()] == ["arms.png"]


def test_plot_to_target(tmp_path: Path) -> None:
    panels = {
        "loss": {
            "bn": {"steps": [10, 20, 30], "runs": [[1.0, 0.5, 0.3], [1.1, 0.6, None]]},
            "none": {"steps": [10, 20, 30], "runs": [[2.3, 2.2, 1.0]]},
        },
        "acc": {"bn": {"steps": [15, 30], "runs": [[50.0, 80.0]]}},
    }
    path = plot_to_target(panels, tmp_path / "c.png", targets={"loss": 0.6, "acc": 75.0})
    assert path.read_bytes().startswith(PNG)
