"""Config pieces the experiments share: value checks, the base of every experiment's
config (``LabConfig``: seeds and the quick run) and the probing experiments' core."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Self

from torch import Tensor

from bnlab.lab.experiment import LabContext, LabOutcome, LabSpec
from bnlab.lab.kit.data import split
from bnlab.lab.kit.models import check_archs
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab

__all__ = [
    "LabConfig",
    "PairedConfig",
    "ProbingConfig",
    "check_positive",
    "probing_lab",
]


def check_positive(owner: str, config: Any, names: Sequence[str]) -> None:
    """Raise ValueError when a numeric setting of ``config`` is not > 0.

    Args:
        owner: the config's name, for the message (``"ICSConfig"``).
        config: the dataclass instance.
        names: the fields to check.
    """
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class LabConfig:
    """The base of an experiment's config: its seeds, and the quick run (``--quick`` and
    the tests) as the settings it changes, ``QUICK``.

    A subclass adds its fields, may give ``seeds`` another default, and states its quick
    run as ``QUICK = Parent.quick_settings(name=value, ...)`` (the parent's quick settings
    and its own); ``quick()`` builds the config from them.

    Args:
        seeds: runs per cell of the experiment's grid, seeds 0..seeds-1.
    """

    seeds: int = 3

    #: The quick run's share of the settings.
    QUICK: ClassVar[Mapping[str, Any]] = MappingProxyType({"seeds": 2})

    @classmethod
    def quick_settings(cls, **settings: Any) -> Mapping[str, Any]:
        """``QUICK`` for a subclass: this class's quick settings updated with ``settings``."""
        return MappingProxyType({**cls.QUICK, **settings})

    @classmethod
    def quick(cls) -> Self:
        """The quick run's config: the defaults updated with ``QUICK``."""
        return cls(**cls.QUICK)


@dataclass(frozen=True)
class PairedConfig(LabConfig):
    """What the experiments decided by ``bnlab.lab.stats`` (batch-size, convergence) share:
    paired seeds, the data subsets, the fewest seeds that decide a claim and the CPU
    threads of a cell. A subclass adds its fields (among them its claims' ``margin``) and
    its quick settings.

    Args:
        seeds: paired seeds (init and data order shared by every arm).
        train_size, test_size: training and test images (None: the whole split).
        min_seeds: the fewest seeds that decide a claim (the quick run's 2 decide none).
        threads: torch CPU threads while a cell trains.
    """

    seeds: int = 5
    train_size: int | None = None
    test_size: int | None = None
    min_seeds: int = 5
    threads: int = 1

    def subsets(self, data: Mapping[str, Tensor] | None, lab: str) -> dict[str, Tensor]:
        """The first ``train_size`` training and ``test_size`` test images of ``data``
        (None: the whole split).

        Raises:
            ValueError: no data (``lab`` names the experiment in the message).
        """
        if data is None:
            raise ValueError(f"{lab} needs Fashion-MNIST data")
        n_train = data["train_images"].shape[0] if self.train_size is None else self.train_size
        n_test = data["test_images"].shape[0] if self.test_size is None else self.test_size
        return split(data, n_train, n_test)


@dataclass(frozen=True)
class ProbingConfig(LabConfig):
    """What the probing experiments (ics, landscape, saturation) share: which networks,
    how many seeds, how much data, how many SGD steps of which batch.

    A subclass adds its own fields (learning rates, probe intervals), its quick
    settings (``LabConfig``) and the fields that must be > 0 (``POSITIVE``).

    Args:
        seeds: runs per (architecture, variant), seeds 0..seeds-1.
        archs: keys of ``bnlab.lab.kit.ARCHS``.
        train_size, test_size: examples taken from the start of each split.
        batch_size, steps: SGD batch and number of steps.

    Raises:
        ValueError: an unknown architecture or a setting that is not > 0.
    """

    archs: tuple[str, ...] = ("lenet", "mlp-relu")
    train_size: int = 12000
    test_size: int = 2000
    batch_size: int = 128
    steps: int = 300

    QUICK = LabConfig.quick_settings(train_size=1024, test_size=256, batch_size=64, steps=30)

    #: The numeric settings that must be > 0; a subclass adds its own.
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "seeds",
        "train_size",
        "test_size",
        "batch_size",
        "steps",
    )

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_archs(owner, self.archs)
        check_positive(owner, self, self.POSITIVE)

    def arch_grid(
        self, variants: Sequence[str], include: Callable[[Cell], bool] | None = None
    ) -> Grid:
        """Architecture x ``variants`` x seed (unit keys ``ARCH-VARIANT-seedN``)."""
        return Grid(settings=self.archs, variants=variants, seeds=self.seeds, include=include)

    def first_examples(self, data: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The first ``train_size`` training and ``test_size`` test examples of ``data``."""
        return split(data, self.train_size, self.test_size)


def probing_lab(
    *,
    variants: Sequence[str],
    measure: Callable[[Any, Cell, Bench], Any],
    summarize: Callable[[Any, LabContext, GridRun], LabOutcome],
    grid: Callable[[Any], Grid] | None = None,
    **spec: Any,
) -> LabSpec:
    """``grid_lab`` for a ``ProbingConfig`` experiment: the grid is architecture x
    ``variants`` x seed (or ``grid(config)``), each cell one ``config.steps``-step run
    on ``config.first_examples(data)``.

    Args:
        variants: the variants of the default grid.
        measure, summarize: as for ``grid_lab``.
        grid: config -> the grid, instead of ``config.arch_grid(variants)``.
        spec: ``name``, ``title``, ``summary``, ``config_type``, ``description``,
            ``full_time`` (``grid_lab``'s).
    """
    return grid_lab(
        grid=grid or (lambda config: config.arch_grid(variants)),
        measure=measure,
        summarize=summarize,
        steps=lambda config: config.steps,
        prepare=lambda config, data: config.first_examples(data),
        **spec,
    )
