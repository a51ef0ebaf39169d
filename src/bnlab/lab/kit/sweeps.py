"""One SGD run of an MLP read at a settled point, and the trainability sweeps built on it.

Shared by the second-edition designs of ``lr-sweep``, ``init`` and ``regularization``
(issue 17):

- :func:`train_run`: plain (or momentum) SGD with the learning rate decayed linearly to
  0 over the run, so that every readout is taken at a settled point (the referee's
  lesson, ``docs/lab_referee.md``); the moving average of the mini-batch losses at
  every step; readouts (``readout(model)``, e.g. test accuracy and NLL) the first time
  the fit reaches each of ``fit_targets`` (matched fit: that average, or a ``clock``
  such as the eval-mode NLL of the training set read every few steps) and at the end;
  a non-finite loss stops the run and marks it diverged.
- :class:`SweepConfig`: the trainability sweeps' core (``lr-sweep`` sweeps the learning
  rate, ``init`` the scale of the initial weights): a ReLU and a sigmoid MLP, with and
  without BN (before the activation, the paper's placement), paired seeds.
- :func:`sweep_grid`, :func:`trainability`: the grid (activation x swept value) x arm x
  seed, and per seed the grid values at which the run *trains* (did not diverge and
  ended within ``drop`` points of the seed's best accuracy in that arm, and above the
  floor ``target_acc``, on the full test set), summarised as the largest such value
  (log10) and the width of the range (decades), with the censoring at the grid's
  edges.
- :func:`censored_rule`: a ``bnlab.lab.stats`` claim whose verdict is withdrawn
  ("inconclusive") when a censored seed could flip it.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.3).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab import stats
from bnlab.lab.claims import spec_record, stats_rule
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, seeded
from bnlab.lab.kit.configs import PairedConfig, check_positive
from bnlab.lab.kit.data import batches
from bnlab.lab.kit.paired import claims_table
from bnlab.lab.kit.threads import cpu_threads
from bnlab.lab.kit.train import json_float
from bnlab.lab.kit.verdicts import decide
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, seed_range
from bnlab.models import create
from bnlab.plots.sweeps import plot_sweep
from bnlab.train import evaluate, init_weights
from bnlab.train.steps import run_steps

__all__ = [
    "ARMS",
    "CENSORING_RULE",
    "SweepConfig",
    "SweepFigure",
    "build_mlp",
    "censored_rule",
    "censored_text",
    "evaluate_split",
    "per_seed_table",
    "resolution_table",
    "scale_weights",
    "sweep_grid",
    "sweep_outcome",
    "sweep_series",
    "sweep_table",
    "sweep_tables",
    "sweep_verdicts",
    "train_run",
    "trainability",
    "tuning_data",
    "validation_split",
]

#: The sweeps' arms -> the model registry's norm (bnlab's BatchNorm1d, or none).
ARMS: dict[str, str] = {"none": "none", "bn": "bnlab"}

CENSORING_RULE = (
    "censoring: a seed that trains at the top of the grid has a largest value (or a "
    "width) that is a lower bound; one that trains nowhere has its largest value set "
    "one grid step below the grid (an upper bound). A 'supported' stands only if no "
    "reference seed is censored above and no arm seed below; a 'refuted' only if no arm "
    "seed is censored above and no reference seed below; otherwise 'inconclusive'"
)


class _Diverged(Exception):
    """Raised inside the step loop to stop a run whose loss is not finite."""


def evaluate_split(
    model: nn.Module, images: Tensor, labels: Tensor, device: torch.device
) -> dict[str, float | None]:
    """Accuracy (%) and mean cross-entropy of ``model`` on ``images`` (eval mode)."""
    loader = DeviceLoader(images, labels, 1000, shuffle=False, device=device)
    got = evaluate(model, loader)
    return {"acc": 100.0 * got["acc"], "nll": json_float(got["loss"])}


def scale_weights(model: nn.Module, factor: float) -> None:
    """Multiply every Linear and Conv weight of ``model`` by ``factor`` (biases untouched).

    Raises:
        ValueError: ``factor`` is not positive.
    """
    if not factor > 0:
        raise ValueError(f"scale_weights: factor must be > 0, got {factor!r}")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
                module.weight.mul_(factor)


def train_run(
    model: nn.Module,
    data: Mapping[str, Tensor],
    *,
    lr: float,
    steps: int,
    batch: int,
    seed: int,
    bench: Bench,
    momentum: float = 0.0,
    window: int = 50,
    readout: Callable[[nn.Module], dict[str, Any]] | None = None,
    fit_targets: Sequence[float] = (),
    clock: Callable[[nn.Module], float | None] | None = None,
    clock_every: int = 50,
) -> dict[str, Any]:
    """Train ``model`` (already initialised) with SGD, lr decayed linearly to 0.

    Args:
        model: the classifier, on ``bench.device``.
        data: ``train_images``/``train_labels`` (uint8 images) to train on.
        lr, momentum: SGD's; the lr falls linearly to 0 at ``steps``.
        steps, batch: SGD steps and batch.
        seed: the data order (``kit.batches``).
        bench: the cell's device and progress (one ``advance`` per step; a diverged
            run advances the rest at once).
        window: mini-batch losses in the training-loss moving average.
        readout: ``readout(model) -> dict`` in eval mode (restored to train mode
            after), taken at each fit target and at the end.
        fit_targets: training losses; the first step whose moving average (or
            ``clock``) is at or below each gets a readout (matched fit).
        clock: ``clock(model) -> loss`` in eval mode (e.g. the NLL of the whole
            training set), taken every ``clock_every`` steps and at the last: the fit
            that ``fit_targets`` match instead of the train-mode moving average (which
            carries BN's batch noise).
        clock_every: steps between two clock readings.

    Returns:
        ``{"diverged", "steps_done", "final_train_loss" (moving average), "at_fit":
        {repr(target): {"step", **readout} or None}, "final": readout or None,
        "clock": {"steps", "values"}}``, JSON-ready.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / steps))
    recent: deque[float] = deque(maxlen=window)
    state = {"loss_ma": math.nan, "done": 0}
    at_fit: dict[str, Any] = {repr(float(t)): None for t in fit_targets}
    ticks: dict[str, list[Any]] = {"steps": [], "values": []}

    def read() -> dict[str, Any]:
        got = readout(model) if readout is not None else {}
        model.train()
        return got

    def on_step(s: Any) -> None:
        loss = s.loss_value
        state["done"] = s.done
        bench.advance(1)
        if not math.isfinite(loss):
            raise _Diverged
        schedule.step()
        recent.append(loss)
        state["loss_ma"] = sum(recent) / len(recent)
        if clock is None:
            fit = state["loss_ma"] if len(recent) == window else None
        elif s.done % clock_every == 0 or s.done == steps:
            fit = clock(model)
            model.train()
            ticks["steps"].append(s.done)
            ticks["values"].append(json_float(math.nan if fit is None else fit))
        else:
            fit = None
        for target in fit_targets:
            key = repr(float(target))
            if at_fit[key] is None and fit is not None and fit <= target:
                at_fit[key] = {"step": s.done, "fit": json_float(fit), **read()}

    model.train()
    diverged = False
    try:
        run_steps(
            model,
            batches(data["train_images"], data["train_labels"], batch, seed, bench.device),
            opt,
            steps=steps,
            loss_fn=F.cross_entropy,
            on_step=on_step,
        )
    except _Diverged:
        diverged = True
        bench.advance(steps - state["done"])
    return {
        "diverged": diverged,
        "steps_done": state["done"],
        "final_train_loss": json_float(state["loss_ma"]),
        "at_fit": at_fit,
        "final": None if diverged else read(),
        "clock": ticks,
    }


def validation_split(
    data: Mapping[str, Tensor], train_size: int | None, val_size: int
) -> dict[str, Tensor]:
    """The tuning runs' data: the first ``train_size`` training images to train on and
    the LAST ``val_size`` training images as the "test" split (never the test set).

    Raises:
        ValueError: the two would overlap.
    """
    n = data["train_images"].shape[0]
    n_train = n if train_size is None else train_size
    if n_train + val_size > n:
        raise ValueError(
            f"validation_split: {n_train} training + {val_size} validation images overlap "
            f"in a training split of {n}; lower train_size or val_size"
        )
    return {
        "train_images": data["train_images"][:n_train],
        "train_labels": data["train_labels"][:n_train].to(torch.int64),
        "test_images": data["train_images"][n - val_size :],
        "test_labels": data["train_labels"][n - val_size :].to(torch.int64),
    }


def tuning_data(config: Any, data: Mapping[str, Tensor] | None, name: str) -> dict[str, Any]:
    """A tuned experiment's data: ``main``, the measured runs' (``config.subsets``: the
    training subset, the full test set), and ``tune``, the tuning runs' (the same
    training images, the last ``config.val_size`` of the split as their test split).

    Raises:
        ValueError: no data (named ``name``), or the two splits would overlap.
    """
    main = config.subsets(data, name)  # raises without data
    return {"main": main, "tune": validation_split(data, config.train_size, config.val_size)}


@dataclass(frozen=True)
class SweepConfig(PairedConfig):
    """The trainability sweeps' core (``lr-sweep``, ``init``).

    Args:
        seeds, train_size, test_size, min_seeds, threads: as in ``PairedConfig`` (5
            paired seeds, all 60,000 training and 10,000 test images, 1 thread).
        activations: the settings, one MLP per hidden activation.
        hidden: the MLP's hidden sizes (BN before each activation in the BN arm).
        batch, steps, momentum: SGD's (lr decayed linearly to 0 over ``steps``).
        target_acc: the floor of what counts as training (%, full test set): a run
            *trains* when it did not diverge and its final test accuracy is at least
            ``max(target_acc, best - drop)``, ``best`` the seed's best accuracy in that
            arm over the grid.
        drop: how far below the seed's best a run may end and still count as training
            (points): the threshold sits above what the last layer reaches on frozen
            random features (the referee's probe, docs/lab_referee_2.md: 75-82 %).
        window: mini-batch losses in the training-loss moving average.
        margin: the claims' equivalence margin, in decades (log10 units).
        first_seed: the measured seeds are ``first_seed .. first_seed + seeds - 1``
            (100: fresh seeds for the second run of each sweep, whose rules were set
            after the first run's referee report).
    """

    activations: tuple[str, ...] = ("relu", "sigmoid")
    hidden: tuple[int, ...] = (256, 256)
    batch: int = 128
    steps: int = 600
    momentum: float = 0.0
    target_acc: float = 50.0
    drop: float = 3.0
    window: int = 50
    margin: float = 0.25
    first_seed: int = 100

    #: The numeric settings that must be > 0.
    POSITIVE = ("seeds", "batch", "steps", "target_acc", "drop", "window", "margin")

    def claim_spec(self, name: str, metric: str) -> stats.ClaimSpec:
        """The sweeps' claim on ``metric``: BN higher than no BN per activation (every
        activation votes), paired, at the config's margin and minimum seeds."""
        return stats.ClaimSpec(
            name=name,
            metric=metric,
            direction="higher",
            arm="bn",
            reference="none",
            margin=self.margin,
            min_seeds=self.min_seeds,
            settings=tuple(self.activations),
        )

    def check(self, values: Sequence[float], what: str) -> None:
        """Raise ValueError for a bad setting or a swept grid that is not increasing
        positive values."""
        owner = type(self).__name__
        check_positive(owner, self, self.POSITIVE)
        seed_range(owner, self.first_seed, self.seeds)
        bad = [a for a in self.activations if a not in ("relu", "sigmoid", "tanh")]
        if not self.activations or bad:
            raise ValueError(
                f"{owner}: activations must name some of relu, sigmoid, tanh, got "
                f"{self.activations!r}"
            )
        vals = list(values)
        if len(vals) < 2 or any(not v > 0 for v in vals) or vals != sorted(set(vals)):
            raise ValueError(
                f"{owner}: {what} must be at least two increasing positive values, got "
                f"{tuple(values)!r}"
            )


def build_mlp(
    hidden: Sequence[int], norm: str, activation: str, seed: int, factor: float = 1.0
) -> nn.Module:
    """An MLP (``norm`` before each ``activation``) with d2l's Xavier init from ``seed``
    (the same weights whatever the norm), its Linear weights multiplied by ``factor``."""
    with seeded(seed):
        model = create(
            "mlp", norm=norm, hidden=tuple(hidden), activation=activation, norm_position="before"
        )
    init_weights(model, seed)
    if factor != 1.0:
        scale_weights(model, factor)
    return model


def sweep_grid(config: SweepConfig, values: Sequence[float], name: str) -> Grid:
    """(activation, value) x arm x seed; units ``ACT-NAMEvalue-ARM-seedN``."""
    return Grid(
        variants=tuple(ARMS),
        seeds=seed_range(type(config).__name__, config.first_seed, config.seeds),
        settings=tuple((a, float(v)) for a in config.activations for v in values),
        key=lambda c: f"{c.setting[0]}-{name}{c.setting[1]:g}-{c.variant}-seed{c.seed}",
        order=("seed", "setting", "variant"),
    )


def sweep_cell(
    config: SweepConfig, cell: Cell, bench: Bench, *, lr: float, factor: float = 1.0
) -> dict[str, Any]:
    """One sweep run: the arm's MLP at ``lr`` and weight ``factor``; the final test
    accuracy and NLL on ``bench.data``'s test split."""
    data, device = bench.data, bench.device
    activation = cell.setting[0]
    with cpu_threads(config.threads):
        model = build_mlp(config.hidden, ARMS[cell.variant], activation, cell.seed, factor)
        model = model.to(device)
        got = train_run(
            model,
            data,
            lr=lr,
            steps=config.steps,
            batch=config.batch,
            seed=cell.seed,
            bench=bench,
            momentum=config.momentum,
            window=config.window,
            readout=lambda m: evaluate_split(m, data["test_images"], data["test_labels"], device),
        )
    final = got["final"] or {}
    return {
        "lr": lr,
        "factor": factor,
        "diverged": got["diverged"],
        "steps_done": got["steps_done"],
        "final_train_loss": got["final_train_loss"],
        "test_acc": final.get("acc"),
        "test_nll": final.get("nll"),
    }


def trains(result: Mapping[str, Any], target: float) -> bool:
    """A run trains: it did not diverge and reached ``target`` test accuracy (%)."""
    acc = result.get("test_acc")
    return not result["diverged"] and acc is not None and acc >= target


def trainability(
    config: SweepConfig, run: GridRun, values: Sequence[float]
) -> dict[str, dict[str, dict[str, list[Any]]]]:
    """Per activation, arm and seed: the grid values that train, summarised.

    Returns:
        ``{activation: {arm: {metric: [value per seed]}}}`` with ``max_log10`` (log10 of
        the largest value that trains; one grid step below the grid when none does),
        ``width_decades`` (log10 of the largest over the smallest value that trains,
        plus one grid step: the decades the trainable values span; 0 when none does),
        ``n_train`` (grid values that train), ``best_acc`` (the best final test
        accuracy over the grid), ``threshold`` (the accuracy that counts as training),
        ``contiguous`` (the values that train are neighbours on the grid), ``censored_high`` (trains at the top of the grid: the
        largest value is a lower bound), ``censored_low`` (trains nowhere: an upper
        bound), ``width_censored`` (trains at either end: the width is a lower bound)
        and ``trains`` (the values, per seed).
    """
    grid = [float(v) for v in values]
    step = math.log10(grid[1] / grid[0])
    seeds = sorted({c.seed for c in run.cells})
    out: dict[str, dict[str, dict[str, list[Any]]]] = {}
    for activation in config.activations:
        out[activation] = {}
        for arm in ARMS:
            m: dict[str, list[Any]] = {
                k: []
                for k in (
                    "max_log10",
                    "width_decades",
                    "n_train",
                    "best_acc",
                    "censored_high",
                    "censored_low",
                    "width_censored",
                    "contiguous",
                    "threshold",
                    "trains",
                )
            }
            for seed in seeds:
                rows = {
                    float(c.setting[1]): r
                    for c, r in run
                    if c.setting[0] == activation and c.variant == arm and c.seed == seed
                }
                accs = [rows[v]["test_acc"] for v in grid if v in rows]
                accs = [a for a in accs if a is not None and math.isfinite(a)]
                best = max(accs) if accs else None
                bar = max(config.target_acc, (best or 0.0) - config.drop)
                ok = [v for v in grid if v in rows and trains(rows[v], bar)]
                m["threshold"].append(bar)
                m["trains"].append(ok)
                m["n_train"].append(len(ok))
                m["max_log10"].append(math.log10(max(ok)) if ok else math.log10(grid[0]) - step)
                m["width_decades"].append(math.log10(max(ok) / min(ok)) + step if ok else 0.0)
                m["best_acc"].append(best)
                m["censored_high"].append(bool(ok) and max(ok) == grid[-1])
                m["censored_low"].append(not ok)
                m["width_censored"].append(bool(ok) and (max(ok) == grid[-1] or min(ok) == grid[0]))
                m["contiguous"].append(
                    bool(ok) and grid.index(max(ok)) - grid.index(min(ok)) + 1 == len(ok)
                )
            out[activation][arm] = m
    return out


def sweep_verdicts(
    config: SweepConfig,
    per_seed: Mapping[str, Any],
    declared: Sequence[stats.ClaimSpec],
    claims: Sequence[Any],
    **extra: Any,
) -> tuple[list[Any], dict[str, Any]]:
    """A sweep's ``raw`` (``per_seed`` from :func:`trainability`, the ``declared`` specs,
    ``extra``, the rule of what trains, the claims' evidences) and the verdicts of its
    ``claims`` (``kit.ClaimRule``s).

    Returns:
        ``(verdicts, raw)``.
    """
    raw = {
        "per_seed": per_seed,
        "specs": [spec_record(s) for s in declared],
        **extra,
        "target_acc": config.target_acc,
        "drop": config.drop,
        "censoring_rule": CENSORING_RULE,
    }
    return decide(raw, claims), raw


def censored_rule(
    name: str, *, high: str = "censored_high", low: str | None = "censored_low"
) -> Callable[[Mapping[str, Any]], tuple[dict[str, Any], str]]:
    """``stats_rule(name)`` with :data:`CENSORING_RULE`: reads the per-seed flags
    ``high`` (the value is a lower bound) and ``low`` (an upper bound; None: no such
    flag) of the claim's arm and reference from ``raw["per_seed"]``."""
    base = stats_rule(name)

    def rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        evidence, verdict = base(results)
        raw = results["raw"]
        spec = next(s for s in raw["specs"] if s["name"] == name)
        sides = {"high": high, "low": low}
        flags = {
            f"{who}_{side}": sorted(
                f"{setting}/seed#{i}"
                for setting, arms in raw["per_seed"].items()
                for i, c in enumerate(arms[a][key] if key else [])
                if c
            )
            for who, a in (("arm", spec["arm"]), ("reference", spec["reference"]))
            for side, key in sides.items()
        }
        evidence = dict(evidence, censored=flags)
        flip = {
            stats.SUPPORTED: flags["reference_high"] + flags["arm_low"],
            stats.REFUTED: flags["arm_high"] + flags["reference_low"],
        }.get(verdict)
        if flip:
            evidence["censoring"] = (
                f"'{verdict}' withdrawn: censored seeds {', '.join(flip)} could flip it"
            )
            evidence["stats_verdict"] = verdict
            evidence["verdict"] = verdict = stats.INCONCLUSIVE
        return evidence, verdict

    return rule


def censored_text(evidence: Mapping[str, Any]) -> str:
    """A :func:`censored_rule` evidence's one-line text without its leading verdict, with
    the censoring note when it withdrew one."""
    before = evidence.get("stats_verdict", evidence["verdict"])
    text = evidence["text"].removeprefix(f"{before}: ")
    return text + (f"; {evidence['censoring']}" if evidence.get("censoring") else "")


@dataclass(frozen=True)
class SweepFigure:
    """A sweep's figure: the file ``NAME.png``, its x-axis label and title."""

    name: str
    xlabel: str
    title: str


def per_seed_table(
    title: str,
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    columns: Sequence[tuple[str, Callable[[Mapping[str, Sequence[Any]]], Any]]],
) -> Table:
    """One row per (activation, arm) of :func:`trainability`'s ``per_seed``: a column
    per ``(header, cell(metrics))``."""
    return Table(
        title,
        ["activation", "arm", *(h for h, _ in columns)],
        [
            [act, arm, *(cell(m) for _, cell in columns)]
            for act, arms in per_seed.items()
            for arm, m in arms.items()
        ],
    )


def resolution_table(evaluated: Sequence[Mapping[str, Any]], resolution: float, unit: str) -> Table:
    """The claims' differences as read on the grid: each per-seed value is a grid value,
    so a difference is resolved to ``±resolution`` (``unit``) whatever its t interval,
    which is zero-width (and p = 0) when every seed gives the same grid difference."""
    rows = []
    for e in evaluated:
        for row in e["settings"]:
            diff, low, high = row.get("diff"), row.get("ci_low"), row.get("ci_high")
            rows.append(
                [
                    e["claim"],
                    row["setting"] or "-",
                    *stats.interval_cells(row),
                    "yes" if low is not None and low == high else "no",
                    None if diff is None else f"{diff:+.2f} ± {resolution:g} {unit}",
                ]
            )
    return Table(
        f"The differences as read on the grid (resolution ±{resolution:g} {unit}: a seed's "
        "value is a grid value; a zero-width t interval means every seed gave the same "
        "grid difference, not an exact effect)",
        ["claim", "setting", "diff", "95% t CI", "zero-width CI", "as read on the grid"],
        rows,
    )


def sweep_outcome(
    config: SweepConfig,
    ctx: LabContext,
    run: GridRun,
    values: Sequence[float],
    figure: SweepFigure,
    tables: Sequence[Table],
    verdicts: Sequence[Any],
    raw: Mapping[str, Any],
    notes: Sequence[str] = (),
    after_claims: Sequence[Table] = (),
) -> LabOutcome:
    """A sweep's outcome: ``tables``, the claims table (``raw["claims"]``, in decades),
    ``after_claims``, the figure of the final test accuracy against ``values`` and the
    notes, ending with the rule of what trains."""
    name, xlabel, title = figure.name, figure.xlabel, figure.title
    plot_sweep(
        sweep_series(run, values),
        ctx.out_dir / f"{name}.png",
        xlabel=xlabel,
        ylabel="final test accuracy (%)",
        title=title,
        hline=config.target_acc,
        hline_label=f"floor of 'trains': {config.target_acc:g} %",
    )
    caption = (
        f"Final test accuracy against the {xlabel}, per activation and arm: mean over seeds, "
        "band = min..max; a diverged run counts as 10 %; dashed: the floor of what counts "
        "as training (a run trains within the drop of its seed's best)."
    )
    trains_note = (
        f"A run trains when its loss stayed finite and its final test accuracy is within "
        f"{config.drop:g} points of its seed's best in that arm over the grid (and at least "
        f"{config.target_acc:g} %); the per-seed metric is read on the grid, so a difference "
        f"is resolved to about one grid step (±{config.margin:g} decades, the claim's "
        f"margin); {CENSORING_RULE}."
    )
    return LabOutcome(
        tables=[*tables, claims_table(raw["claims"], "decades"), *after_claims],
        verdicts=list(verdicts),
        figures=[Figure(f"{name}.png", caption)],
        raw=dict(raw),
        notes=[*notes, trains_note],
    )


def sweep_table(
    title: str,
    run: GridRun,
    values: Sequence[float],
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    label: str,
) -> Table:
    """Final test accuracy (mean ± sd over seeds; seeds that train / seeds, from
    :func:`trainability`'s ``per_seed``) per (activation, arm) and grid value."""
    rows = []
    for activation in dict.fromkeys(c.setting[0] for c in run.cells):
        for arm in ARMS:
            row: list[Any] = [activation, arm]
            for v in values:
                got = run.select(setting=(activation, float(v)), variant=arm)
                accs = [r["test_acc"] for r in got if r["test_acc"] is not None]
                ok = sum(float(v) in t for t in per_seed[activation][arm]["trains"])
                if accs:
                    mean = sum(accs) / len(accs)
                    sd = (
                        math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
                        if len(accs) > 1
                        else 0.0
                    )
                    row.append(f"{mean:.1f} ± {sd:.1f} ({ok}/{len(got)})")
                else:
                    row.append(f"diverged ({ok}/{len(got)})")
            rows.append(row)
    return Table(title, ["activation", "arm", *(f"{label}={v:g}" for v in values)], rows)


def sweep_tables(
    run: GridRun,
    values: Sequence[float],
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    label: str,
    against: str,
    per_seed_title: str,
    columns: Sequence[tuple[str, Callable[[Mapping[str, Sequence[Any]]], Any]]],
) -> list[Table]:
    """A sweep's two tables: the final test accuracy ``against`` the grid
    (:func:`sweep_table`, columns ``label=value``) and the per-seed summary
    (:func:`per_seed_table`)."""
    return [
        sweep_table(
            "Final test accuracy (%, full test set; mean ± std over seeds, seeds that train) "
            f"against the {against}",
            run,
            values,
            per_seed,
            label,
        ),
        per_seed_table(per_seed_title, per_seed, columns),
    ]


def sweep_series(run: GridRun, values: Sequence[float]) -> dict[str, dict[str, Any]]:
    """``plot_sweep``'s series: final test accuracy against the grid per (activation,
    arm); a diverged run counts as 10 % (chance)."""
    series: dict[str, dict[str, Any]] = {}
    seeds = sorted({c.seed for c in run.cells})
    for activation in dict.fromkeys(c.setting[0] for c in run.cells):
        for arm in ARMS:
            runs = []
            for seed in seeds:
                got = []
                for v in values:
                    rs = run.select(setting=(activation, float(v)), variant=arm, seed=seed)
                    acc = rs[0]["test_acc"] if rs else None
                    got.append(10.0 if rs and rs[0]["diverged"] else acc)
                runs.append(got)
            series[f"{activation}, {'BN' if arm == 'bn' else 'no BN'}"] = {
                "x": list(values),
                "runs": runs,
            }
    return series
