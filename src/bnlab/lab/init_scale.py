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

from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, register_lab
from bnlab.lab.kit import apply_rules, fits
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models import create
from bnlab.plots.sweeps import plot_sweep
from bnlab.train.fit import init_weights

__all__ = ["InitConfig", "init_rule", "measure", "scale_weights"]

SOURCE = "003_8a52002564f5ba9e.txt"
CLAIM = "BN reduces the sensitivity to the initial weights (对初始化权重的要求降低)"
VARIANTS = {"none": "no BN", "bn": "BN before the activation"}


@dataclass(frozen=True)
class InitConfig(fits.SweepConfig):
    """Settings of ``init`` (defaults: the full run).

    Args:
        seeds, norm, train_size, test_size, epochs, batch_size: see ``FitConfig``.
        train_fraction, min_acc, divergence_margin: see ``SweepConfig`` (a factor
            trains when its mean test accuracy reaches ``train_fraction`` of the
            variant's best).
        factors: multipliers of the Xavier-uniform weights (log grid).
        model: "mlp" (sigmoid hidden layers ``hidden``) or "lenet" (d2l's, sigmoid).
        hidden: the MLP's hidden sizes.
        lr: SGD learning rate (both variants).
    """

    factors: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    model: Literal["mlp", "lenet"] = "mlp"
    hidden: tuple[int, ...] = (256, 256, 256)
    lr: float = 0.5

    QUICK = fits.SweepConfig.quick_settings(factors=(0.01, 1.0, 30.0), hidden=(64, 64))


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


def grid(config: InitConfig) -> Grid:
    """Variant x weight factor x seed."""
    return Grid(
        variants=tuple(VARIANTS),
        seeds=config.seeds,
        settings=config.factors,
        key=lambda c: f"{c.variant}-x{c.setting:g}-seed{c.seed}",
        order=("variant", "setting", "seed"),
    )


def measure(config: InitConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one (variant, factor, seed) from its scaled initial weights."""
    model = _build(config, cell.variant, cell.setting, cell.seed)
    # init="default": fit keeps the scaled initialisation.
    return config.fit(model, bench, cell.seed, lr=config.lr, init="default")


def summarize(config: InitConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """The table of test accuracy against the factor, the factors that train, the
    verdict, the figure."""
    cells = [
        {
            **fits.sweep_record(got, variant=c.variant, factor=c.setting, seed=c.seed),
            "test_acc_epoch1": got["history"][0]["test_acc"] if got["history"] else None,
        }
        for c, got in run
    ]
    reference = "the same variant over the grid"
    raw = {"cells": cells, "factors": list(config.factors), **config.rules(reference)}
    verdicts, evidences = apply_rules({"raw": raw}, [(CLAIM, init_rule, _measured)])
    evidence = evidences[CLAIM]
    model_text = "LeNet" if config.model == "lenet" else f"MLP {config.hidden} sigmoid"
    table = fits.sweep_table(
        f"Final test accuracy against the initial weight scale ({model_text}; mean, std "
        "over seeds)",
        cells,
        ("factor", "weight factor", config.factors),
        VARIANTS,
        config.seeds,
    )
    range_rows = [
        [label, *fits.span(evidence[f"factors_that_train_{v}"]), evidence[f"acc_range_{v}"]]
        for v, label in VARIANTS.items()
    ]
    head = ["variant", "lowest", "highest", "count", "best - worst mean acc"]
    range_table = Table("Weight scales that train", head, range_rows)
    plot_sweep(
        fits.sweep_series(cells, ("factor", config.factors), VARIANTS, config.seeds),
        ctx.out_dir / "init_scale.png",
        xlabel="factor on the Xavier-uniform weights",
        ylabel="final test accuracy",
        title=f"{model_text}, with and without BN",
    )
    caption = (
        "Final test accuracy against the initial weight scale, with and without BN: "
        "mean over seeds, band = min..max."
    )
    return LabOutcome(
        tables=[table, range_table],
        verdicts=verdicts,
        figures=[Figure("init_scale.png", caption)],
        raw=raw,
        notes=[raw["divergence_rule"], raw["trains_rule"]],
    )


def _measured(evidence: Mapping[str, Any]) -> str:
    return (
        f"{evidence['count_bn']} of {evidence['grid_size']} weight scales train "
        f"with BN, {evidence['count_none']} without"
    )


def init_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN reduces the sensitivity to initialization" from init's results."""
    raw = results["raw"]
    groups = fits.sweep_groups(raw, "variant", "factor")
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
        return evidence, "supported"
    # Fewer, or as many while some factor fails for both; as many at every factor: the
    # grid does not separate them.
    return evidence, "not supported" if bn < none or bn < len(grid) else "mixed"


SPEC = register_lab(
    grid_lab(
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
        grid=grid,
        measure=measure,
        summarize=summarize,
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
        rule_text=(
            "For each variant, a weight factor trains when no seed diverged and the mean final "
            "test accuracy is at least train_fraction (0.9 in the full run) of the variant's best "
            "mean over the grid and at least min_acc (0.2, twice chance). supported: more factors "
            "train with BN than without; not supported: fewer, or as many while some factor fails "
            "for both; mixed: both train at every factor of the grid (it does not separate them)."
        ),
        rule=init_rule,
    )
)
