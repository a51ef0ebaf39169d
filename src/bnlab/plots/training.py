"""Training curves of one run: loss and accuracy per epoch (from ``fit``'s history)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bnlab.plots._save import save_png

__all__ = ["plot_training_curves"]


def plot_training_curves(
    history: list[dict[str, Any]], title: str, path: str | os.PathLike[str]
) -> Path:
    """Two panels, cross-entropy and accuracy (train and test) per epoch, as a PNG.

    Args:
        history: epoch records with ``epoch``, ``train_loss``, ``test_loss``,
            ``train_acc``, ``test_acc``.
        title: the figure's title.
        path: where to write (atomically).
    """
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train loss")
    loss_ax.plot(epochs, [r["test_loss"] for r in history], marker="o", label="test loss")
    acc_ax.plot(epochs, [r["train_acc"] for r in history], marker="o", label="train accuracy")
    acc_ax.plot(epochs, [r["test_acc"] for r in history], marker="o", label="test accuracy")
    loss_ax.set_title("cross-entropy")
    acc_ax.set_title("accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    # Fixed margins: tight_layout costs more than drawing the figure.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.2)
    return save_png(fig, path, dpi=100)
