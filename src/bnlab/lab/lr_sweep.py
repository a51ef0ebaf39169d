"""``bnlab lab lr-sweep``: does BN let a network train at higher learning rates?

The seeds say BN "allows a larger learning rate" (可以使用更大的学习率,
``003_8a52002564f5ba9e.txt``; d2l's chapter, ``004_deb69101c4c8736e.txt``, says "more
aggressive learning rates"). Measured here: d2l's LeNet (sigmoid) with and without BN,
plain SGD at learning rates on a log grid from 0.01 to 10, several seeds, on a fixed
subset of Fashion-MNIST. For each rate: the final test accuracy (mean and spread over
seeds) and whether the run diverged (``bnlab.lab._common.DIVERGENCE_RULE``). A rate
*trains* for a variant when no seed diverged and the mean test accuracy is at least a
stated fraction of that variant's best mean over the grid; the claim is decided by the
largest rate that trains.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.3, "Batch
Normalization enables higher learning rates"); Santurkar et al., "How Does Batch
Normalization Help Optimization?", arXiv 1805.11604.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bnlab.lab._common import (
    DIVERGENCE_RULE,
    TRAINS_RULE,
    mean_std,
    pick,
    train_variant,
    trainable_values,
)
from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import (
    Figure,
    LabContext,
    LabOutcome,
    LabSpec,
    Table,
    Verdict,
    register_lab,
)
from bnlab.models import create
from bnlab.plots.sweeps import plot_sweep
from bnlab.train import TrainConfig

__all__ = ["LrSweepConfig", "lr_rule", "run"]

SOURCE = "003_8a52002564f5ba9e.txt"
CLAIM = "BN allows higher learning rates (可以使用更大的学习率)"


@dataclass(frozen=True)
class LrSweepConfig:
    """Settings of ``lr-sweep`` (defaults: the full run).

    Args:
        seeds: training seeds per (variant, learning rate).
        lrs: the learning-rate grid (log spaced).
        norm: the BN variant's norm (``bnlab.models.available_norms()``); "torch" is the
            fastest on the CPU, "bnlab" gives the same numbers more slowly.
        train_size: training images (a fixed random subset of the training split).
        test_size: test images (a fixed random subset of the test split).
        epochs: epochs per run.
        batch_size: SGD batch size.
        train_fraction: a rate trains when its mean test accuracy reaches this fraction
            of the variant's best (and no seed diverged).
        divergence_margin: the last epoch's loss may exceed the first batch's by this
            fraction before the run counts as diverged.
    """

    seeds: int = 3
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    norm: str = "torch"
    train_size: int = 2000
    test_size: int = 1000
    epochs: int = 2
    batch_size: int = 64
    train_fraction: float = 0.9
    divergence_margin: float = 0.01

    @classmethod
    def quick(cls) -> LrSweepConfig:
        return cls(seeds=2, lrs=(0.1, 1.0, 10.0), train_size=256, test_size=256, epochs=1)


VARIANTS = {"none": "LeNet, no BN", "bn": "LeNet + BN"}


def run(config: LrSweepConfig, ctx: LabContext) -> LabOutcome:
    if ctx.data is None:
        raise ValueError("lr-sweep needs Fashion-MNIST in ctx.data")
    ctx.progress.start(len(VARIANTS) * len(config.lrs) * config.seeds, "lr-sweep")
    cells: list[dict[str, Any]] = []
    for variant in VARIANTS:
        for lr in config.lrs:
            for seed in range(config.seeds):

                def compute(variant: str = variant, lr: float = lr, seed: int = seed) -> Any:
                    model = create("lenet", norm=config.norm if variant == "bn" else "none")
                    train = TrainConfig(
                        lr=lr,
                        epochs=config.epochs,
                        batch_size=config.batch_size,
                        seed=seed,
                        device=str(ctx.device),
                    )
                    return train_variant(
                        model,
                        ctx.data,
                        train,
                        train_size=config.train_size,
                        test_size=config.test_size,
                        divergence_margin=config.divergence_margin,
                    )

                got = ctx.unit(f"{variant}-lr{lr:g}-seed{seed}", compute)
                cells.append(
                    {
                        "variant": variant,
                        "lr": lr,
                        "seed": seed,
                        **got["final"],
                        "initial_loss": got["initial_loss"],
                        "diverged": got["diverged"],
                        "nonfinite": got["nonfinite"],
                    }
                )
                ctx.progress.advance()
    raw = {
        "cells": cells,
        "lrs": list(config.lrs),
        "train_fraction": config.train_fraction,
        "divergence_rule": DIVERGENCE_RULE.format(margin=config.divergence_margin),
        "trains_rule": TRAINS_RULE.format(
            fraction=config.train_fraction, reference="the same variant over the grid"
        ),
    }
    evidence, verdict = lr_rule({"raw": raw})

    rows = []
    for lr in config.lrs:
        row: list[Any] = [lr]
        for variant in VARIANTS:
            mean, std = mean_std(pick(cells, "test_acc", variant=variant, lr=lr))
            div = sum(
                1 for c in cells if c["variant"] == variant and c["lr"] == lr and c["diverged"]
            )
            row += [mean, std, f"{div}/{config.seeds}"]
        rows.append(row)
    columns = ["lr"]
    for variant in VARIANTS:
        columns += [f"{variant} test acc", f"{variant} std", f"{variant} diverged"]
    table = Table(
        "Final test accuracy against the learning rate (mean, std over seeds)", columns, rows
    )
    range_rows = []
    for variant, label in VARIANTS.items():
        trains = evidence[f"lrs_that_train_{variant}"]
        range_rows.append(
            [
                label,
                min(trains) if trains else None,
                max(trains) if trains else None,
                len(trains),
                evidence[f"best_acc_{variant}"],
            ]
        )
    range_table = Table(
        "Learning rates that train",
        ["variant", "lowest", "highest", "count", "best mean acc"],
        range_rows,
    )
    series = {
        label: {
            "x": list(config.lrs),
            "runs": [
                [pick(cells, "test_acc", variant=variant, lr=lr, seed=s)[0] for lr in config.lrs]
                for s in range(config.seeds)
            ],
        }
        for variant, label in VARIANTS.items()
    }
    plot_sweep(
        series,
        ctx.out_dir / "lr_sweep.png",
        xlabel="learning rate (SGD)",
        ylabel="final test accuracy",
        title="LeNet (sigmoid) with and without BN",
    )
    holds = {"supported": True, "not supported": False}.get(verdict)
    return LabOutcome(
        tables=[table, range_table],
        verdicts=[Verdict(CLAIM, holds, _measured(evidence, verdict))],
        figures=[
            Figure(
                "lr_sweep.png",
                "Final test accuracy against the learning rate, LeNet with and without BN: "
                "mean over seeds, band = min..max.",
            )
        ],
        raw=raw,
        notes=[raw["divergence_rule"], raw["trains_rule"]],
    )


def _measured(evidence: Mapping[str, Any], verdict: str) -> str:
    return (
        f"{verdict}: highest learning rate that trains {evidence['max_lr_bn']} with BN, "
        f"{evidence['max_lr_none']} without (grid up to {evidence['grid_max']})"
    )


RULE_TEXT = (
    "For each variant, a learning rate trains when no seed diverged (NaN/inf loss, or "
    "last-epoch loss above the first batch's by more than the margin) and the mean final "
    "test accuracy is at least train_fraction (0.9 in the full run) of the variant's best "
    "mean over the grid. supported: the highest rate that trains is higher with BN; "
    "not supported: it is lower, or equal below the top of the grid, or BN trains at no "
    "rate; mixed: both train up to the top of the grid (the grid does not separate them)."
)


def lr_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN allows higher learning rates" from lr-sweep's results."""
    raw = results["raw"]
    ranges = trainable_values(
        raw["cells"],
        group_key="variant",
        grid_key="lr",
        fraction=float(raw["train_fraction"]),
        per_group=True,
    )
    groups = ranges["groups"]
    bn = groups.get("bn", {}).get("trains", [])
    none = groups.get("none", {}).get("trains", [])
    grid_max = max(float(c["lr"]) for c in raw["cells"])
    max_bn = max(bn) if bn else None
    max_none = max(none) if none else None
    evidence = {
        "lrs_that_train_bn": bn,
        "lrs_that_train_none": none,
        "max_lr_bn": max_bn,
        "max_lr_none": max_none,
        "grid_max": grid_max,
        "best_acc_bn": groups.get("bn", {}).get("best"),
        "best_acc_none": groups.get("none", {}).get("best"),
        "train_fraction": raw["train_fraction"],
    }
    if max_bn is None:
        verdict = "not supported"
    elif max_none is None or max_bn > max_none:
        verdict = "supported"
    elif max_bn < max_none:
        verdict = "not supported"
    else:
        verdict = "mixed" if max_bn >= grid_max else "not supported"
    return evidence, verdict


SPEC = register_lab(
    LabSpec(
        name="lr-sweep",
        title="Learning-rate sweep, LeNet with and without BN",
        summary=(
            "Tests 'BN allows higher learning rates': d2l's LeNet (sigmoid) with and without "
            "BN trained with plain SGD at learning rates 0.01..10 (log grid), 3 seeds; final "
            "test accuracy (mean, spread), divergence (NaN/inf loss, or final loss above the "
            "first batch's), and the range of rates that reach 90% of the variant's best. "
            "Full run: 2000 training and 1000 test images, 2 epochs, batch 64."
        ),
        config_type=LrSweepConfig,
        run=run,
        needs_data=True,
        full_time="",
    )
)

register_claim(
    Claim(
        key="bn-allows-higher-lr",
        claim=CLAIM,
        source=SOURCE,
        experiment="lr-sweep",
        rule_text=RULE_TEXT,
        rule=lr_rule,
    )
)
