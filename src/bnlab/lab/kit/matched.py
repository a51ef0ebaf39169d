"""Reading a measure at matched training loss (issue 17): a moving average of the
mini-batch losses, the first step it reaches a level, the mean of a measure over the
steps from there; and a learning-rate schedule held, then decayed linearly to 0.

The LeNet experiments read that way (ics, shift-mcc) share their config base
(:class:`MatchedConfig`: the settings as ``((activation, steps), ...)``, the SGD batch
and schedule, the read-out, the probes), their training run (:func:`lenet_run`), and
their summary's pieces: the per-arm table (:func:`arm_table`), the runs excluded from
a claim (:func:`excluded_runs`), the secondary comparisons' table (:func:`shown_table`)
and the figure of the primary metric (:func:`plot_primary`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import stats
from bnlab.lab.experiment import Table, seeded
from bnlab.lab.kit.configs import PairedConfig, check_positive
from bnlab.lab.kit.data import accuracy_on_test, batches
from bnlab.lab.kit.paired import claims_table
from bnlab.lab.kit.probed import lenet
from bnlab.lab.kit.threads import cpu_threads
from bnlab.lab.kit.verdicts import mean_std_cell
from bnlab.lab.runner import Bench, seed_range
from bnlab.plots.ics import plot_matched
from bnlab.train.steps import Hook, StepState, run_steps

__all__ = [
    "ACTIVATIONS",
    "LeNetRun",
    "LossAverage",
    "MatchedConfig",
    "activation_of",
    "arm_table",
    "excluded_runs",
    "first_reach",
    "hold_then_decay",
    "lenet_run",
    "plot_primary",
    "shown_table",
    "window_mean",
]

#: LeNet's activations, the settings of a :class:`MatchedConfig`.
ACTIVATIONS = ("relu", "sigmoid", "tanh")


def activation_of(setting: str) -> str:
    """LeNet's activation in ``setting``: the setting's name, or its part before the first
    ``-`` (``sigmoid-common``: a second sigmoid setting with a label of its own)."""
    return setting.split("-", 1)[0]


class LossAverage:
    """The moving average of the last ``window`` mini-batch losses (fewer at the start),
    after every step: ``add(loss)`` appends the new average to ``values``."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"LossAverage: window must be >= 1, got {window!r}")
        self._recent: deque[float] = deque(maxlen=window)
        self.values: list[float] = []

    def add(self, loss: float) -> float:
        self._recent.append(float(loss))
        self.values.append(sum(self._recent) / len(self._recent))
        return self.values[-1]


def first_reach(values: Sequence[float | None], level: float) -> int | None:
    """The first step (1-based: ``values[i]`` is the average after step ``i + 1``) whose
    value is finite and ``<= level``; None if none is."""
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v) and v <= level:
            return i + 1
    return None


def window_mean(
    steps: Sequence[int], values: Sequence[float | None], start: int | None, length: int
) -> float | None:
    """The mean of the finite ``values`` whose step lies in ``[start, start + length)``;
    None when ``start`` is None or no such value exists."""
    if start is None:
        return None
    kept = [
        float(v)
        for s, v in zip(steps, values, strict=True)
        if start <= s < start + length and v is not None and math.isfinite(v)
    ]
    return sum(kept) / len(kept) if kept else None


def hold_then_decay(steps: int, hold: float) -> Callable[[int], float]:
    """The lr factor of ``torch.optim.lr_scheduler.LambdaLR``: 1 for the first ``hold``
    fraction of ``steps``, then linear to 0 at ``steps``."""
    held = round(hold * steps)

    def factor(step: int) -> float:
        if step < held:
            return 1.0
        return max(0.0, (steps - step) / max(1, steps - held))

    return factor


@dataclass(frozen=True)
class MatchedConfig(PairedConfig):
    """The config of a LeNet experiment read at matched training loss (ics, shift-mcc).

    A subclass adds its fields, names the numeric fields that must be > 0 (``POSITIVE``,
    these and its own) and states its quick run (``QUICK``: 30 steps per setting on 2,048
    training images, a 5-step window, loss level 2.2, probes every 5 steps).

    Args:
        seeds, train_size, test_size, min_seeds, threads: as in ``PairedConfig``.
        steps: ``((activation, SGD steps), ...)``: the settings (LeNet's activation,
            one of :data:`ACTIVATIONS`, optionally with a ``-label``: see
            :func:`activation_of`) and each one's step budget.
        batch: SGD batch.
        hold: the fraction of the steps at constant lr before the linear decay to 0.
        window: mini-batch losses in the training-loss moving average.
        loss_level: the matched training loss (moving average) where measures are read.
        read_steps: the steps from the first reach of ``loss_level`` whose measurements
            are read.
        probe_every, probe_size: steps between probes; probe images.
        first_seed: the measured seeds are ``first_seed .. first_seed + seeds - 1``
            (:attr:`seed_list`; a confirmatory rerun takes fresh ones).

    Raises:
        ValueError: a ``POSITIVE`` setting that is not > 0, no settings, an unknown
            activation, a step budget that is not an integer >= 1, ``hold`` outside
            [0, 1], a negative ``first_seed``.
    """

    steps: tuple[tuple[str, int], ...] = (("relu", 800), ("sigmoid", 2000))
    batch: int = 128
    hold: float = 0.75
    window: int = 25
    loss_level: float = 0.8
    read_steps: int = 100
    probe_every: int = 10
    probe_size: int = 256
    first_seed: int = 0

    QUICK = PairedConfig.quick_settings(
        steps=(("relu", 30), ("sigmoid", 30)),
        train_size=2048,
        window=5,
        loss_level=2.2,
        probe_every=5,
    )
    #: The numeric settings that must be > 0; a subclass adds its own.
    POSITIVE: ClassVar[tuple[str, ...]] = (
        *("seeds", "batch", "window", "loss_level"),
        *("read_steps", "probe_every", "probe_size"),
    )

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_positive(owner, self, self.POSITIVE)
        if not self.steps:
            raise ValueError(f"{owner}: steps is empty; give ((activation, steps), ...)")
        for act, n in self.steps:
            if activation_of(act) not in ACTIVATIONS:
                raise ValueError(
                    f"{owner}: unknown activation {act!r} in steps; choose relu, sigmoid, tanh"
                )
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{owner}: steps of {act!r} must be an integer >= 1, got {n!r}")
        if not 0.0 <= self.hold <= 1.0:
            raise ValueError(f"{owner}: hold must be in [0, 1], got {self.hold!r}")
        seed_range(owner, self.first_seed, self.seeds)

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The measured seeds, ``first_seed`` onwards."""
        return seed_range(type(self).__name__, self.first_seed, self.seeds)

    @property
    def settings(self) -> tuple[str, ...]:
        """The settings (LeNet activations), in order."""
        return tuple(act for act, _ in self.steps)

    def steps_of(self, setting: str) -> int:
        """The SGD steps of ``setting``."""
        return dict(self.steps)[setting]


@dataclass
class LeNetRun:
    """A LeNet run of :func:`lenet_run`, built and ready to train.

    Attributes:
        model: d2l's LeNet (train mode, on ``bench.device``).
        opt: SGD at the run's lr; ``schedule``: :func:`hold_then_decay` of it.
        loss_ma: the training loss's moving average, after every step.
        generator: a CPU generator seeded with the run's seed (for noise draws).
        steps: the run's SGD steps.
    """

    config: MatchedConfig
    bench: Bench
    seed: int
    model: nn.Module
    opt: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    loss_ma: LossAverage
    generator: torch.Generator
    steps: int

    def train(
        self,
        *,
        on_batch: Hook | Sequence[Hook] | None = None,
        forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
    ) -> None:
        """``steps`` SGD steps (cross-entropy) on endless batches of the training images
        drawn with the run's seed; after each: the moving average, the schedule, one
        progress step. ``on_batch`` and ``forward`` as in ``bnlab.train.steps.run_steps``."""
        data, device = self.bench.data, self.bench.device

        def after(s: StepState) -> None:
            self.loss_ma.add(s.loss_value)
            self.schedule.step()
            self.bench.advance(1)

        run_steps(
            self.model,
            batches(
                data["train_images"], data["train_labels"], self.config.batch, self.seed, device
            ),
            self.opt,
            steps=self.steps,
            loss_fn=F.cross_entropy,
            forward=forward,
            on_batch=on_batch,
            on_step=after,
        )

    def test_accuracy(self) -> float:
        """The accuracy (%) on the test images of ``bench.data``."""
        return 100.0 * accuracy_on_test(self.model, self.bench.data, self.bench.device)


@contextmanager
def lenet_run(
    config: MatchedConfig, setting: str, norm: str, lr: float, seed: int, bench: Bench
) -> Iterator[LeNetRun]:
    """Build the LeNet run of ``setting`` (its activation) with ``norm`` at ``lr``, held
    then decayed to 0 over ``config.steps_of(setting)`` steps; d2l's init from ``seed``
    (the same weights for every norm). Inside: ``config.threads`` CPU threads and torch's
    global generator seeded with ``seed`` (restored on exit)."""
    steps = config.steps_of(setting)
    with cpu_threads(config.threads), seeded(seed) as gen:
        model = lenet(activation_of(setting), norm, seed)
        model.to(bench.device).train()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, hold_then_decay(steps, config.hold))
        loss_ma = LossAverage(config.window)
        yield LeNetRun(config, bench, seed, model, opt, schedule, loss_ma, gen, steps)


def arm_table(
    title: str,
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    lrs: Mapping[str, Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    settings: Sequence[str],
    arms: Sequence[str],
) -> Table:
    """One row per (setting, arm): its lr and ``mean ± std`` of each ``(header, metric)``."""
    return Table(
        title,
        ["setting", "arm", "lr", *(h for h, _ in columns)],
        [
            [s, a, lrs[s][a], *(mean_std_cell(per_seed[s][a].get(k, [])) for _, k in columns)]
            for s in settings
            for a in arms
        ],
    )


def excluded_runs(
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    settings: Sequence[str],
    arms: Sequence[str],
    chance: stats.ChanceRule,
    first_seed: int = 0,
) -> list[tuple[str, str, int, Any, Any, bool]]:
    """The runs a claim excludes: ``(setting, arm, seed, steps to the loss level, final
    test accuracy, at chance)`` for each run that never reached the loss level
    (``steps_to_level`` None) or ended within ``chance``'s tolerance of its level
    (``final_test_acc``; None counts as at chance); seeds counted from ``first_seed``."""
    out = []
    for s in settings:
        for a in arms:
            m = per_seed[s][a]
            pairs = zip(m["steps_to_level"], m["final_test_acc"], strict=True)
            for seed, (reach, acc) in enumerate(pairs, start=first_seed):
                at_chance = acc is None or abs(acc - chance.level) <= chance.tolerance
                if reach is None or at_chance:
                    out.append((s, a, seed, reach, acc, at_chance))
    return out


def shown_table(title: str, evaluated: Sequence[Mapping[str, Any]], unit: str) -> Table:
    """The claims table (3 digits) of secondary comparisons, shown and not voted."""
    table = claims_table(evaluated, unit, 3)
    return Table(title, table.columns, table.rows)


def plot_primary(
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    metric: str,
    settings: Sequence[str],
    arms: Sequence[str],
    path: Path,
    *,
    ylabel: str,
    what: str,
    level: float,
) -> None:
    """The primary metric per setting and arm, one point per seed (``what`` at training
    loss ``level`` in the title)."""
    plot_matched(
        {s: {a: per_seed[s][a][metric] for a in arms} for s in settings},
        path,
        ylabel=ylabel,
        title=f"Primary: {what} at training loss {level:g} "
        "(points: seeds, joined; squares: mean ± 95% t interval)",
    )
