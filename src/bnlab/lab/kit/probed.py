"""Training with probes at matched step and at matched training loss (the second
edition's mechanistic experiments, landscape and saturation; issue 17).

A mechanistic measure (smoothness, saturation, gradient norms) of a network that
learns fast and one that learns slowly differs at the same step only because one is
further along. :func:`train_probed` therefore calls a probe at fixed steps (matched
step) and once more right after the first step at which the moving average of the
training mini-batch losses reaches a stated level (matched training loss).
Each arm's learning rate comes from ``bnlab.lab.kit.paired`` (tuning runs on a
separate seed).

Those experiments share their config base (:class:`ProbedConfig`: fresh seeds from
``first_seed``, the tuning seed, the SGD batch, the loss window, the checks) and their
run (:func:`probed_lenet`: d2l's LeNet at a constant lr, probed by :func:`train_probed`,
then its test accuracy).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import stats
from bnlab.lab.experiment import Table, seeded
from bnlab.lab.kit.configs import PairedConfig, check_positive
from bnlab.lab.kit.data import accuracy_on_test, batches, float_images
from bnlab.lab.kit.paired import TUNE_RULE, Tuned
from bnlab.lab.kit.threads import cpu_threads
from bnlab.lab.runner import Bench
from bnlab.models.lenet import LeNet
from bnlab.train import init_weights
from bnlab.train.steps import StepState, run_steps

__all__ = [
    "ProbedConfig",
    "edge_notes",
    "lenet",
    "log10_or_none",
    "never_reached",
    "probe_images",
    "probed_lenet",
    "shown_differences",
    "train_probed",
    "tuning_record",
]


def lenet(activation: str, norm: str, seed: int) -> nn.Module:
    """d2l's LeNet (``bnlab.models.lenet.LeNet``) with ``activation`` and ``norm`` before
    each activation, d2l's Xavier init from ``seed`` (the same weights for every norm)."""
    model = LeNet(norm, activation=activation)
    init_weights(model, seed)
    return model


@dataclass(frozen=True)
class ProbedConfig(PairedConfig):
    """The config of a LeNet experiment probed along training at each arm's tuned lr
    (landscape, saturation).

    A subclass adds its fields, names the numeric fields that must be > 0
    (``POSITIVE``) and the value grids that must be non-empty and > 0 (``GRIDS``), and
    states its quick run (``QUICK``: 2 seeds from 0, batch 64, a 10-step window, 1,024
    training and 256 test images). The checks run at construction; messages start with
    ``OWNER`` (default: the class name).

    Args:
        seeds, train_size, test_size, min_seeds, threads: as in ``PairedConfig``.
        first_seed: the seeds are ``first_seed .. first_seed + seeds - 1``.
        tune_seed: the separate seed of the lr tuning runs.
        batch: SGD batch.
        window: mini-batch losses in the training-loss moving average.

    Raises:
        ValueError: a ``POSITIVE`` setting that is not > 0, a negative ``first_seed``, a
            ``GRIDS`` grid that is empty or has a value that is not > 0.
    """

    first_seed: int = 100
    tune_seed: int = 1000
    batch: int = 128
    window: int = 50

    QUICK = PairedConfig.quick_settings(
        seeds=2, first_seed=0, batch=64, window=10, train_size=1024, test_size=256
    )
    #: The numeric settings that must be > 0; a subclass names its own.
    POSITIVE: ClassVar[tuple[str, ...]] = ("seeds", "batch", "window")
    #: The value grids (tuples) that must be non-empty and > 0.
    GRIDS: ClassVar[tuple[str, ...]] = ()
    #: The name that starts the error messages ("" : the class name).
    OWNER: ClassVar[str] = ""

    def __post_init__(self) -> None:
        owner = self.OWNER or type(self).__name__
        check_positive(owner, self, self.POSITIVE)
        if self.first_seed < 0:
            raise ValueError(f"{owner}: first_seed must be >= 0, got {self.first_seed!r}")
        for name in self.GRIDS:
            values = getattr(self, name)
            if not values or any(not v > 0 for v in values):
                raise ValueError(f"{owner}: {name} must be > 0, got {values!r}")

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The measured runs' seeds, ``first_seed`` onwards."""
        return tuple(range(self.first_seed, self.first_seed + self.seeds))


def probe_images(
    data: Mapping[str, Tensor], size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The first ``size`` training images (floats in [0, 1]) and labels, on ``device``."""
    n = min(size, data["train_images"].shape[0])
    return float_images(data["train_images"][:n]).to(device), data["train_labels"][:n].to(device)


def probed_lenet(
    config: ProbedConfig,
    activation: str,
    norm: str,
    lr: float,
    seed: int,
    bench: Bench,
    *,
    steps: int,
    level: float,
    probe_every: int,
    probe: Callable[[nn.Module], Callable[[], dict[str, Any]]] | None,
    level_probes: int = 1,
    level_gap: int = 10,
) -> dict[str, Any]:
    """One run of d2l's LeNet (:func:`lenet`, ``activation``, ``norm``) by plain SGD at
    ``lr`` for ``steps`` steps on endless batches of ``config.batch`` training images
    drawn with ``seed``, in ``config.threads`` threads, one progress step per step.

    With ``probe`` (``probe(model)`` -> the probe of :func:`train_probed`): probes every
    ``probe_every`` steps and at the training loss ``level``, and the final test
    accuracy (%, ``"final_test_acc"``); without (a tuning run): only the losses.
    ``level_probes``, ``level_gap``: as for :func:`train_probed`.

    Returns:
        :func:`train_probed`'s record.
    """
    data, device = bench.data, bench.device
    with cpu_threads(config.threads):
        with seeded(seed):
            model = lenet(activation, norm, seed).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        endless = batches(data["train_images"], data["train_labels"], config.batch, seed, device)
        run = train_probed(
            model,
            endless,
            opt,
            steps=steps,
            window=config.window,
            level=level if probe else None,
            probe=probe(model) if probe else None,
            probe_every=probe_every if probe else None,
            level_probes=level_probes,
            level_gap=level_gap,
            on_step=lambda s: bench.advance(1),
        )
        if probe:
            run["final_test_acc"] = 100.0 * accuracy_on_test(model, data, device)
    return run


class _Diverged(Exception):
    pass


def train_probed(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    opt: torch.optim.Optimizer,
    *,
    steps: int,
    window: int,
    level: float | None = None,
    probe: Callable[[], dict[str, Any]] | None = None,
    probe_every: int | None = None,
    on_step: Callable[[StepState], None] | None = None,
    level_probes: int = 1,
    level_gap: int = 10,
) -> dict[str, Any]:
    """Train ``model`` (train mode, cross-entropy) for ``steps`` steps, probing it.

    ``probe()`` looks at the model's current weights and must leave them (and its
    buffers) unchanged. It is called before the first step and after every
    ``probe_every`` finished steps and after the last (matched step), and after the
    first step at which ``train_loss``, the mean of the last ``window`` mini-batch
    losses (fewer at the start), is ``<= level`` (matched training loss). A
    non-finite loss stops the run (diverged). With ``level_probes`` > 1, the probe is
    called again every ``level_gap`` steps after that one, ``level_probes`` probes in
    all (fewer if the run ends first): the matched-loss window, whose readout a caller
    may average.

    Returns:
        ``{"points": [{"step", "train_loss", **probe()}], "at_level": {"step",
        "train_loss", **probe()} or None (never reached), "final_train_loss" (the last
        moving average, None if diverged), "diverged", "steps_done", "loss_ma": the moving
        average after every step, "level_window": the matched-loss probes, the first
        being ``at_level`` (empty if never reached)}``.
    """
    recent: deque[float] = deque(maxlen=window)
    loss_ma: list[float] = []
    points: list[dict[str, Any]] = []
    found: dict[str, Any] = {}

    def record(step: int, train_loss: float | None) -> dict[str, Any]:
        return {"step": step, "train_loss": train_loss, **(probe() if probe else {})}

    def after(s: StepState) -> None:
        value = s.loss_value
        if not math.isfinite(value):
            raise _Diverged
        recent.append(value)
        loss_ma.append(sum(recent) / len(recent))
        if probe is not None:
            if level is not None and "at" not in found and loss_ma[-1] <= level:
                found["at"] = record(s.done, loss_ma[-1])
                found["window"] = [found["at"]]
            elif (
                "at" in found
                and len(found["window"]) < level_probes
                and s.done - found["at"]["step"] == level_gap * len(found["window"])
            ):
                found["window"].append(record(s.done, loss_ma[-1]))
            if probe_every and (s.done % probe_every == 0 or s.done == steps):
                points.append(record(s.done, loss_ma[-1]))
        if on_step is not None:
            on_step(s)

    model.train()
    if probe is not None and probe_every:
        points.append(record(0, None))
    diverged = False
    try:
        run_steps(model, batches, opt, steps=steps, loss_fn=F.cross_entropy, on_step=after)
    except _Diverged:
        diverged = True
    return {
        "points": points,
        "at_level": found.get("at"),
        "final_train_loss": None if diverged or not loss_ma else loss_ma[-1],
        "diverged": diverged,
        "steps_done": len(loss_ma),
        "loss_ma": loss_ma,
        "level_window": found.get("window", []),
    }


def shown_differences(
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    rows: Sequence[tuple[str, str, str]],
    *,
    arm: str = "bn",
    reference: str = "none",
    digits: int = 3,
) -> list[list[Any]]:
    """Secondary comparisons, shown and not voted: per ``(label, setting, metric)`` the
    paired difference ``arm - reference`` over the seeds where both are finite, with its
    unadjusted 95% t interval: rows ``[label, n, diff, "[low, high]"]``."""
    out = []
    for label, setting, metric in rows:
        arms = per_seed.get(setting, {})
        a, r = arms.get(arm, {}).get(metric, []), arms.get(reference, {}).get(metric, [])
        pairs = [
            (float(x), float(y))
            for x, y in zip(a, r, strict=False)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
        ]
        row: list[Any] = [label, len(pairs), None, None]
        if len(pairs) >= 2:
            d = stats.paired_difference([x for x, _ in pairs], [y for _, y in pairs], margin=1.0)
            row[2:] = [f"{d.diff:+.{digits}g}", f"[{d.ci_low:.{digits}g}, {d.ci_high:.{digits}g}]"]
        out.append(row)
    return out


def shown_table(
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    rows: Sequence[tuple[str, str, str]],
) -> Table:
    """The "shown, not voted" table of BN - no BN differences (:func:`shown_differences`)."""
    return Table(
        "Shown, not voted: paired differences BN - no BN (unadjusted 95% t intervals)",
        ["metric", "n", "diff", "95% CI"],
        shown_differences(per_seed, rows),
    )


def tuning_record(tuned: Tuned, grid: Any, edges: Sequence[str], seed: int) -> dict[str, Any]:
    """The results.json keys of the lr tuning by final training loss: ``tuning`` (the
    criterion per setting, arm and lr), ``tune_rule`` (``kit.paired.TUNE_RULE`` with
    ``grid`` as given), ``lr`` (the chosen lrs) and ``lr_at_edge`` (``edges``)."""
    return {
        "tuning": tuned.stored(),
        "tune_rule": TUNE_RULE.format(grid=grid, criterion="final training loss", seed=seed),
        "lr": {s: dict(arms) for s, arms in tuned.lrs.items()},
        "lr_at_edge": list(edges),
    }


def never_reached(
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    settings: Sequence[str],
    first_seed: int,
    *,
    named: bool = True,
) -> str:
    """The note of the runs whose ``steps_to_level`` is None (no primary value,
    excluded): ``SETTING/ARM seed N`` each (``ARM seed N`` when not ``named``)."""
    never = [
        f"{s}/{arm} seed {first_seed + k}" if named else f"{arm} seed {first_seed + k}"
        for s in settings
        for arm, m in per_seed.get(s, {}).items()
        for k, v in enumerate(m.get("steps_to_level", []))
        if v is None
    ]
    return "runs that never reached the loss level (no primary value, excluded): " + (
        ", ".join(never) if never else "none"
    )


def edge_notes(edges: Sequence[str]) -> list[str]:
    """The note of the lrs chosen at the grid's edge (none when no choice is)."""
    if not edges:
        return []
    return [f"lr chosen at the grid's edge (the best may lie beyond): {', '.join(edges)}"]


def log10_or_none(value: float | None) -> float | None:
    """``log10(value)`` for a finite positive value, else None."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return math.log10(value)
