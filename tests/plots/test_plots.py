"""The d2l curves figure: a real PNG from a summary, written atomically."""

from __future__ import annotations

from pathlib import Path

from bnlab.plots.d2l import plot_d2l_curves


def test_plot_writes_png(tmp_path: Path) -> None:
    curves = {
        "train_loss": [[2.0, 1.0, 0.5], [2.1, 1.1, 0.6]],
        "train_acc": [[0.3, 0.6, 0.8], [0.3, 0.6, 0.8]],
        "test_acc": [[0.3, 0.5, 0.7], [0.2, 0.5, 0.75]],
        "test_acc_recalibrated": [[0.4, 0.6, 0.8], [0.4, 0.6, 0.8]],
    }
    none = {k: v for k, v in curves.items() if k != "test_acc_recalibrated"}
    none["test_acc_recalibrated"] = [[None, None, None]]
    summary = {
        "variants": {
            "bnlab": {"label": "LeNet + bnlab BN", "seeds": [0, 1], "curves": curves},
            "none": {"label": "LeNet, no BN", "seeds": [0], "curves": none},
        }
    }
    path = plot_d2l_curves(summary, tmp_path / "sub" / "curves.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]


def test_training_curves_png(tmp_path: Path) -> None:
    from bnlab.plots.training import plot_training_curves

    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "test_loss": 1.2 / e,
            "train_acc": 0.5 + e / 10,
            "test_acc": 0.4 + e / 10,
        }
        for e in (1, 2, 3)
    ]
    path = plot_training_curves(history, "a run", tmp_path / "curves.png")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
