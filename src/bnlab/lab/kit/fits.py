"""Fit-based grid experiments: one ``fit`` run per cell.

A fit-based experiment trains one classifier per cell of its grid with
:func:`bnlab.lab.kit.train_variant` on fixed subsets of Fashion-MNIST. It gets:

- :class:`FitConfig`: seeds, the BN variant's norm, the subsets, epochs and batch;
  :meth:`FitConfig.fit` trains one cell;
- :func:`fit_record`: a cell's grid coordinates and its final numbers, one flat dict (the
  ``raw["cells"]`` their rules read with :func:`bnlab.lab.kit.pick`);
- :func:`mean_std_row`: ``mean, std`` over seeds of several metrics, for a table row.

The first edition's trainability sweeps (``SweepConfig`` and its table, series and rule
groups) were removed with the last experiment that used them (issue 16): the second
edition's sweeps are ``bnlab.lab.kit.sweeps``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from bnlab.lab.kit.configs import LabConfig
from bnlab.lab.kit.train import train_variant
from bnlab.lab.kit.verdicts import mean_std, pick
from bnlab.lab.runner import Bench
from bnlab.train import TrainConfig

__all__ = ["FitConfig", "fit_record", "mean_std_row"]


@dataclass(frozen=True)
class FitConfig(LabConfig):
    """What the fit-based experiments share. A subclass adds its own fields (grid,
    learning rate, model) and its quick settings (``LabConfig``).

    Args:
        seeds: training seeds per cell, seeds 0..seeds-1.
        norm: the BN variant's norm (``bnlab.models.available_norms()``); "torch" is the
            fastest on the CPU, "bnlab" gives the same numbers more slowly.
        train_size, test_size: fixed random subsets of the splits (``kit.take``).
        epochs, batch_size: training length and SGD batch.
    """

    norm: str = "torch"
    train_size: int = 5000
    test_size: int = 2000
    epochs: int = 3
    batch_size: int = 64

    QUICK = LabConfig.quick_settings(train_size=512, test_size=256, epochs=1)

    def fit(
        self,
        model: nn.Module,
        bench: Bench,
        seed: int,
        *,
        lr: float,
        init: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Train one cell: ``train_variant`` on ``bench.data``'s subsets, plain SGD.

        Args:
            model: the cell's classifier.
            bench: the cell's data and device.
            seed: the cell's seed (initial weights and shuffling).
            lr: the learning rate.
            init: ``TrainConfig.init`` (None: its default, d2l's Xavier-uniform).
            options: more ``train_variant`` arguments (``eval_train``, ...).

        Returns:
            ``train_variant``'s result (JSON-ready).
        """
        extra = {} if init is None else {"init": init}
        train = TrainConfig(
            lr=lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=seed,
            device=str(bench.device),
            **extra,
        )
        return train_variant(
            model,
            bench.data,
            train,
            train_size=self.train_size,
            test_size=self.test_size,
            **options,
        )


def fit_record(got: Mapping[str, Any], keys: Iterable[str] = (), **coords: Any) -> dict[str, Any]:
    """One row of ``raw["cells"]``: ``coords``, the final numbers of ``train_variant``'s
    result ``got``, then its entries ``keys`` (``"diverged"``, ...)."""
    return {**coords, **got["final"], **{k: got[k] for k in keys}}


def mean_std_row(cells: Sequence[Mapping[str, Any]], metrics: Iterable[str], **where: Any) -> list:
    """``[mean, std, mean, std, ...]`` over seeds of each metric of the matching cells."""
    return [v for metric in metrics for v in mean_std(pick(cells, metric, **where))]
