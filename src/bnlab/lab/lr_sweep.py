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

from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, register_lab
from bnlab.lab.kit import apply_rules, fits
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models import create
from bnlab.plots.sweeps import plot_sweep

__all__ = ["LrSweepConfig", "lr_rule", "measure"]

SOURCE = "003_8a52002564f5ba9e.txt"
CLAIM = "BN allows higher learning rates (可以使用更大的学习率)"


@dataclass(frozen=True)
class LrSweepConfig(fits.SweepConfig):
    """Settings of ``lr-sweep`` (defaults: the full run).

    Args:
        seeds, norm, train_size, test_size, epochs, batch_size: see ``FitConfig``.
        train_fraction, min_acc, divergence_margin: see ``SweepConfig`` (a rate trains
            when its mean test accuracy reaches ``train_fraction`` of the variant's best).
        lrs: the learning-rate grid (log spaced).
        archs: networks, from ``ARCHS``: "lenet" (d2l's, sigmoid) and "mlp-relu"
            (784-256-256-10, ReLU, BN before the activation).
    """

    train_size: int = 2000
    test_size: int = 1000
    epochs: int = 2
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    archs: tuple[str, ...] = ("lenet", "mlp-relu")

    def __post_init__(self) -> None:
        unknown = [a for a in self.archs if a not in ARCHS]
        if unknown or not self.archs:
            raise ValueError(
                f"lr-sweep: archs must name some of {', '.join(ARCHS)}, got {self.archs!r}"
            )

    QUICK = fits.SweepConfig.quick_settings(train_size=256, lrs=(0.1, 1.0, 10.0))


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


def grid(config: LrSweepConfig) -> Grid:
    """(network, learning rate) x variant x seed."""
    return Grid(
        variants=tuple(VARIANTS),
        seeds=config.seeds,
        settings=[(arch, lr) for arch in config.archs for lr in config.lrs],
        key=lambda c: f"{c.setting[0]}-{c.variant}-lr{c.setting[1]:g}-seed{c.seed}",
    )


def measure(config: LrSweepConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one (network, rate, variant, seed) with plain SGD (``train_variant``'s result)."""
    (arch, lr), variant = cell.setting, cell.variant
    name, kwargs, _ = ARCHS[arch]
    model = create(name, norm=config.norm if variant == "bn" else "none", **kwargs)
    return config.fit(model, bench, cell.seed, lr=lr)


def summarize(config: LrSweepConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """Per network, a table of test accuracy against the rate; the rates that train; the
    verdict; the figure."""
    # raw["cells"] in the order network, variant, rate, seed (as before the runner);
    # run.select lists a cell's seeds 0..seeds-1 in order.
    cells = [
        fits.sweep_record(got, arch=a, variant=v, group=_group(a, v), lr=lr, seed=seed)
        for a in config.archs
        for v in VARIANTS
        for lr in config.lrs
        for seed, got in enumerate(run.select(setting=(a, lr), variant=v))
    ]
    raw = {
        "cells": cells,
        "lrs": list(config.lrs),
        "archs": list(config.archs),
        **config.rules("the same network and variant"),
    }
    verdicts, evidences = apply_rules({"raw": raw}, [(CLAIM, lr_rule, _measured)])
    per_arch = evidences[CLAIM]["archs"]
    tables = [
        fits.sweep_table(
            f"{ARCHS[arch][2]}: final test accuracy against the learning rate "
            "(mean, std over seeds)",
            cells,
            ("lr", "lr", config.lrs),
            VARIANTS,
            config.seeds,
            arch=arch,
        )
        for arch in config.archs
    ]
    range_rows = []
    for arch in config.archs:
        per = per_arch[arch]
        for variant, label in VARIANTS.items():
            trains = per[f"lrs_that_train_{variant}"]
            range_rows.append(
                [ARCHS[arch][2], label, *fits.span(trains), per[f"best_acc_{variant}"]]
            )
        range_rows[-1].append(per["verdict"])
        range_rows[-2].append("")
    head = ["network", "variant", "lowest", "highest", "count", "best mean acc", "verdict"]
    tables.append(Table("Learning rates that train", head, range_rows))
    series = {
        name: entry
        for arch in config.archs
        for name, entry in fits.sweep_series(
            cells,
            ("lr", config.lrs),
            {v: f"{ARCHS[arch][2]}, {label}" for v, label in VARIANTS.items()},
            config.seeds,
            arch=arch,
        ).items()
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
    caption = (
        "Final test accuracy against the learning rate, with and without BN: "
        "mean over seeds, band = min..max."
    )
    notes = [raw["divergence_rule"], raw["trains_rule"]]
    figures = [Figure("lr_sweep.png", caption)]
    return LabOutcome(tables=tables, verdicts=verdicts, figures=figures, raw=raw, notes=notes)


def _measured(evidence: Mapping[str, Any]) -> str:
    return "; ".join(
        f"{arch}: highest rate that trains {per['max_lr_bn']} with BN, {per['max_lr_none']} "
        f"without ({per['verdict']})"
        for arch, per in evidence["archs"].items()
    )


def lr_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN allows higher learning rates" from lr-sweep's results."""
    raw = results["raw"]
    cells = raw["cells"]
    groups = fits.sweep_groups(raw, "group", "lr")
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
        return evidence, "supported"
    return evidence, "not supported" if all(v == "not higher" for v in verdicts) else "mixed"


SPEC = register_lab(
    grid_lab(
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
        grid=grid,
        measure=measure,
        summarize=summarize,
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
        rule_text=(
            "Per network and variant, a learning rate trains when no seed diverged (NaN/inf loss, "
            "or last-epoch loss above the first batch's by more than the margin), the mean final "
            "test accuracy is at least train_fraction (0.9) of that variant's best mean over the "
            "grid and at least min_acc (0.2, twice chance). Per network: BN's highest rate that "
            "trains above the no-BN one (or no-BN trains at none) -> higher; below it, equal below "
            "the top of the grid, or BN trains at none -> not higher; equal at the top of the grid "
            "-> undecided. supported: higher for every network; not supported: for none; mixed "
            "otherwise (including undecided)."
        ),
        rule=lr_rule,
    )
)
