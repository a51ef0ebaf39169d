"""Fit-based grid experiments: one ``fit`` run per cell, and trainability sweeps.

The sweep experiments (lr-sweep, init, input-norm, placement, regularization) train one
classifier per cell of their grid with :func:`bnlab.lab.kit.train_variant` on fixed
subsets of Fashion-MNIST. They share:

- :class:`FitConfig`: seeds, the BN variant's norm, the subsets, epochs and batch;
  :meth:`FitConfig.fit` trains one cell;
- :func:`fit_record`: a cell's grid coordinates and its final numbers, one flat dict (the
  ``raw["cells"]`` their rules read with :func:`bnlab.lab.kit.pick`);
- :func:`mean_std_row`: ``mean, std`` over seeds of several metrics, for a table row.

A *trainability sweep* (lr-sweep over learning rates, init over weight scales) asks
which values of a grid train, per variant (``TRAINS_RULE``). It adds
:class:`SweepConfig` (the trains rule's fraction and floor, the divergence margin),
:func:`sweep_groups` (the rule's values that train, from the results),
:func:`sweep_table` and :func:`sweep_series` (a table and a figure's series of test
accuracy against the grid).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from bnlab.lab.experiment import Table
from bnlab.lab.kit.configs import LabConfig
from bnlab.lab.kit.train import DIVERGENCE_RULE, train_variant
from bnlab.lab.kit.verdicts import TRAINS_RULE, mean_std, pick, trainable_values
from bnlab.lab.runner import Bench
from bnlab.train import TrainConfig

__all__ = [
    "FitConfig",
    "SweepConfig",
    "fit_record",
    "mean_std_row",
    "span",
    "sweep_groups",
    "sweep_record",
    "sweep_series",
    "sweep_table",
]


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


@dataclass(frozen=True)
class SweepConfig(FitConfig):
    """A trainability sweep's config: ``FitConfig`` and the rule's settings.

    Args:
        train_fraction: a grid value trains when its mean test accuracy reaches this
            fraction of the variant's best (and ``min_acc``, and no seed diverged).
        min_acc: a grid value trains only above this mean test accuracy (0.2: twice chance).
        divergence_margin: the last epoch's loss may exceed the first batch's by this
            fraction before the run counts as diverged (``DIVERGENCE_RULE``).
    """

    train_fraction: float = 0.9
    min_acc: float = 0.2
    divergence_margin: float = 0.01

    def fit(self, model: nn.Module, bench: Bench, seed: int, **kwargs: Any) -> dict[str, Any]:
        """``FitConfig.fit`` with this sweep's divergence margin."""
        return super().fit(model, bench, seed, divergence_margin=self.divergence_margin, **kwargs)

    def rules(self, reference: str) -> dict[str, Any]:
        """The rule's settings and texts, for ``raw``: ``train_fraction``, ``min_acc``,
        ``divergence_rule``, ``trains_rule`` (``reference``: whose best a value is
        measured against)."""
        return {
            "train_fraction": self.train_fraction,
            "min_acc": self.min_acc,
            "divergence_rule": DIVERGENCE_RULE.format(margin=self.divergence_margin),
            "trains_rule": TRAINS_RULE.format(fraction=self.train_fraction, reference=reference)
            + f", and at least {self.min_acc:g}",
        }


def sweep_record(got: Mapping[str, Any], **coords: Any) -> dict[str, Any]:
    """A sweep's row of ``raw["cells"]``: ``fit_record`` with the first batch's loss and
    the divergence flags."""
    return fit_record(got, ("initial_loss", "diverged", "nonfinite"), **coords)


def span(values: Sequence[float]) -> list[Any]:
    """``[lowest, highest, count]`` of the grid values that train (None, None, 0 if none)."""
    return [min(values), max(values), len(values)] if values else [None, None, 0]


def sweep_groups(raw: Mapping[str, Any], group_key: str, grid_key: str) -> dict[str, Any]:
    """The values of the grid that train, per group, by ``TRAINS_RULE`` with the fraction
    and floor stored in ``raw`` (see ``trainable_values``: ``group -> {"trains", "best",
    "mean", ...}``)."""
    return trainable_values(
        raw["cells"],
        group_key=group_key,
        grid_key=grid_key,
        fraction=float(raw["train_fraction"]),
        per_group=True,
        min_value=float(raw.get("min_acc", 0.0)),
    )["groups"]


def sweep_table(
    title: str,
    cells: Sequence[Mapping[str, Any]],
    grid: tuple[str, str, Sequence[float]],
    variants: Iterable[str],
    seeds: int,
    **where: Any,
) -> Table:
    """Test accuracy against the grid: a row per grid value, per variant its mean, std
    over seeds and diverged seeds.

    Args:
        title: the table's title.
        cells: ``raw["cells"]`` (``variant``, the grid key, ``test_acc``, ``diverged``).
        grid: ``(key in the cells, column header, values)``.
        variants: the variants, in column order.
        seeds: seeds per cell (the "diverged" column's denominator).
        where: more ``key=value`` the cells must match (``arch="lenet"``).
    """
    key, header, values = grid
    variants = list(variants)
    rows = []
    for value in values:
        row: list[Any] = [value]
        for variant in variants:
            at = {**where, "variant": variant, key: value}
            diverged = sum(1 for v in pick(cells, "diverged", **at) if v)
            row += [*mean_std_row(cells, ["test_acc"], **at), f"{diverged}/{seeds}"]
        rows.append(row)
    columns = [header]
    for variant in variants:
        columns += [f"{variant} test acc", f"{variant} std", f"{variant} diverged"]
    return Table(title, columns, rows)


def sweep_series(
    cells: Sequence[Mapping[str, Any]],
    grid: tuple[str, Sequence[float]],
    labels: Mapping[str, str],
    seeds: int,
    **where: Any,
) -> dict[str, dict[str, Any]]:
    """``plot_sweep``'s series: per variant (``labels``: variant -> series label), the
    grid values and each seed's test accuracy at them.

    Args:
        cells: ``raw["cells"]``.
        grid: ``(key in the cells, values)``.
        labels: variant -> the series' label.
        seeds: seeds 0..seeds-1.
        where: more ``key=value`` the cells must match.
    """
    key, values = grid
    return {
        label: {
            "x": list(values),
            "runs": [
                [
                    pick(cells, "test_acc", **where, variant=variant, seed=s, **{key: v})[0]
                    for v in values
                ]
                for s in range(seeds)
            ],
        }
        for variant, label in labels.items()
    }
