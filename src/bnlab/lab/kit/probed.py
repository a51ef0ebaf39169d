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
from bnlab.lab.kit.train import json_float
from bnlab.lab.runner import Bench, GridRun
from bnlab.models.lenet import LeNet
from bnlab.train import init_weights
from bnlab.train.steps import StepState, run_steps

__all__ = [
    "ProbedConfig",
    "edge_notes",
    "lenet",
    "log10_or_none",
    "measured_record",
    "never_reached",
    "not_run",
    "probe_images",
    "probed_lenet",
    "readout_points",
    "run_numbers",
    "shared_runs",
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
    states its quick run (``QUICK``: 2 seeds from 0, batch 64, a 10-step window, two
    matched-loss probes 5 steps apart, 1,024 training and 256 test images). The checks
    run at construction; messages start with ``OWNER`` (default: the class name).

    Args:
        seeds, train_size, test_size, min_seeds, threads: as in ``PairedConfig``; 8
            paired seeds here.
        first_seed: the seeds are ``first_seed .. first_seed + seeds - 1`` (fresh seeds
            210-217: 0-4 and 100-109 ran the earlier designs).
        tune_seed: the separate seed of the lr tuning runs.
        batch: SGD batch.
        window: mini-batch losses in the training-loss moving average.
        level_probes, level_gap: probes in the matched-loss window (the first at the
            reach, then every ``level_gap`` steps); the readout is their mean.

    Raises:
        ValueError: a ``POSITIVE`` setting that is not > 0, a negative ``first_seed``, a
            ``GRIDS`` grid that is empty or has a value that is not > 0.
    """

    seeds: int = 8
    first_seed: int = 210
    tune_seed: int = 1000
    batch: int = 128
    window: int = 50
    level_probes: int = 5
    level_gap: int = 10

    QUICK = PairedConfig.quick_settings(
        seeds=2,
        first_seed=0,
        batch=64,
        window=10,
        level_probes=2,
        level_gap=5,
        train_size=1024,
        test_size=256,
    )
    #: The numeric settings that must be > 0; a subclass adds its own.
    POSITIVE: ClassVar[tuple[str, ...]] = ("seeds", "batch", "window", "level_probes", "level_gap")
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
    level_probes: int | None = None,
    level_gap: int | None = None,
) -> dict[str, Any]:
    """One run of d2l's LeNet (:func:`lenet`, ``activation``, ``norm``) by plain SGD at
    ``lr`` for ``steps`` steps on endless batches of ``config.batch`` training images
    drawn with ``seed``, in ``config.threads`` threads, one progress step per step.

    With ``probe`` (``probe(model)`` -> the probe of :func:`train_probed`): probes every
    ``probe_every`` steps and at the training loss ``level``, and the final test
    accuracy (%, ``"final_test_acc"``); without (a tuning run): only the losses.
    ``level_probes``, ``level_gap``: as for :func:`train_probed` (default: ``config``'s).

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
            level_probes=config.level_probes if level_probes is None else level_probes,
            level_gap=config.level_gap if level_gap is None else level_gap,
            on_step=lambda s: bench.advance(1),
        )
        if probe:
            run["final_test_acc"] = 100.0 * accuracy_on_test(model, data, device)
    return run


def readout_points(
    run: Mapping[str, Any], steps: int
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The probes of a :func:`train_probed` record that a run's numbers are read at:
    the matched-loss window (the first at the reach; empty if never reached) and the
    matched step's point (after step ``steps``; None if the run stopped before)."""
    at = run["at_level"]
    window = run.get("level_window") or ([at] if at is not None else [])
    ends = [p for p in run["points"] if p["step"] == steps]
    return window, ends[0] if ends else None


def run_numbers(run: Mapping[str, Any], window: Sequence[Any]) -> dict[str, Any]:
    """The per-run numbers besides the probes' measures: the probes in the matched-loss
    ``window``, the step of the matched loss, final training loss and test accuracy."""
    at = run["at_level"]
    return {
        "level_probes": len(window),
        "steps_to_level": None if at is None else at["step"],
        "final_train_loss": json_float(run["final_train_loss"]),
        "final_test_acc": run.get("final_test_acc"),
    }


def measured_record(lr: float, run: Mapping[str, Any], metrics: Any) -> dict[str, Any]:
    """A measured cell's result: its ``lr``, per-run ``metrics`` and the probes of its
    :func:`train_probed` record (``points``, ``at_level``, ``level_window``), ``diverged``."""
    return {
        "lr": lr,
        "metrics": metrics,
        "points": run["points"],
        "at_level": run["at_level"],
        "level_window": run["level_window"],
        "diverged": run["diverged"],
    }


def not_run() -> dict[str, Any]:
    """A measured cell's result when its arm has no lr (every tuning run diverged)."""
    return {"lr": None, "metrics": None, "points": [], "at_level": None}


def shared_runs(measured: GridRun) -> GridRun:
    """``measured`` with each cell marked ``same_as`` a setting replaced by that setting's
    run of its seed and arm (the same lr, seed and data: the same run)."""
    by = {(str(c.setting), c.seed, c.variant): r for c, r in measured}
    results = [
        by.get((r["same_as"], c.seed, c.variant), r) if r.get("same_as") else r for c, r in measured
    ]
    return GridRun([c for c, _ in measured], results)


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
    unadjusted 95% t interval (``stats.finite_paired_difference``): rows
    ``[label, n, diff, "[low, high]"]``."""
    out = []
    for label, setting, metric in rows:
        arms = per_seed.get(setting, {})
        a, r = arms.get(arm, {}).get(metric, []), arms.get(reference, {}).get(metric, [])
        n, d = stats.finite_paired_difference(a, r)
        row: list[Any] = [label, n, None, None]
        if d is not None:
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
