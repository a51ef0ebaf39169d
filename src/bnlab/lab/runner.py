"""The grid runner: for each cell of a grid (setting x variant x seed): train, measure, store.

Most experiments of the lab are one grid: some *settings* (architectures, batch sizes,
learning rates), some *variants* (no norm, BN, BN with noise), a few *seeds* each; one
training run per cell, measured and stored; then tables, figures and verdicts over the
per-seed numbers. The runner writes that once. An experiment on it states:

- its **grid**, a :class:`Grid` (``variants x settings x seeds``, an ``include`` filter,
  the unit key of a cell, the loop order);
- its **measurement**, ``measure(config, cell, bench) -> dict``: train one cell and
  return JSON-ready numbers (``bench`` holds the data, the device and ``advance`` for
  the progress bar). A cell's seed is its model's init and its data order, the same
  for every variant (paired seeds);
- its **summary**, ``summarize(config, ctx, run) -> LabOutcome``: tables
  (:func:`summary_table`, :func:`layer_table`), figures and verdicts (rules over
  ``run.per_seed()``, see ``bnlab.lab.kit.verdicts``);

and :func:`grid_lab` makes the ``LabSpec``. Each cell is one resumable unit
(``units/KEY.json``, see ``LabContext.unit``): a killed run, started again with
``--resume``, computes only the cells it had not stored and ends with the numbers of an
uninterrupted run. An experiment with several grids (or units that are not training
runs) calls :func:`run_grid` itself, once per grid.

With ``ctx.workers > 1`` (``bnlab lab --workers``) the cells still to compute run in that
many spawned processes of ``ctx.threads`` threads each (``bnlab.lab.pool``); this process
stores each result as its unit as it arrives, and the run ends with the numbers of a
serial run at that thread count. A measurement that cannot be sent to another process
(a lambda or a closure; :func:`grid_lab` sends a ``functools.partial`` of the
experiment's module-level ``measure``) runs here, one cell after the other.
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bnlab.lab.experiment import LabContext, LabOutcome, LabSpec, Table, mean_std_text
from bnlab.lab.pool import is_picklable, run_in_pool, worker_report

__all__ = [
    "Bench",
    "Cell",
    "Grid",
    "GridRun",
    "grid_lab",
    "layer_table",
    "module_part",
    "run_grid",
    "seed_range",
    "summary_table",
]

_AXES = ("setting", "variant", "seed")


@dataclass(frozen=True)
class Cell:
    """One run of a grid: a setting (``""`` when the grid has one), a variant, a seed."""

    setting: Any
    variant: str
    seed: int


def cell_key(cell: Cell) -> str:
    """The default unit key: ``"SETTING-VARIANT-seedN"`` (``"VARIANT-seedN"`` without a
    setting)."""
    head = f"{cell.setting}-" if cell.setting != "" else ""
    return f"{head}{cell.variant}-seed{cell.seed}"


@dataclass(frozen=True)
class Grid:
    """The cells of an experiment.

    Args:
        variants: what is compared (``("none", "bn")``).
        seeds: how many seeds (``0..seeds-1``) or the seeds themselves.
        settings: where it is compared (architectures, batch sizes...); one empty
            setting by default.
        include: keep only the cells for which this is true (e.g. a variant run on some
            settings only).
        key: the cell's unit key, a plain file name unique in the experiment.
        order: the loops, outermost first: a permutation of ``("setting", "variant",
            "seed")``. It is the order in which cells run and results are listed.

    Raises:
        ValueError: no variant or seed, or a bad ``order``.
    """

    variants: Sequence[str]
    seeds: int | Sequence[int]
    settings: Sequence[Any] = ("",)
    include: Callable[[Cell], bool] | None = None
    key: Callable[[Cell], str] = cell_key
    order: tuple[str, str, str] = _AXES

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("Grid: no variants")
        if not self.seed_list:
            raise ValueError(f"Grid: no seeds, got {self.seeds!r}")
        if not self.settings:
            raise ValueError("Grid: no settings (use the default ('',) for none)")
        if sorted(self.order) != sorted(_AXES):
            raise ValueError(f"Grid: order must be a permutation of {_AXES}, got {self.order!r}")

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds, in order."""
        return tuple(range(self.seeds)) if isinstance(self.seeds, int) else tuple(self.seeds)

    def cells(self) -> list[Cell]:
        """Every included cell, in ``order``."""
        axes = {"setting": self.settings, "variant": self.variants, "seed": self.seed_list}
        out = []
        for values in itertools.product(*(axes[a] for a in self.order)):
            cell = Cell(**dict(zip(self.order, values, strict=True)))
            if self.include is None or self.include(cell):
                out.append(cell)
        return out


def seed_range(owner: str, first_seed: Any, seeds: int) -> tuple[int, ...]:
    """The seeds of a config's measured runs, ``first_seed .. first_seed + seeds - 1``
    (fresh seeds after a design change start above the earlier runs').

    Raises:
        ValueError: ``first_seed`` is not an int >= 0 (``owner``, the config's name,
            starts the message).
    """
    if isinstance(first_seed, bool) or not isinstance(first_seed, int) or first_seed < 0:
        raise ValueError(f"{owner}: first_seed must be an int >= 0, got {first_seed!r}")
    return tuple(range(first_seed, first_seed + seeds))


@dataclass(frozen=True)
class Bench:
    """What a cell's measurement gets besides its config and cell.

    Attributes:
        data: the experiment's data (``ctx.data``, or what ``prepare`` made of it).
        device: where to compute.
        advance: moves the progress bar by a number of steps (the runner makes up
            what a cell did not advance itself).
    """

    data: Any
    device: torch.device
    advance: Callable[[int], None] = field(default=lambda steps: None)


class GridRun:
    """The stored results of a grid's cells, in the grid's order.

    Args:
        cells: the cells.
        results: what each cell's measurement returned (as stored: JSON values).
    """

    def __init__(self, cells: Sequence[Cell], results: Sequence[Any]) -> None:
        if len(cells) != len(results):
            raise ValueError(f"GridRun: {len(cells)} cells but {len(results)} results")
        self.cells = list(cells)
        self.results = list(results)

    def __len__(self) -> int:
        return len(self.cells)

    def __iter__(self) -> Iterator[tuple[Cell, Any]]:
        return iter(zip(self.cells, self.results, strict=True))

    def settings(self) -> list[Any]:
        """The settings that have a cell, in order of first appearance."""
        return list(dict.fromkeys(c.setting for c in self.cells))

    def select(
        self, *, setting: Any = None, variant: str | None = None, seed: int | None = None
    ) -> list[Any]:
        """The results of the cells matching every given axis, in order."""
        return [
            r
            for c, r in self
            if (setting is None or c.setting == setting)
            and (variant is None or c.variant == variant)
            and (seed is None or c.seed == seed)
        ]

    def per_seed(
        self,
        metrics: Callable[[Any], Mapping[str, Any]] = lambda r: r["metrics"],
        *,
        missing: Mapping[str, Any] | None = None,
    ) -> dict[str, dict[str, dict[str, list[Any]]]]:
        """``str(setting) -> variant -> metric -> [value per seed]``, in the grid's order.

        Args:
            metrics: a cell's result -> its metrics by name (default ``result["metrics"]``).
            missing: the metrics of a cell whose result has none (no ``"metrics"``, or
                None: its arm had no lr, or the run was not read), e.g. NaN or None per
                metric, so that each list keeps one entry per seed; None: such a cell
                is an error.
        """
        out: dict[str, dict[str, dict[str, list[Any]]]] = {}
        for cell, result in self:
            bucket = out.setdefault(str(cell.setting), {}).setdefault(cell.variant, {})
            absent = missing is not None and not result.get("metrics")
            for key, value in (missing if absent else metrics(result)).items():
                bucket.setdefault(key, []).append(value)
        return out

    def curves(
        self, field: str, *, settings: Sequence[Any], variants: Sequence[str]
    ) -> dict[Any, dict[str, list[Any]]]:
        """``setting -> variant -> [result[field] per seed]`` for the figures (an empty
        list where a variant has no cell)."""
        return {
            s: {v: [r[field] for r in self.select(setting=s, variant=v)] for v in variants}
            for s in settings
        }


def run_grid(
    ctx: LabContext,
    grid: Grid,
    measure: Callable[[Cell, Bench], Any],
    *,
    data: Any = None,
    steps: int = 1,
    description: str | None = None,
) -> GridRun:
    """Measure every cell of ``grid`` once, as a resumable unit of ``ctx``.

    Args:
        ctx: the experiment's context (results folder, device, progress).
        grid: the cells.
        measure: ``measure(cell, bench) -> JSON-ready result``; called only for cells
            without a stored result.
        data: ``bench.data`` (default ``ctx.data``).
        steps: how far one cell moves the progress bar (its training steps, or 1).
        description: start the progress bar for this grid with this text (None: the
            caller started it, e.g. for several grids).

    ``ctx.workers`` and ``ctx.threads`` choose serial or parallel cells (see the module).

    Returns:
        The cells and their results.
    """
    cells = grid.cells()
    if description is not None:
        ctx.progress.start(len(cells) * steps, description)
    data = ctx.data if data is None else data
    pooled: dict[str, Any] = {}
    workers = getattr(ctx, "workers", 1)
    if workers > 1:
        todo = [c for c in cells if not (ctx.units_dir / f"{grid.key(c)}.json").exists()]
        # Lambdas and closures cannot reach a spawned process: those grids run here.
        if len(todo) > 1 and is_picklable(measure) and is_picklable(data):
            pooled = _run_cells_in_pool(ctx, grid, measure, todo, data, steps, workers)
    results = [
        pooled[grid.key(cell)]
        if grid.key(cell) in pooled
        else ctx.unit(
            grid.key(cell), _cell_work(ctx, measure, cell, data, steps), progress_steps=steps
        )
        for cell in cells
    ]
    return GridRun(cells, results)


def _measure_in_worker(
    data: Any, measure: Callable[[Cell, Bench], Any], cell: Cell, device: str
) -> Any:
    """A cell's measurement in a worker of ``bnlab.lab.pool``; progress sent back."""
    return measure(cell, Bench(data, torch.device(device), _advance_in_worker))


def _advance_in_worker(steps: int = 1) -> None:
    worker_report(steps)


def _run_cells_in_pool(
    ctx: LabContext,
    grid: Grid,
    measure: Callable[[Cell, Bench], Any],
    todo: Sequence[Cell],
    data: Any,
    steps: int,
    workers: int,
) -> dict[str, Any]:
    """Measure ``todo`` in ``workers`` spawned processes; store each result as its unit
    as it arrives (in the order cells end), moving the progress bar as the serial path.

    Returns:
        unit key -> result, for the cells measured.
    """
    moved = [0] * len(todo)
    results: dict[str, Any] = {}
    # Progress messages come through their own queue and thread: a cell's result may
    # arrive before its last messages. Each cell moves the bar by ``steps`` in all.
    lock = threading.Lock()

    def move(index: int, n: int) -> None:
        with lock:
            n = max(0, min(n, steps - moved[index]))
            moved[index] += n
        if n:
            ctx.progress.advance(n)

    def advance(index: int, n: int) -> None:
        move(index, n)

    def store(index: int, result: Any) -> None:
        move(index, steps)  # what the cell did not report (yet): late messages are dropped
        key = grid.key(todo[index])
        results[key] = ctx.unit(key, lambda: result)

    run_in_pool(
        _measure_in_worker,
        [(measure, cell, str(ctx.device)) for cell in todo],
        workers=workers,
        threads=getattr(ctx, "threads", None) or 1,
        shared=data,
        on_result=store,
        on_message=advance,
    )
    return results


def _cell_work(
    ctx: LabContext, measure: Callable[[Cell, Bench], Any], cell: Cell, data: Any, steps: int
) -> Callable[[], Any]:
    """The unit's work for ``cell``: measure it, then fill the progress bar up to ``steps``."""
    moved = 0

    def advance(n: int = 1) -> None:
        nonlocal moved
        moved += n
        ctx.progress.advance(n)

    def work() -> Any:
        result = measure(cell, Bench(data, ctx.device, advance))
        if moved < steps:
            ctx.progress.advance(steps - moved)
        return result

    return work


def summary_table(
    title: str,
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    columns: Sequence[tuple[str, str]],
    *,
    label: Callable[[str], str] = str,
    head: Sequence[str] = ("network", "variant"),
    missing: str = "n/a",
) -> Table:
    """One row per (setting, variant): its label, the variant, ``mean ± std`` over seeds
    of each metric.

    Args:
        title: the table's title.
        per_seed: ``GridRun.per_seed()``.
        columns: ``(header, metric)`` pairs.
        label: setting -> its text in the first column.
        head: the headers of the setting and variant columns.
        missing: the text for a metric without a finite value.
    """
    rows = [
        [label(setting), variant] + [mean_std_text(metrics[m], missing=missing) for _, m in columns]
        for setting, variants in per_seed.items()
        for variant, metrics in variants.items()
    ]
    return Table(title, [*head, *(h for h, _ in columns)], rows)


def layer_table(
    title: str,
    run: GridRun,
    columns: Sequence[tuple[str, Callable[[Any, str], Any]]],
    *,
    layers: Callable[[Any], Sequence[str]],
    variants: Sequence[str],
    label: Callable[[Any], str] = str,
    head: Sequence[str] = ("network", "variant", "layer"),
    missing: str = "n/a",
) -> Table:
    """One row per (setting, variant, layer): ``mean ± std`` over seeds of per-layer values.

    Args:
        title: the table's title.
        run: the grid's results.
        columns: ``(header, value)`` pairs; ``value(result, layer)`` is one seed's number.
        layers: the layers of a setting, read from its first result.
        variants: the variants shown (those without cells are skipped).
        label: setting -> its text in the first column.
        head: the headers of the setting, variant and layer columns.
        missing: the text for a value without a finite number.
    """
    rows = []
    for setting in run.settings():
        for variant in variants:
            results = run.select(setting=setting, variant=variant)
            if not results:
                continue
            for layer in layers(results[0]):
                rows.append(
                    [label(setting), variant, layer]
                    + [
                        mean_std_text([value(r, layer) for r in results], missing=missing)
                        for _, value in columns
                    ]
                )
    return Table(title, [*head, *(h for h, _ in columns)], rows)


def module_part(config_type: type, name: str, caller: str) -> Callable[..., Any]:
    """The function ``name`` of the module that defines ``config_type``: an experiment
    module's part (its ``grid``, ``measure``...) found by its name.

    Raises:
        TypeError: the module defines no function ``name`` (``caller`` starts the message).
    """
    module = sys.modules[config_type.__module__]
    part = getattr(module, name, None)
    if not callable(part):
        raise TypeError(
            f"{caller}: {config_type.__name__}'s module {module.__name__} defines no "
            f"function {name}(); define one or pass it to {caller}"
        )
    return part


def grid_lab(
    *,
    name: str,
    title: str,
    summary: str,
    config_type: type,
    grid: Callable[[Any], Grid] | None = None,
    measure: Callable[[Any, Cell, Bench], Any] | None = None,
    summarize: Callable[[Any, LabContext, GridRun], LabOutcome] | None = None,
    steps: Callable[[Any], int] = lambda config: 1,
    prepare: Callable[[Any, Mapping[str, Tensor] | None], Any] | None = None,
    description: str | None = None,
    needs_data: bool = True,
    full_time: str = "",
) -> LabSpec:
    """The ``LabSpec`` of a one-grid experiment: prepare the data, run the grid, summarize.

    ``grid``, ``measure`` and ``summarize``, when not given, are the functions of those
    names in ``config_type``'s module (:func:`module_part`): an experiment module states
    its config, its texts and these three functions.

    Args:
        name, title, summary, config_type, needs_data, full_time: as for ``LabSpec``.
        grid: config -> the grid.
        measure: ``measure(config, cell, bench)``, one cell's JSON-ready result.
        summarize: ``summarize(config, ctx, run)`` -> the outcome (tables, verdicts,
            figures written to ``ctx.out_dir``, raw numbers).
        steps: config -> progress steps per cell.
        prepare: ``prepare(config, ctx.data)`` -> ``bench.data`` (default ``ctx.data``).
        description: the progress bar's text (default ``name``).

    Raises:
        TypeError: a part neither given nor defined in ``config_type``'s module.
    """
    grid_of = grid or module_part(config_type, "grid", "grid_lab")
    measure_cell = measure or module_part(config_type, "measure", "grid_lab")
    summarize_run = summarize or module_part(config_type, "summarize", "grid_lab")

    def run(config: Any, ctx: LabContext) -> LabOutcome:
        if needs_data and ctx.data is None:
            raise ValueError(f"lab {name} needs Fashion-MNIST data")
        data = ctx.data if prepare is None else prepare(config, ctx.data)
        result = run_grid(
            ctx,
            grid_of(config),
            functools.partial(measure_cell, config),
            data=data,
            steps=steps(config),
            description=description or name,
        )
        return summarize_run(config, ctx, result)

    return LabSpec(
        name=name,
        title=title,
        summary=summary,
        config_type=config_type,
        run=run,
        needs_data=needs_data,
        full_time=full_time,
    )
