"""One SGD run of an MLP read at a settled point, and the trainability sweeps built on it.

Shared by the second-edition designs of ``lr-sweep``, ``init`` and ``regularization``
(issue 17):

- :func:`train_run`: plain (or momentum) SGD with the learning rate decayed linearly to
  0 over the run, so that every readout is taken at a settled point (the referee's
  lesson, ``docs/lab_referee.md``); the moving average of the mini-batch losses at
  every step; readouts (``readout(model)``, e.g. test accuracy and NLL) the first time
  that average reaches each of ``fit_targets`` (matched fit) and at the end; a
  non-finite loss stops the run and marks it diverged.
- :class:`SweepConfig`: the trainability sweeps' core (``lr-sweep`` sweeps the learning
  rate, ``init`` the scale of the initial weights): a ReLU and a sigmoid MLP, with and
  without BN (before the activation, the paper's placement), paired seeds.
- :func:`sweep_grid`, :func:`trainability`: the grid (activation x swept value) x arm x
  seed, and per seed the grid values at which the run *trains* (did not diverge and
  reached ``target_acc`` on the full test set), summarised as the largest such value
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
from bnlab.lab.claims import stats_rule
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, seeded
from bnlab.lab.kit.configs import PairedConfig, check_positive
from bnlab.lab.kit.data import batches
from bnlab.lab.kit.paired import claims_table
from bnlab.lab.kit.threads import cpu_threads
from bnlab.lab.kit.train import json_float
from bnlab.lab.runner import Bench, Cell, Grid, GridRun
from bnlab.models import create
from bnlab.plots.sweeps import plot_sweep
from bnlab.train import evaluate, init_weights
from bnlab.train.steps import run_steps

__all__ = [
    "ARMS",
    "CENSORING_RULE",
    "SweepConfig",
    "build_mlp",
    "censored_rule",
    "censored_text",
    "evaluate_split",
    "scale_weights",
    "sweep_grid",
    "sweep_outcome",
    "sweep_series",
    "sweep_table",
    "train_run",
    "trainability",
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
        fit_targets: training losses; the first step whose moving average is at or
            below each gets a readout (matched fit).

    Returns:
        ``{"diverged", "steps_done", "final_train_loss" (moving average), "at_fit":
        {repr(target): {"step", **readout} or None}, "final": readout or None}``,
        JSON-ready.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / steps))
    recent: deque[float] = deque(maxlen=window)
    state = {"loss_ma": math.nan, "done": 0}
    at_fit: dict[str, Any] = {repr(float(t)): None for t in fit_targets}

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
        for target in fit_targets:
            key = repr(float(target))
            if at_fit[key] is None and len(recent) == window and state["loss_ma"] <= target:
                at_fit[key] = {"step": s.done, **read()}

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


@dataclass(frozen=True)
class SweepConfig(PairedConfig):
    """The trainability sweeps' core (``lr-sweep``, ``init``).

    Args:
        seeds, train_size, test_size, min_seeds, threads: as in ``PairedConfig`` (5
            paired seeds, all 60,000 training and 10,000 test images, 1 thread).
        activations: the settings, one MLP per hidden activation.
        hidden: the MLP's hidden sizes (BN before each activation in the BN arm).
        batch, steps, momentum: SGD's (lr decayed linearly to 0 over ``steps``).
        target_acc: a run *trains* when it did not diverge and its final test accuracy
            (%, full test set) is at least this.
        window: mini-batch losses in the training-loss moving average.
        margin: the claims' equivalence margin, in decades (log10 units).
    """

    activations: tuple[str, ...] = ("relu", "sigmoid")
    hidden: tuple[int, ...] = (256, 256)
    batch: int = 128
    steps: int = 600
    momentum: float = 0.0
    target_acc: float = 80.0
    window: int = 50
    margin: float = 0.25

    #: The numeric settings that must be > 0.
    POSITIVE = ("seeds", "batch", "steps", "target_acc", "window", "margin")

    def check(self, values: Sequence[float], what: str) -> None:
        """Raise ValueError for a bad setting or a swept grid that is not increasing
        positive values."""
        owner = type(self).__name__
        check_positive(owner, self, self.POSITIVE)
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
        seeds=config.seeds,
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
        accuracy over the grid), ``censored_high`` (trains at the top of the grid: the
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
                    "trains",
                )
            }
            for seed in seeds:
                rows = {
                    float(c.setting[1]): r
                    for c, r in run
                    if c.setting[0] == activation and c.variant == arm and c.seed == seed
                }
                ok = [v for v in grid if v in rows and trains(rows[v], config.target_acc)]
                accs = [rows[v]["test_acc"] for v in grid if v in rows]
                accs = [a for a in accs if a is not None and math.isfinite(a)]
                m["trains"].append(ok)
                m["n_train"].append(len(ok))
                m["max_log10"].append(math.log10(max(ok)) if ok else math.log10(grid[0]) - step)
                m["width_decades"].append(math.log10(max(ok) / min(ok)) + step if ok else 0.0)
                m["best_acc"].append(max(accs) if accs else None)
                m["censored_high"].append(bool(ok) and max(ok) == grid[-1])
                m["censored_low"].append(not ok)
                m["width_censored"].append(bool(ok) and (max(ok) == grid[-1] or min(ok) == grid[0]))
            out[activation][arm] = m
    return out


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
                f"{setting}/seed{i}"
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


def sweep_outcome(
    config: SweepConfig,
    ctx: LabContext,
    run: GridRun,
    values: Sequence[float],
    *,
    name: str,
    xlabel: str,
    title: str,
    tables: Sequence[Table],
    verdicts: Sequence[Any],
    raw: Mapping[str, Any],
    notes: Sequence[str] = (),
) -> LabOutcome:
    """A sweep's outcome: ``tables``, the claims table (``raw["claims"]``, in decades),
    the figure of the final test accuracy against ``values`` (``NAME.png``) and the
    notes, ending with the rule of what trains."""
    plot_sweep(
        sweep_series(run, values),
        ctx.out_dir / f"{name}.png",
        xlabel=xlabel,
        ylabel="final test accuracy (%)",
        title=title,
        hline=config.target_acc,
        hline_label=f"trains: {config.target_acc:g} %",
    )
    caption = (
        f"Final test accuracy against the {xlabel}, per activation and arm: mean over seeds, "
        "band = min..max; a diverged run counts as 10 %; dashed: the accuracy that counts "
        "as training."
    )
    trains_note = (
        f"A run trains when its loss stayed finite and its final test accuracy is at least "
        f"{config.target_acc:g} %; {CENSORING_RULE}."
    )
    return LabOutcome(
        tables=[*tables, claims_table(raw["claims"], "decades")],
        verdicts=list(verdicts),
        figures=[Figure(f"{name}.png", caption)],
        raw=dict(raw),
        notes=[*notes, trains_note],
    )


def sweep_table(
    title: str, run: GridRun, values: Sequence[float], target: float, label: str
) -> Table:
    """Final test accuracy (mean ± sd over seeds; seeds that train / seeds) per
    (activation, arm) and grid value."""
    rows = []
    for activation in dict.fromkeys(c.setting[0] for c in run.cells):
        for arm in ARMS:
            row: list[Any] = [activation, arm]
            for v in values:
                got = run.select(setting=(activation, float(v)), variant=arm)
                accs = [r["test_acc"] for r in got if r["test_acc"] is not None]
                ok = sum(trains(r, target) for r in got)
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
