"""``bnlab lab lr-sweep``: does BN let a network train at higher learning rates?

The seeds say BN "allows a larger learning rate" (可以使用更大的学习率,
``003_8a52002564f5ba9e.txt``; d2l's chapter, ``004_deb69101c4c8736e.txt``, says "more
aggressive learning rates"). Measured here: d2l's LeNet (sigmoid) and a ReLU MLP, with and
without BN, plain SGD at learning rates on a log grid from 0.01 to 10, several seeds, on a fixed
subset of Fashion-MNIST. For each rate: the final test accuracy (mean and spread over
seeds) and whether the run diverged (``bnlab.lab.kit.DIVERGENCE_RULE``). A rate
*trains* for a variant when no seed diverged and the mean test accuracy is at least a
stated fraction of that variant's best mean over the grid and above twice chance; the
claim is decided by the largest rate that trains, per network. (On the small budget of
the full run the sigmoid LeNet without BN does not leave its initial plateau at any
rate, which is why the ReLU MLP is there too.)

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.3, "Batch
Normalization enables higher learning rates"); Santurkar et al., "How Does Batch
Normalization Help Optimization?", arXiv 1805.11604.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bnlab.lab.claims import Claim, holds_of, register_claim
from bnlab.lab.experiment import (
    Figure,
    LabContext,
    LabOutcome,
    LabSpec,
    Table,
    Verdict,
    register_lab,
)
from bnlab.lab.kit import (
    DIVERGENCE_RULE,
    TRAINS_RULE,
    mean_std,
    pick,
    train_variant,
    trainable_values,
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
        seeds: training seeds per (network, variant, learning rate).
        lrs: the learning-rate grid (log spaced).
        archs: networks, from ``ARCHS``: "lenet" (d2l's, sigmoid) and "mlp-relu"
            (784-256-256-10, ReLU, BN before the activation).
        norm: the BN variant's norm (``bnlab.models.available_norms()``); "torch" is the
            fastest on the CPU, "bnlab" gives the same numbers more slowly.
        train_size: training images (a fixed random subset of the training split).
        test_size: test images (a fixed random subset of the test split).
        epochs: epochs per run.
        batch_size: SGD batch size.
        train_fraction: a rate trains when its mean test accuracy reaches this fraction
            of the variant's best (and ``min_acc``, and no seed diverged).
        min_acc: a rate trains only above this mean test accuracy (0.2: twice chance).
        divergence_margin: the last epoch's loss may exceed the first batch's by this
            fraction before the run counts as diverged.
    """

    seeds: int = 3
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    archs: tuple[str, ...] = ("lenet", "mlp-relu")
    norm: str = "torch"
    train_size: int = 2000
    test_size: int = 1000
    epochs: int = 2
    batch_size: int = 64
    train_fraction: float = 0.9
    min_acc: float = 0.2
    divergence_margin: float = 0.01

    def __post_init__(self) -> None:
        unknown = [a for a in self.archs if a not in ARCHS]
        if unknown or not self.archs:
            raise ValueError(
                f"lr-sweep: archs must name some of {', '.join(ARCHS)}, got {self.archs!r}"
            )

    @classmethod
    def quick(cls) -> LrSweepConfig:
        return cls(seeds=2, lrs=(0.1, 1.0, 10.0), train_size=256, test_size=256, epochs=1)


#: Networks: model name, keyword arguments and a label.
ARCHS: dict[str, tuple[str, dict[str, Any], str]] = {
    "lenet": ("lenet", {}, "LeNet (sigmoid)"),
    "mlp-relu": (
        "mlp",
        {"hidden": (256, 256), "activation": "relu", "norm_position": "before"},
        "MLP 2x256 (ReLU)",
    ),
}
VARIANTS = {"none": "no BN", "bn": "BN"}


def _group(arch: str, variant: str) -> str:
    return f"{arch}/{variant}"


def run(config: LrSweepConfig, ctx: LabContext) -> LabOutcome:
    if ctx.data is None:
        raise ValueError("lr-sweep needs Fashion-MNIST in ctx.data")
    total = len(config.archs) * len(VARIANTS) * len(config.lrs) * config.seeds
    ctx.progress.start(total, "lr-sweep")
    cells: list[dict[str, Any]] = []
    for arch in config.archs:
        name, kwargs, _ = ARCHS[arch]
        for variant in VARIANTS:
            for lr in config.lrs:
                for seed in range(config.seeds):

                    def compute(
                        name: str = name,
                        kwargs: dict[str, Any] = kwargs,
                        variant: str = variant,
                        lr: float = lr,
                        seed: int = seed,
                    ) -> Any:
                        norm = config.norm if variant == "bn" else "none"
                        model = create(name, norm=norm, **kwargs)
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

                    got = ctx.unit(f"{arch}-{variant}-lr{lr:g}-seed{seed}", compute)
                    cells.append(
                        {
                            "arch": arch,
                            "variant": variant,
                            "group": _group(arch, variant),
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
        "archs": list(config.archs),
        "train_fraction": config.train_fraction,
        "min_acc": config.min_acc,
        "divergence_rule": DIVERGENCE_RULE.format(margin=config.divergence_margin),
        "trains_rule": TRAINS_RULE.format(
            fraction=config.train_fraction, reference="the same network and variant"
        )
        + f", and at least {config.min_acc:g}",
    }
    evidence, verdict = lr_rule({"raw": raw})

    tables = []
    for arch in config.archs:
        rows = []
        for lr in config.lrs:
            row: list[Any] = [lr]
            for variant in VARIANTS:
                where = {"arch": arch, "variant": variant, "lr": lr}
                mean, std = mean_std(pick(cells, "test_acc", **where))
                div = sum(1 for v in pick(cells, "diverged", **where) if v)
                row += [mean, std, f"{div}/{config.seeds}"]
            rows.append(row)
        columns = ["lr"]
        for variant in VARIANTS:
            columns += [f"{variant} test acc", f"{variant} std", f"{variant} diverged"]
        tables.append(
            Table(
                f"{ARCHS[arch][2]}: final test accuracy against the learning rate "
                "(mean, std over seeds)",
                columns,
                rows,
            )
        )
    range_rows = []
    for arch in config.archs:
        per = evidence["archs"][arch]
        for variant, label in VARIANTS.items():
            trains = per[f"lrs_that_train_{variant}"]
            range_rows.append(
                [
                    ARCHS[arch][2],
                    label,
                    min(trains) if trains else None,
                    max(trains) if trains else None,
                    len(trains),
                    per[f"best_acc_{variant}"],
                ]
            )
        range_rows[-1].append(per["verdict"])
        range_rows[-2].append("")
    tables.append(
        Table(
            "Learning rates that train",
            ["network", "variant", "lowest", "highest", "count", "best mean acc", "verdict"],
            range_rows,
        )
    )
    series = {
        f"{ARCHS[arch][2]}, {label}": {
            "x": list(config.lrs),
            "runs": [
                [
                    pick(cells, "test_acc", arch=arch, variant=variant, lr=lr, seed=s)[0]
                    for lr in config.lrs
                ]
                for s in range(config.seeds)
            ],
        }
        for arch in config.archs
        for variant, label in VARIANTS.items()
    }
    plot_sweep(
        series,
        ctx.out_dir / "lr_sweep.png",
        xlabel="learning rate (SGD)",
        ylabel="final test accuracy",
        title="Learning-rate sweep with and without BN",
        hline=config.min_acc,
        hline_label=f"min_acc {config.min_acc:g}",
    )
    holds = holds_of(verdict)
    return LabOutcome(
        tables=tables,
        verdicts=[Verdict(CLAIM, holds, _measured(evidence, verdict))],
        figures=[
            Figure(
                "lr_sweep.png",
                "Final test accuracy against the learning rate, with and without BN: "
                "mean over seeds, band = min..max.",
            )
        ],
        raw=raw,
        notes=[raw["divergence_rule"], raw["trains_rule"]],
    )


def _measured(evidence: Mapping[str, Any], verdict: str) -> str:
    parts = [
        f"{arch}: highest rate that trains {per['max_lr_bn']} with BN, {per['max_lr_none']} "
        f"without ({per['verdict']})"
        for arch, per in evidence["archs"].items()
    ]
    return f"{verdict}: " + "; ".join(parts)


RULE_TEXT = (
    "Per network and variant, a learning rate trains when no seed diverged (NaN/inf loss, "
    "or last-epoch loss above the first batch's by more than the margin), the mean final "
    "test accuracy is at least train_fraction (0.9) of that variant's best mean over the "
    "grid and at least min_acc (0.2, twice chance). Per network: BN's highest rate that "
    "trains above the no-BN one (or no-BN trains at none) -> higher; below it, equal below "
    "the top of the grid, or BN trains at none -> not higher; equal at the top of the grid "
    "-> undecided. supported: higher for every network; not supported: for none; mixed "
    "otherwise (including undecided)."
)


def lr_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN allows higher learning rates" from lr-sweep's results."""
    raw = results["raw"]
    cells = raw["cells"]
    ranges = trainable_values(
        cells,
        group_key="group",
        grid_key="lr",
        fraction=float(raw["train_fraction"]),
        per_group=True,
        min_value=float(raw.get("min_acc", 0.0)),
    )
    groups = ranges["groups"]
    grid_max = max(float(c["lr"]) for c in cells)
    per_arch: dict[str, Any] = {}
    for arch in dict.fromkeys(c["arch"] for c in cells):
        bn_group = groups.get(_group(arch, "bn"), {})
        none_group = groups.get(_group(arch, "none"), {})
        bn, none = bn_group.get("trains", []), none_group.get("trains", [])
        max_bn = max(bn) if bn else None
        max_none = max(none) if none else None
        if max_bn is None:
            arch_verdict = "not higher"
        elif max_none is None or max_bn > max_none:
            arch_verdict = "higher"
        elif max_bn < max_none:
            arch_verdict = "not higher"
        else:
            arch_verdict = "undecided" if max_bn >= grid_max else "not higher"
        per_arch[arch] = {
            "lrs_that_train_bn": bn,
            "lrs_that_train_none": none,
            "max_lr_bn": max_bn,
            "max_lr_none": max_none,
            "best_acc_bn": bn_group.get("best"),
            "best_acc_none": none_group.get("best"),
            "verdict": arch_verdict,
        }
    verdicts = [p["verdict"] for p in per_arch.values()]
    evidence = {
        "archs": per_arch,
        "grid_max": grid_max,
        "train_fraction": raw["train_fraction"],
        "min_acc": raw.get("min_acc", 0.0),
    }
    if all(v == "higher" for v in verdicts):
        verdict = "supported"
    elif all(v == "not higher" for v in verdicts):
        verdict = "not supported"
    else:
        verdict = "mixed"
    return evidence, verdict


SPEC = register_lab(
    LabSpec(
        name="lr-sweep",
        title="Learning-rate sweep, LeNet with and without BN",
        summary=(
            "Tests 'BN allows higher learning rates': d2l's LeNet (sigmoid) and a 2x256 ReLU "
            "MLP, with and without BN, trained with plain SGD at learning rates 0.01..10 (log "
            "grid), 3 seeds; final test accuracy (mean, spread), divergence (NaN/inf loss, or "
            "final loss above the first batch's), and the range of rates that reach 90% of "
            "the variant's best and twice chance. Full run: 2000 training and 1000 test "
            "images, 2 epochs, batch 64 (the sigmoid LeNet without BN stays at chance in this "
            "budget at every rate)."
        ),
        config_type=LrSweepConfig,
        run=run,
        needs_data=True,
        full_time=(
            "3.5 min wall (65 s of CPU time) with --threads 1 on the shared 2-core machine "
            "under heavy load from other jobs (2026-11-26)"
        ),
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
