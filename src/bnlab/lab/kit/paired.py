"""What the paired, stats-decided experiments with tuned arms share (convergence, depth,
input-norm, placement, batch-of-one; batch-size and predict-mode use the claims part):
each arm's learning rate chosen on a separate tuning seed before the measured runs, the
claims declared compactly, the claims table of ``bnlab.lab.stats``' evaluations, and a
claim's measured text.

The tuned-lr experiment's skeleton, so that an experiment file states only its claim,
grid, measurement and rule:

- ``TunedConfig``: the config base (``PairedConfig`` + ``tune_seed``, ``lrs``,
  ``margin``; the checks of ``POSITIVE`` and of the lr grid at construction);
- ``tuned_lab``: the spec: the tuning grid (:func:`tune_grid`) on ``tune_seed``, the lr
  choice (:func:`choose_lrs`), the measured grid (:func:`measured_grid`), extra units,
  then ``summarize(config, ctx, run, tuned, **extras)`` with ``tuned`` a :class:`Tuned`;
  the experiment's functions (``tune_grid``, ``tune_cell``, ``main_grid``,
  ``main_cell``, ``summarize``) are found by name in its config's module;
- :class:`Tuned`: the tuning criterion and the chosen lrs, with the results.json keys
  (``record``: ``tuning``, ``lr``, ``lr_at_grid_edge``, ``tune_rule``), the tuning table
  (``table``) and the notes (``notes``);
- :func:`train_new`: a run's model built under its seed and trained by
  :func:`train_decayed` (SGD, the lr decayed to 0) on the training images;
- :func:`claim_specs` (several claims on one metric) and :func:`claim_spec` (one),
  :func:`claims_table`, :func:`measured_text`.

The tuning rule (:data:`TUNE_RULE`): per (setting, arm), the grid value with the lowest
tuning criterion (a final training loss) on the tuning seed; a non-finite value (a
diverged run) is never chosen; a choice at either end of the grid is flagged
(:func:`at_edge`), since the best lr may lie beyond it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import stats
from bnlab.lab.experiment import LabContext, LabOutcome, LabSpec, Table, seeded
from bnlab.lab.kit.configs import PairedConfig, check_positive
from bnlab.lab.kit.data import batches
from bnlab.lab.kit.train import json_float
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, module_part, run_grid
from bnlab.train.steps import run_steps

__all__ = [
    "MODULE_PARTS",
    "TUNE_RULE",
    "ChosenLrs",
    "ClaimShape",
    "EpochsConfig",
    "Tuned",
    "TunedConfig",
    "at_edge",
    "by_setting",
    "chance_near",
    "choose_lrs",
    "claim_spec",
    "claim_specs",
    "claims_table",
    "lr_schedule",
    "measured_grid",
    "measured_text",
    "run_by_setting",
    "run_tuned",
    "train_decayed",
    "train_new",
    "tune_grid",
    "tuned_lab",
    "tuned_runs",
]

TUNE_RULE = (
    "each arm's lr (per setting): the grid value {grid} with the lowest {criterion} on the "
    "separate tuning seed {seed}, same budget as the measured runs; a non-finite value is "
    "never chosen; a choice at the grid's edge is flagged"
)


#: The chosen lrs, ``{setting: {arm: lr}}`` (None: every lr of the grid diverged), as
#: :func:`choose_lrs` returns them and a measured cell of :func:`tuned_runs` receives them.
ChosenLrs = Mapping[str, Mapping[str, float | None]]


def claim_spec(
    config: Any,
    name: str,
    metric: str,
    direction: stats.Direction,
    arm: str,
    reference: str,
    settings: Sequence[str],
    *,
    chance_metric: str,
    margin: float | None = None,
) -> stats.ClaimSpec:
    """A claim of a ten-class experiment: ``config``'s margin (or ``margin``) and
    min_seeds, and the chance rule "``chance_metric`` (a percentage) within 2 points of
    10" (:func:`claim_specs` of one claim)."""
    shape = (name, direction, arm, reference, settings)
    return claim_specs(config, metric, [shape], chance=chance_near(chance_metric), margin=margin)[0]


def _tune_key(c: Cell) -> str:
    return "-".join([p for p in ("tune", str(c.setting[0]), f"lr{c.setting[1]:g}", c.variant) if p])


def tune_grid(
    settings: Sequence[Any],
    arms: Sequence[str],
    lrs: Sequence[float] | Mapping[Any, Sequence[float]],
    seed: int,
    *,
    key: Callable[[Cell], str] | None = None,
    order: tuple[str, str, str] = ("setting", "variant", "seed"),
) -> Grid:
    """(setting, lr) x arm on the tuning seed; units ``tune-SETTING-lrLR-ARM`` (no
    ``SETTING-`` for the setting ``""``), or ``key(cell)``; loops in ``order``. ``lrs``:
    one grid, or ``{setting: grid}``."""
    return Grid(
        variants=tuple(arms),
        seeds=(seed,),
        settings=[
            (s, float(lr)) for s in settings for lr in (lrs[s] if isinstance(lrs, Mapping) else lrs)
        ],
        key=key or _tune_key,
        order=order,
    )


def measured_grid(
    arms: Sequence[str],
    seeds: int | Sequence[int],
    settings: Sequence[Any] = ("",),
    *,
    include: Callable[[Cell], bool] | None = None,
    order: tuple[str, str, str] = ("seed", "setting", "variant"),
) -> Grid:
    """The measured runs: setting x arm x seed, seeds outermost (units
    ``SETTING-ARM-seedN``, ``ARM-seedN`` for the setting ``""``): a seed's arms run
    together (paired)."""
    return Grid(
        variants=tuple(arms), seeds=seeds, settings=tuple(settings), include=include, order=order
    )


def choose_lrs(tuning: Mapping[str, Mapping[str, Mapping[float, float | None]]]) -> dict:
    """``{setting: {arm: lr or None}}`` from ``{setting: {arm: {lr: criterion}}}``: the
    lowest finite criterion (ties: the smaller lr); None when every lr diverged."""
    chosen: dict[str, dict[str, float | None]] = {}
    for setting, arms in tuning.items():
        chosen[setting] = {}
        for arm, by_lr in arms.items():
            finite = {
                float(lr): float(v)
                for lr, v in by_lr.items()
                if v is not None and math.isfinite(float(v))
            }
            chosen[setting][arm] = min(finite, key=lambda lr: (finite[lr], lr)) if finite else None
    return chosen


def at_edge(lrs: Sequence[float], chosen: ChosenLrs) -> list[str]:
    """``"SETTING/ARM"`` for every choice at the smallest or largest grid value."""
    edges = {min(lrs), max(lrs)} if len(lrs) > 1 else set()
    return [
        f"{s}/{a}" if s else a
        for s, arms in chosen.items()
        for a, lr in arms.items()
        if lr is not None and lr in edges
    ]


def chance_near(metric: str, level: float = 10.0, tolerance: float = 2.0) -> stats.ChanceRule:
    """The chance rule "``metric`` within ``tolerance`` of ``level``" (default: a
    percentage within 2 points of 10, chance over ten classes)."""
    return stats.ChanceRule(metric, level=level, tolerance=tolerance)


#: One claim of :func:`claim_specs`: name, direction, arm, reference, settings (None:
#: every setting of the per-seed numbers).
ClaimShape = tuple[str, stats.Direction, str, str, Sequence[str] | None]


def claim_specs(
    config: Any,
    metric: str,
    shapes: Sequence[ClaimShape],
    *,
    chance: stats.ChanceRule | None,
    margin: float | None = None,
    paired: bool = True,
) -> list[stats.ClaimSpec]:
    """The claims of an experiment on one primary ``metric``, declared compactly: one
    ``(name, direction, arm, reference, settings)`` per claim, ``config``'s margin (or
    ``margin``) and min_seeds, the same ``chance`` rule; ``paired=False``: Welch's t
    (arms not paired by seed)."""
    return [
        stats.ClaimSpec(
            name=name,
            metric=metric,
            direction=direction,
            arm=arm,
            reference=reference,
            margin=config.margin if margin is None else margin,
            min_seeds=config.min_seeds,
            paired=paired,
            settings=None if settings is None else tuple(settings),
            chance=chance,
        )
        for name, direction, arm, reference, settings in shapes
    ]


@dataclass(frozen=True)
class TunedConfig(PairedConfig):
    """The config of a tuned-lr paired experiment: ``PairedConfig`` and the lr tuning.

    A subclass adds its fields, gives ``lrs`` and ``margin`` its defaults, names the
    numeric fields that must be > 0 (``POSITIVE``) and states its quick run (``QUICK``,
    which already takes 1,024 training and 500 test images). The checks run at
    construction; messages start with ``OWNER`` (default: the class name).

    Args:
        seeds, train_size, test_size, min_seeds, threads: as in ``PairedConfig``.
        tune_seed: the separate seed of the lr tuning runs.
        lrs: the lr grid (each arm picks one by its tuning rule).
        margin: the claims' equivalence margin, in the primary metric's units.

    Raises:
        ValueError: a ``POSITIVE`` setting that is not > 0, or an empty or non-positive
            lr grid.
    """

    tune_seed: int = 1000
    lrs: tuple[float, ...] = (0.01, 0.1, 1.0)
    margin: float = 1.0

    QUICK = PairedConfig.quick_settings(train_size=1024, test_size=500)

    #: The numeric settings that must be > 0; a subclass names its own.
    POSITIVE: ClassVar[tuple[str, ...]] = ("seeds", "margin")
    #: The name that starts the error messages ("" : the class name).
    OWNER: ClassVar[str] = ""

    def __post_init__(self) -> None:
        owner = self.OWNER or type(self).__name__
        check_positive(owner, self, self.POSITIVE)
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"{owner}: lrs must be positive values, got {self.lrs!r}")


@dataclass(frozen=True)
class EpochsConfig(TunedConfig):
    """A ``TunedConfig`` whose runs are ``epochs`` passes of SGD batches of ``batch``.

    Args:
        batch: SGD batch.
        epochs: passes over the training images (the quick run: 1).
    """

    batch: int = 128
    epochs: int = 2

    QUICK = TunedConfig.quick_settings(epochs=1)
    POSITIVE = ("seeds", "batch", "epochs", "margin")

    def steps_for(self, n_train: int) -> int:
        """SGD steps: ``epochs`` passes of full batches over ``n_train`` images."""
        return self.epochs * max(1, n_train // self.batch)

    @property
    def steps(self) -> int:
        """SGD steps of a run on ``train_size`` images (60,000 when None)."""
        return self.steps_for(60_000 if self.train_size is None else self.train_size)


@dataclass(frozen=True)
class Tuned:
    """The tuning runs' outcome: ``values[setting][arm][lr]`` (the tuning criterion) and
    the chosen ``lrs[setting][arm]`` (None: every lr diverged)."""

    values: Mapping[str, Mapping[str, Mapping[float, Any]]]
    lrs: ChosenLrs

    def criterion(self, setting: str, arm: str, lr: float) -> Any:
        """The tuning criterion of ``(setting, arm)`` at ``lr`` (None if not run)."""
        return self.values.get(setting, {}).get(arm, {}).get(float(lr))

    def lr(self, setting: str, arm: str) -> float | None:
        """The chosen lr of ``(setting, arm)``."""
        return self.lrs.get(setting, {}).get(arm)

    def row(
        self, setting: str, arm: str, labels: Sequence[Any]
    ) -> tuple[Sequence[Any], Mapping[float, Any], float | None]:
        """A row of :meth:`table` for ``(setting, arm)``: ``labels``, the criterion per
        lr, the chosen lr."""
        return labels, self.values.get(setting, {}).get(arm, {}), self.lr(setting, arm)

    def stored(self, setting: str | None = None) -> dict[str, Any]:
        """``values`` as JSON (lrs as ``repr`` keys); only ``setting``'s arms if given."""

        def arms(by_arm: Mapping[str, Mapping[float, Any]]) -> dict[str, Any]:
            return {a: {repr(lr): v for lr, v in by.items()} for a, by in by_arm.items()}

        if setting is not None:
            return arms(self.values.get(setting, {}))
        return {s: arms(by_arm) for s, by_arm in self.values.items()}

    def record(self, config: Any, criterion: str, **extra: Any) -> dict[str, Any]:
        """The results.json keys of the tuning: ``tuning``, ``lr``, ``lr_at_grid_edge``
        and ``tune_rule`` (:data:`TUNE_RULE` with ``criterion``); ``extra`` replaces any
        of them (e.g. a flattened ``lr``)."""
        return {
            "tuning": self.stored(),
            "lr": self.lrs,
            "lr_at_grid_edge": at_edge(config.lrs, self.lrs),
            "tune_rule": TUNE_RULE.format(
                grid="/".join(f"{lr:g}" for lr in config.lrs),
                criterion=criterion,
                seed=config.tune_seed,
            ),
        } | extra

    def table(
        self,
        title: str,
        columns: Sequence[str],
        grid: Sequence[float],
        rows: Sequence[tuple[Sequence[Any], Mapping[float, Any], Any]],
        *,
        value: Callable[[Any], Any] = json_float,
    ) -> Table:
        """The tuning table: per row ``(labels, {lr: criterion}, chosen)``, the labels
        under ``columns``, ``value(criterion)`` per lr of ``grid``, the chosen lr."""
        return Table(
            title,
            [*columns, *(f"lr={lr:g}" for lr in grid), "chosen lr"],
            [
                [*labels, *(value(by_lr.get(float(lr))) for lr in grid), chosen]
                for labels, by_lr, chosen in rows
            ],
        )

    @staticmethod
    def notes(raw: Mapping[str, Any]) -> list[str]:
        """The tuning rule and the choices at the grid's edge, from :meth:`record`'s keys."""
        return [
            raw["tune_rule"],
            "lr at the grid's edge: " + (", ".join(raw["lr_at_grid_edge"]) or "none"),
        ]


def run_tuned(ctx: LabContext, config: Any, data: Any, **kwargs: Any) -> tuple[Tuned, GridRun]:
    """:func:`tuned_runs` with the tuning as a :class:`Tuned`."""
    tuning, lrs, measured = tuned_runs(ctx, config, data, **kwargs)
    return Tuned(tuning, lrs), measured


#: The functions :func:`tuned_lab` takes from the config's module when not given.
MODULE_PARTS = ("tune_grid", "tune_cell", "main_grid", "main_cell", "summarize")


def tuned_lab(
    *,
    config_type: type,
    tune: tuple[Callable[[Any], Grid | None], Callable[..., Mapping[str, Any]]] | None = None,
    measure: tuple[Callable[[Any], Grid], Callable[..., Any]] | None = None,
    criterion: str = "final_train_loss",
    summarize: Callable[..., LabOutcome] | None = None,
    steps: Callable[[Any, Any], int | Callable[[Any], int]] | None = None,
    prepare: Callable[[Any, Any], Any] | None = None,
    extras: Callable[[Any, LabContext, Any], Mapping[str, Any]] | None = None,
    **spec: Any,
) -> LabSpec:
    """The spec of a tuned-lr paired experiment: tune each arm's lr on the tuning seed,
    run the measured grid at the chosen lrs (:func:`tuned_runs`), then any extra units,
    then the summary.

    An experiment module states only its texts and config; its parts are its functions
    of :data:`MODULE_PARTS`, found by name in ``config_type``'s module: ``tune_grid``
    and ``tune_cell`` (``tune``), ``main_grid`` and ``main_cell`` (``measure``),
    ``summarize`` (``bnlab.lab.runner.module_part``). A part passed here is used instead.

    Args:
        config_type: the config dataclass (``LabSpec``'s); its module holds the parts.
        tune: ``(grid, cell)``: config -> the tuning grid (:func:`tune_grid`; None: no
            setting is tuned), and the tuning cell of :func:`tuned_runs`.
        measure: ``(grid, cell)``: config -> the measured grid (:func:`measured_grid`),
            and the measured cell of :func:`tuned_runs`.
        criterion: as for :func:`tuned_runs` (default: the final training loss).
        steps: ``(config, data) -> progress per cell`` (default: ``config.steps``), or
            ``-> setting -> progress`` where the settings' budgets differ
            (:func:`run_by_setting`).
        summarize: ``(config, ctx, run, tuned, **extras) -> LabOutcome``.
        prepare: ``(config, ctx.data) -> data`` (default: ``config.subsets``).
        extras: ``(config, ctx, data) -> {name: value}`` after the runs (e.g. units of
            ``ctx.unit``), passed to ``summarize`` by name.
        spec: ``LabSpec``'s ``name``, ``title``, ``summary``, ``full_time``...

    Raises:
        TypeError: a part neither passed nor defined in ``config_type``'s module.
    """
    name = spec["name"]

    part = functools.partial(module_part, config_type, caller="tuned_lab")
    tune = tune or (part("tune_grid"), part("tune_cell"))
    measure = measure or (part("main_grid"), part("main_cell"))
    summarize = summarize or part("summarize")

    def run(config: Any, ctx: LabContext) -> LabOutcome:
        data = prepare(config, ctx.data) if prepare else config.subsets(ctx.data, name)
        tuned, measured = run_tuned(
            ctx,
            config,
            data,
            tune=tune[0](config),
            main=measure[0](config),
            cells=(tune[1], measure[1]),
            criterion=criterion,
            steps=steps(config, data) if steps else config.steps,
            label=name,
        )
        more = extras(config, ctx, data) if extras else {}
        return summarize(config, ctx, measured, tuned, **more)

    return LabSpec(run=run, needs_data=True, config_type=config_type, **spec)


def tuned_runs(
    ctx: LabContext,
    config: Any,
    data: Any,
    *,
    tune: Grid | None,
    main: Grid,
    cells: tuple[Callable[..., Mapping[str, Any]], Callable[..., Any]],
    criterion: str,
    steps: int | Callable[[Any], int],
    label: str,
) -> tuple[dict, dict, GridRun]:
    """Run the tuning grid, choose each arm's lr, then the measured grid.

    Args:
        ctx: the experiment's context.
        config: the experiment's config, bound as the cells' first argument.
        data: ``bench.data``.
        tune: :func:`tune_grid`'s grid (settings ``(setting, lr)``); None: no tuning
            runs (no lr is chosen).
        main: the measured grid (settings as the tuning grid's first elements).
        cells: ``(tune_cell, main_cell)``, module-level functions (so that ``--workers``
            can run them in a pool): ``tune_cell(config, cell, bench) -> {criterion:
            value, ...}`` and ``main_cell(config, lrs, cell, bench) -> result``, ``lrs`` the
            chosen ``{setting: {arm: lr}}``.
        criterion: the key of ``tune_cell``'s result that the rule minimizes.
        steps: progress per cell, or ``setting -> progress per cell`` (the grids then run
            setting by setting, :func:`run_by_setting`; a tuning cell's setting is the
            first element of its ``(setting, lr)``).
        label: the progress bar's text.

    Returns:
        ``(tuning, lrs, measured)``: ``{setting: {arm: {lr: criterion}}}``, the chosen lrs
        and the measured grid's run.
    """
    tune_cell, main_cell = cells
    tune_steps = (lambda key: steps(key[0])) if callable(steps) else steps
    grids = [(tune, tune_steps)] if tune is not None else []
    ctx.progress.start(sum(by_setting(g, n) for g, n in [*grids, (main, steps)]), label)
    tuning: dict[str, dict[str, dict[float, Any]]] = {}
    if tune is not None:
        measure = functools.partial(tune_cell, config)
        for cell, result in run_by_setting(ctx, tune, measure, data=data, steps=tune_steps):
            setting, lr = cell.setting
            by_lr = tuning.setdefault(str(setting), {}).setdefault(cell.variant, {})
            by_lr[lr] = result[criterion]
    lrs = choose_lrs(tuning)
    measured = run_by_setting(
        ctx, main, functools.partial(main_cell, config, lrs), data=data, steps=steps
    )
    return tuning, lrs, measured


def by_setting(grid: Grid, steps: int | Callable[[Any], int]) -> int:
    """The progress of all of ``grid``'s cells: ``steps`` each, or ``steps(setting)``."""
    if not callable(steps):
        return len(grid.cells()) * steps
    return sum(steps(cell.setting) for cell in grid.cells())


def run_by_setting(
    ctx: LabContext,
    grid: Grid,
    measure: Callable[[Cell, Bench], Any],
    *,
    data: Any,
    steps: int | Callable[[Any], int],
) -> GridRun:
    """``run_grid`` with ``steps`` progress per cell, or, with ``steps(setting)``, one
    ``run_grid`` per run of consecutive settings with the same steps (each at its own
    progress per cell), joined in the grid's order: ``grid.order`` must then start with
    ``"setting"``.

    Raises:
        ValueError: per-setting steps and a grid whose outer loop is not the setting.
    """
    if not callable(steps):
        return run_grid(ctx, grid, measure, data=data, steps=steps)
    if grid.order[0] != "setting":
        raise ValueError(
            f"run_by_setting: per-setting steps need the setting outermost, got {grid.order!r}"
        )
    cells: list[Cell] = []
    results: list[Any] = []
    for n, settings in itertools.groupby(grid.settings, key=steps):
        part = dataclasses.replace(grid, settings=tuple(settings))
        done = run_grid(ctx, part, measure, data=data, steps=n)
        cells += done.cells
        results += done.results
    return GridRun(cells, results)


def lr_schedule(steps: int) -> Callable[[int], float]:
    """The linear decay to 0 over ``steps`` (a ``LambdaLR`` factor): every measured
    metric is read at a settled point."""
    return lambda k: max(0.0, 1.0 - k / steps)


def train_decayed(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    bench: Bench,
    *,
    lr: float,
    batch: int,
    steps: int,
    seed: int,
    momentum: float = 0.0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> list[float]:
    """``steps`` SGD steps (``momentum``) in train mode at ``lr`` decayed linearly to 0,
    on endless batches of ``images`` drawn with ``seed``; one progress step per step;
    ``loss_fn(logits, labels)`` (cross-entropy by default; a wrapper may also record).

    Returns:
        The mini-batch losses.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(steps))
    model.train()
    return run_steps(
        model,
        batches(images, labels, batch, seed, bench.device),
        opt,
        steps=steps,
        loss_fn=loss_fn,
        on_step=[lambda s: schedule.step(), lambda s: bench.advance(1)],
    )


def train_new(
    build: Callable[[], nn.Module],
    data: Mapping[str, Tensor],
    bench: Bench,
    *,
    seed: int,
    **train: Any,
) -> tuple[nn.Module, list[float]]:
    """A new model trained: ``build()`` under ``seed`` (its initial weights), on
    ``bench.device``, then :func:`train_decayed` (``train``: its ``lr``, ``batch``,
    ``steps``, ``momentum``, ``loss_fn``) on ``data``'s training images and labels, with
    batches drawn with the same ``seed``.

    Returns:
        ``(model, losses)``: the trained model (train mode) and the mini-batch losses.
    """
    with seeded(seed):
        model = build().to(bench.device)
    losses = train_decayed(
        model, data["train_images"], data["train_labels"], bench, seed=seed, **train
    )
    return model, losses


def claims_table(evaluated: Sequence[Mapping[str, Any]], unit: str, digits: int = 2) -> Table:
    """One row per claim and setting of ``stats.evaluate_experiment``'s output: the
    difference with its 95% t interval (``stats.interval_cells``), Holm's p, the TOST p, the seeds and the status."""
    rows = []
    for e in evaluated:
        for row in e["settings"]:
            rows.append(
                [
                    e["claim"],
                    row["setting"] or "-",
                    f"{e['arm']} - {e['reference']}",
                    *stats.interval_cells(row, digits),
                    None if row.get("p_holm") is None else f"{row['p_holm']:.3g}",
                    None if row.get("tost_p_holm") is None else f"{row['tost_p_holm']:.3g}",
                    row["n"],
                    row["status"],
                    e["verdict"],
                ]
            )
    margins = ", ".join(sorted({f"±{e['margin']:g}" for e in evaluated}))
    return Table(
        f"Claims (declared before the run; paired t by seed, Holm over the experiment, TOST "
        f"margin {margins} {unit})",
        [
            "claim",
            "setting",
            "arm - reference",
            "diff",
            "95% CI",
            "p (Holm)",
            "TOST p (Holm)",
            "n",
            "status",
            "verdict",
        ],
        rows,
    )


def measured_text(evidence: Mapping[str, Any]) -> str:
    """A ``stats`` evaluation's one-line text without its leading verdict (``apply_rules``
    puts the verdict in front)."""
    return evidence["text"].removeprefix(f"{evidence['verdict']}: ")
