"""``bnlab lab regularization``: does BN regularize (shrink the train/test gap)?

The seeds list "better generalization, less overfitting" (改善模型的泛化能力,减少过拟合现象,
``003_8a52002564f5ba9e.txt``); d2l's chapter (``004_deb69101c4c8736e.txt``) explains it
as noise injection: each example is normalized with the statistics of a random
minibatch. Measured here: an MLP (ReLU, BN before the activation) trained long on a
small training subset so that it overfits, in four variants: no BN, BN, dropout (after
every hidden layer) and BN + dropout. After every epoch the model is evaluated in eval
mode on its own training subset and on the test subset; the *gap* is train accuracy
minus test accuracy (and test loss minus train loss), averaged over the last
``average_last`` epochs: the eval-mode accuracy of a BN network's last iterate can drop
by 0.1-0.3 in one epoch when its moving averages trail fast-moving weights (seen in the
first full run, which read the last epoch only), and one such epoch should not decide.
Several seeds, Welch comparisons with the 2-standard-error rule.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.4, "Batch
Normalization regularizes the model"); Srivastava et al., "Dropout" (JMLR 2014).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, compare, register_lab
from bnlab.lab.kit import apply_rules, fits, pick
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models import create
from bnlab.plots.sweeps import plot_grouped_bars, plot_metric_curves

__all__ = ["RegularizationConfig", "measure", "regularization_rule", "with_dropout"]

SOURCE = "003_8a52002564f5ba9e.txt"
CLAIM = "BN regularizes: it reduces overfitting, the train/test gap (减少过拟合现象)"
VARIANTS = {"none": "no BN", "bn": "BN", "dropout": "dropout", "bn+dropout": "BN + dropout"}


@dataclass(frozen=True)
class RegularizationConfig(fits.FitConfig):
    """Settings of ``regularization`` (defaults: the full run).

    Args:
        seeds, norm, batch_size: see ``FitConfig``.
        train_size: the small training subset to overfit.
        test_size: test images.
        epochs: long enough to overfit.
        hidden: the MLP's hidden sizes (ReLU).
        dropout: dropout probability after every hidden layer (dropout variants).
        lr: SGD learning rate.
        average_last: the numbers are means over the last this many epochs (each
            evaluated in eval mode): the last iterate's eval-mode accuracy of a BN network
            can drop by 0.1-0.3 in a single epoch (moving averages that trail the weights).
    """

    train_size: int = 2000
    epochs: int = 30
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.5
    lr: float = 0.1
    average_last: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.average_last, int) or self.average_last < 1:
            raise ValueError(
                f"regularization: average_last must be an int >= 1, got {self.average_last!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"regularization: dropout must be in [0, 1), got {self.dropout!r}")

    QUICK = fits.FitConfig.quick_settings(train_size=256, epochs=3, hidden=(64, 64), average_last=2)


def with_dropout(mlp: nn.Sequential, p: float) -> nn.Sequential:
    """``mlp`` (a ``bnlab.models.MLP``) with ``nn.Dropout(p)`` after every hidden layer.

    The dropout goes right before each Linear layer but the first, i.e. after the hidden
    layer's activation and norm, the usual order (BN, then dropout).
    """
    layers: list[tuple[str, nn.Module]] = []
    count = 0
    for name, module in mlp.named_children():
        if isinstance(module, nn.Linear) and name != "fc1":
            count += 1
            layers.append((f"drop{count}", nn.Dropout(p)))
        layers.append((name, module))
    return nn.Sequential(OrderedDict(layers))


def build_model(config: RegularizationConfig, variant: str) -> nn.Module:
    """The MLP of ``variant`` (a key of ``VARIANTS``).

    Raises:
        ValueError: unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    mlp = create(
        "mlp",
        norm=config.norm if variant.startswith("bn") else "none",
        hidden=config.hidden,
        activation="relu",
        norm_position="before",
    )
    return with_dropout(mlp, config.dropout) if variant.endswith("dropout") else mlp


def grid(config: RegularizationConfig) -> Grid:
    """Variant x seed (unit keys ``VARIANT-seedN``)."""
    return Grid(variants=tuple(VARIANTS), seeds=config.seeds)


def measure(config: RegularizationConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one variant to overfit, evaluating the training subset in eval mode after
    every epoch."""
    model = build_model(config, cell.variant)
    return config.fit(
        model, bench, cell.seed, lr=config.lr, eval_train=True, eval_train_each_epoch=True
    )


def _mean(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over ``records`` (None if a record lacks a value, or none)."""
    values = [r.get(key) for r in records]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _record(config: RegularizationConfig, cell: Cell, got: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's numbers: eval-mode accuracies, losses and gaps averaged over the last
    ``average_last`` epochs, and the last epoch's."""
    tail, final = got["history"][-config.average_last :], got["final"]
    train_acc, test_acc = _mean(tail, "train_eval_acc"), _mean(tail, "test_acc")
    return {
        "variant": cell.variant,
        "seed": cell.seed,
        "train_eval_acc": train_acc,
        "test_acc": test_acc,
        "gap_acc": _minus(train_acc, test_acc),
        "gap_loss": _minus(_mean(tail, "test_loss"), _mean(tail, "train_eval_loss")),
        "train_eval_acc_last": final.get("train_eval_acc"),
        "test_acc_last": final["test_acc"],
        "train_loss": final["train_loss"],
        "diverged": got["diverged"],
    }


_CURVES = {
    "train accuracy (eval mode)": lambda r: r.get("train_eval_acc"),
    "test accuracy": lambda r: r["test_acc"],
    "gap (train - test accuracy)": lambda r: _minus(r.get("train_eval_acc"), r["test_acc"]),
}


def summarize(config: RegularizationConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """The table per variant, the pairwise differences, the verdict, two figures."""
    cells = [_record(config, c, got) for c, got in run]
    curves: dict[str, dict[str, list[list[float | None]]]] = {
        name: {
            label: [[value(r) for r in got["history"]] for got in run.select(variant=v)]
            for v, label in VARIANTS.items()
        }
        for name, value in _CURVES.items()
    }
    raw = {"cells": cells, "curves": curves, "average_last": config.average_last}
    verdicts, _ = apply_rules({"raw": raw}, [(CLAIM, regularization_rule, _measured)])
    metrics = ("train_eval_acc", "test_acc", "gap_acc", "gap_loss")
    rows = [[label, *fits.mean_std_row(cells, metrics, variant=v)] for v, label in VARIANTS.items()]
    table = Table(
        f"Overfitting {config.train_size} training images for {config.epochs} epochs "
        f"(eval mode, mean of the last {config.average_last} epochs; mean, std over seeds)",
        ["variant", "train acc", "std", "test acc", "std", "gap (acc)", "std", "gap (loss)", "std"],
        rows,
    )
    cmp_rows = []
    for a, b in (("bn", "none"), ("dropout", "none"), ("bn+dropout", "none"), ("bn", "dropout")):
        gap = compare(pick(cells, "gap_acc", variant=a), pick(cells, "gap_acc", variant=b))
        acc = compare(pick(cells, "test_acc", variant=a), pick(cells, "test_acc", variant=b))
        pair = f"{VARIANTS[a]} - {VARIANTS[b]}"
        cmp_rows.append([pair, gap.diff, gap.se, gap.direction, acc.diff, acc.se, acc.direction])
    cmp_table = Table(
        "Differences (Welch; counts beyond 2 standard errors)",
        ["pair", "gap diff", "se", "gap", "test acc diff", "se", "test acc"],
        cmp_rows,
    )
    bars = {
        name: {VARIANTS[v]: pick(cells, metric, variant=v) for v in VARIANTS}
        for name, metric in _BARS
    }
    out = ctx.out_dir
    plot_grouped_bars(bars, out / "regularization.png", ylabel="accuracy", title="Train/test gap")
    plot_metric_curves(
        curves, out / "regularization_curves.png", title="Overfitting a small subset"
    )
    return LabOutcome(
        tables=[table, cmp_table],
        verdicts=verdicts,
        figures=[Figure(file, caption) for file, caption in _FIGURES],
        raw=raw,
        notes=[
            "gap = accuracy on the training subset minus on the test subset, both in eval "
            f"mode, averaged over the last {config.average_last} epochs; dropout sits after "
            "every hidden layer (after BN)."
        ],
    )


_BARS = (("train acc", "train_eval_acc"), ("test acc", "test_acc"), ("gap", "gap_acc"))
_FIGURES = (
    (
        "regularization.png",
        "Train accuracy, test accuracy and their gap per variant (eval mode): mean, "
        "whisker = std over seeds.",
    ),
    (
        "regularization_curves.png",
        "Train accuracy, test accuracy (both in eval mode) and their gap per epoch: "
        "mean over seeds, band = min..max.",
    ),
)


def _measured(evidence: Mapping[str, Any]) -> str:
    return (
        f"gap with BN minus without {evidence['gap_diff']:+.4f} (se "
        f"{_r(evidence['gap_se'])}, {evidence['gap_direction']}); test accuracy "
        f"{evidence['test_acc_diff']:+.4f} (se {_r(evidence['test_acc_se'])}, "
        f"{evidence['test_acc_direction']})"
    )


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def regularization_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN regularizes (reduces the train/test gap)"."""
    cells = results["raw"]["cells"]
    gap = compare(pick(cells, "gap_acc", variant="bn"), pick(cells, "gap_acc", variant="none"))
    acc = compare(pick(cells, "test_acc", variant="bn"), pick(cells, "test_acc", variant="none"))
    evidence = {
        "gap_diff": gap.diff,
        "gap_se": gap.se,
        "gap_direction": {"less": "smaller", "greater": "larger"}.get(gap.direction, "unclear"),
        "test_acc_diff": acc.diff,
        "test_acc_se": acc.se,
        "test_acc_direction": {"less": "lower", "greater": "higher"}.get(acc.direction, "unclear"),
    }
    if gap.direction == "less":
        verdict = "mixed" if acc.direction == "less" else "supported"
    else:
        verdict = "mixed" if acc.direction == "greater" else "not supported"
    return evidence, verdict


SPEC = register_lab(
    grid_lab(
        name="regularization",
        title="Train/test gap with BN, dropout and both",
        summary=(
            "Tests 'BN regularizes (reduces overfitting)': an MLP 784-256-256-10 (ReLU) "
            "trained 30 epochs on 2000 training images to overfit, without BN, with BN, with "
            "dropout 0.5 and with BN + dropout, plain SGD lr 0.1, 3 seeds; train accuracy "
            "and test accuracy (2000 images), both in eval mode and averaged over the last 5 "
            "epochs, and their gap, compared with the 2-standard-error rule."
        ),
        config_type=RegularizationConfig,
        grid=grid,
        measure=measure,
        summarize=summarize,
        full_time=(
            "4.2 min wall (76 s of CPU time) with --threads 1 on the shared 2-core machine "
            "under heavy load from other jobs (2026-11-26)"
        ),
    )
)

register_claim(
    Claim(
        key="bn-regularizes",
        claim=CLAIM,
        source=SOURCE,
        experiment="regularization",
        rule_text=(
            "gap = train accuracy - test accuracy (eval mode, mean over the last average_last = 5 "
            "epochs of training a small subset to overfit). With BN vs without, over seeds (Welch; "
            "a difference counts beyond 2 standard errors); test accuracy averaged the same way. "
            "supported: the gap is smaller with BN and test accuracy is not lower; mixed: the gap "
            "is smaller but test accuracy lower, or the gap is not smaller but test accuracy "
            "higher; not supported: otherwise."
        ),
        rule=regularization_rule,
    )
)
