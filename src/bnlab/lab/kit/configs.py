"""Config pieces the experiments share: value checks, the base of every experiment's
config (``LabConfig``: seeds and the quick run) and the stats-decided experiments' core
(``PairedConfig``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Self

from torch import Tensor

from bnlab.lab.kit.data import split

__all__ = [
    "LabConfig",
    "PairedConfig",
    "check_positive",
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
