"""``bnlab lab init``: does BN make training less sensitive to the initial weight scale?

The seeds list "lower demands on the initial weights" (对初始化权重的要求降低,
``003_8a52002564f5ba9e.txt``) among BN's benefits. Measured here: an MLP with sigmoid
hidden layers (BN before the activation, the book's placement, or no norm) whose Linear
weights are d2l's Xavier-uniform draw multiplied by a factor on a log grid (biases keep
PyTorch's default draw), trained with plain SGD, several seeds. A factor *trains* for a
variant when no seed diverged and the mean final test accuracy is at least a stated
fraction of the variant's best over the grid; the claim is decided by how many factors
train.

Why it could hold: BN's output does not depend on the scale of the weights before it
(``BN(a W x) = BN(W x)`` for ``a > 0``), so only the last layer's scale still matters.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.3);
Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
networks" (AISTATS 2010) for the Xavier scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

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
from bnlab.train.fit import init_weights

__all__ = ["InitConfig", "init_rule", "run", "scale_weights"]

SOURCE = "003_8a52002564f5ba9e.txt"
CLAIM = "BN reduces the sensitivity to the initial weights (对初始化权重的要求降低)"
VARIANTS = {"none": "no BN", "bn": "BN before the activation"}


@dataclass(frozen=True)
class InitConfig:
    """Settings of ``init`` (defaults: the full run).

    Args:
        seeds: training seeds per (variant, factor).
        factors: multipliers of the Xavier-uniform weights (log grid).
        model: "mlp" (sigmoid hidden layers ``hidden``) or "lenet" (d2l's, sigmoid).
        hidden: the MLP's hidden sizes.
        norm: the BN variant's norm name.
        lr: SGD learning rate (both variants).
        train_size, test_size: image subsets.
        epochs, batch_size: training length and batch.
        train_fraction: a factor trains when its mean test accuracy reaches this
            fraction of the variant's best (and ``min_acc``, and no seed diverged).
        min_acc: a factor trains only above this mean test accuracy (0.2: twice chance).
        divergence_margin: see ``bnlab.lab.kit.DIVERGENCE_RULE``.
    """

    seeds: int = 3
    factors: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    model: Literal["mlp", "lenet"] = "mlp"
    hidden: tuple[int, ...] = (256, 256, 256)
    norm: str = "torch"
    lr: float = 0.5
    train_size: int = 5000
    test_size: int = 2000
    epochs: int = 3
    batch_size: int = 64
    train_fraction: float = 0.9
    min_acc: float = 0.2
    divergence_margin: float = 0.01

    @classmethod
    def quick(cls) -> InitConfig:
        return cls(
            seeds=2,
            factors=(0.01, 1.0, 30.0),
            hidden=(64, 64),
            train_size=512,
            test_size=256,
            epochs=1,
        )


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


def _build(config: InitConfig, variant: str, factor: float, seed: int) -> nn.Module:
    norm = config.norm if variant == "bn" else "none"
    if config.model == "lenet":
        model = create("lenet", norm=norm)
    else:
        model = create(
            "mlp", norm=norm, hidden=config.hidden, activation="sigmoid", norm_position="before"
        )
    init_weights(model, seed)
    scale_weights(model, factor)
    return model


def run(config: InitConfig, ctx: LabContext) -> LabOutcome:
    if ctx.data is None:
        raise ValueError("init needs Fashion-MNIST in ctx.data")
    ctx.progress.start(len(VARIANTS) * len(config.factors) * config.seeds, "init")
    cells: list[dict[str, Any]] = []
    for variant in VARIANTS:
        for factor in config.factors:
            for seed in range(config.seeds):

                def compute(
                    variant: str = variant, factor: float = factor, seed: int = seed
                ) -> Any:
                    model = _build(config, variant, factor, seed)
                    train = TrainConfig(
                        lr=config.lr,
                        epochs=config.epochs,
                        batch_size=config.batch_size,
                        seed=seed,
                        device=str(ctx.device),
                        init="default",  # keep the scaled initialisation
                    )
                    return train_variant(
                        model,
                        ctx.data,
                        train,
                        train_size=config.train_size,
                        test_size=config.test_size,
                        divergence_margin=config.divergence_margin,
                    )

                got = ctx.unit(f"{variant}-x{factor:g}-seed{seed}", compute)
                cells.append(
                    {
                        "variant": variant,
                        "factor": factor,
                        "seed": seed,
                        **got["final"],
                        "initial_loss": got["initial_loss"],
                        "diverged": got["diverged"],
                        "nonfinite": got["nonfinite"],
                        "test_acc_epoch1": got["history"][0]["test_acc"]
                        if got["history"]
                        else None,
                    }
                )
                ctx.progress.advance()
    raw = {
        "cells": cells,
        "factors": list(config.factors),
        "train_fraction": config.train_fraction,
        "min_acc": config.min_acc,
        "divergence_rule": DIVERGENCE_RULE.format(margin=config.divergence_margin),
        "trains_rule": TRAINS_RULE.format(
            fraction=config.train_fraction, reference="the same variant over the grid"
        )
        + f", and at least {config.min_acc:g}",
    }
    evidence, verdict = init_rule({"raw": raw})

    rows = []
    for factor in config.factors:
        row: list[Any] = [factor]
        for variant in VARIANTS:
            mean, std = mean_std(pick(cells, "test_acc", variant=variant, factor=factor))
            div = sum(
                1
                for c in cells
                if c["variant"] == variant and c["factor"] == factor and c["diverged"]
            )
            row += [mean, std, f"{div}/{config.seeds}"]
        rows.append(row)
    columns = ["weight factor"]
    for variant in VARIANTS:
        columns += [f"{variant} test acc", f"{variant} std", f"{variant} diverged"]
    model_text = "LeNet" if config.model == "lenet" else f"MLP {config.hidden} sigmoid"
    table = Table(
        f"Final test accuracy against the initial weight scale ({model_text}; mean, std over seeds)",
        columns,
        rows,
    )
    range_rows = []
    for variant, label in VARIANTS.items():
        trains = evidence[f"factors_that_train_{variant}"]
        range_rows.append(
            [
                label,
                min(trains) if trains else None,
                max(trains) if trains else None,
                len(trains),
                evidence[f"acc_range_{variant}"],
            ]
        )
    range_table = Table(
        "Weight scales that train",
        ["variant", "lowest", "highest", "count", "best - worst mean acc"],
        range_rows,
    )
    series = {
        label: {
            "x": list(config.factors),
            "runs": [
                [
                    pick(cells, "test_acc", variant=variant, factor=f, seed=s)[0]
                    for f in config.factors
                ]
                for s in range(config.seeds)
            ],
        }
        for variant, label in VARIANTS.items()
    }
    plot_sweep(
        series,
        ctx.out_dir / "init_scale.png",
        xlabel="factor on the Xavier-uniform weights",
        ylabel="final test accuracy",
        title=f"{model_text}, with and without BN",
    )
    holds = holds_of(verdict)
    return LabOutcome(
        tables=[table, range_table],
        verdicts=[Verdict(CLAIM, holds, _measured(evidence, verdict))],
        figures=[
            Figure(
                "init_scale.png",
                "Final test accuracy against the initial weight scale, with and without BN: "
                "mean over seeds, band = min..max.",
            )
        ],
        raw=raw,
        notes=[raw["divergence_rule"], raw["trains_rule"]],
    )


def _measured(evidence: Mapping[str, Any], verdict: str) -> str:
    return (
        f"{verdict}: {evidence['count_bn']} of {evidence['grid_size']} weight scales train "
        f"with BN, {evidence['count_none']} without"
    )


RULE_TEXT = (
    "For each variant, a weight factor trains when no seed diverged and the mean final test "
    "accuracy is at least train_fraction (0.9 in the full run) of the variant's best mean "
    "over the grid and at least min_acc (0.2, twice chance). supported: more factors train "
    "with BN than without; not supported: fewer, or as many while some factor fails for both; mixed: both train at every factor "
    "of the grid (it does not separate them)."
)


def init_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN reduces the sensitivity to initialization" from init's results."""
    raw = results["raw"]
    ranges = trainable_values(
        raw["cells"],
        group_key="variant",
        grid_key="factor",
        fraction=float(raw["train_fraction"]),
        per_group=True,
        min_value=float(raw.get("min_acc", 0.0)),
    )
    groups = ranges["groups"]
    grid = sorted({float(c["factor"]) for c in raw["cells"]})
    evidence: dict[str, Any] = {"grid_size": len(grid), "train_fraction": raw["train_fraction"]}
    for variant in VARIANTS:
        group = groups.get(variant, {"trains": [], "mean": {}})
        means = [m for m in group["mean"].values() if m is not None]
        evidence[f"factors_that_train_{variant}"] = group["trains"]
        evidence[f"count_{variant}"] = len(group["trains"])
        evidence[f"acc_range_{variant}"] = max(means) - min(means) if means else None
    bn, none = evidence["count_bn"], evidence["count_none"]
    if bn > none:
        verdict = "supported"
    elif bn < none or bn < len(grid):
        verdict = "not supported"
    else:
        verdict = "mixed"
    return evidence, verdict


SPEC = register_lab(
    LabSpec(
        name="init",
        title="Initial weight scale, with and without BN",
        summary=(
            "Tests 'BN reduces the sensitivity to the initial weights': an MLP (784-256-256-"
            "256-10, sigmoid; BN before the activation or none) whose weights are Xavier-"
            "uniform times a factor 0.01..30 (log grid), plain SGD lr 0.5, 3 seeds; final "
            "test accuracy (mean, spread), divergence, and the factors that reach 90% of the "
            "variant's best. Full run: 5000 training and 2000 test images, 3 epochs, batch 64."
        ),
        config_type=InitConfig,
        run=run,
        needs_data=True,
        full_time=(
            "4.4 min wall (92 s of CPU time) with --threads 1 on the shared 2-core machine "
            "under heavy load from other jobs (2026-11-26)"
        ),
    )
)

register_claim(
    Claim(
        key="bn-eases-initialization",
        claim=CLAIM,
        source=SOURCE,
        experiment="init",
        rule_text=RULE_TEXT,
        rule=init_rule,
    )
)
