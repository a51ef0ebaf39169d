"""``bnlab lab batch-size``: how does each norm's accuracy depend on the batch size?

The seeds say BN's statistics "may not be stable at small batch sizes"
(在小批量大小下,批量归一化的统计特性可能不够稳定, ``003_8a52002564f5ba9e.txt``) and point
to other norms for other settings. Measured here, a small-scale version of figure 1 of
the GroupNorm paper: a small ReLU CNN (``bnlab.models.small_cnn.SmallReluCNN``) with no norm, BN, ghost
BN, Batch Renorm, GroupNorm, LayerNorm and InstanceNorm, trained at batch sizes 2..256
for the same number of epochs (so the same examples seen), with the learning rate
scaled linearly with the batch size (``lr = base_lr * B / 256``, Goyal et al., arXiv
1706.02677, the rule the GroupNorm paper uses). BN-family models are evaluated twice:
with their moving averages, and after ``recalibrate_batchnorm`` (population statistics
of the training subset, batches of 256), which separates the small-batch effect on the
running statistics from its effect on training.

Design notes:
    * Ghost BN normalizes virtual batches of ``ghost_virtual_batch`` (default 8, not the
      model registry's 32): for ``B <= ghost_virtual_batch`` it *is* BN, so it cannot
      change anything at the smallest batches by construction; above, it shows the
      effect of 8-sample statistics inside a large batch.
    * Batch Renorm gets the paper's warm-up of ``r_max``/``d_max``, its step counts
      scaled so that ``r_max`` reaches 3 at ``renorm_ramp`` of the run (the warm-up is
      then 1/8 of that), set before every step; its running statistics use momentum 0.1
      (not the layer's 0.01) because the large batches take only a few dozen steps.
    * ``twins=True`` builds BN, GroupNorm, LayerNorm and InstanceNorm from their
      ``torch.nn`` twins (the same maths, tested against bnlab's layers) because they are
      faster on the CPU; ghost BN and Batch Renorm are bnlab's.

Papers: Wu & He, "Group Normalization", arXiv 1803.08494; Ioffe, "Batch
Renormalization", arXiv 1702.03275; Hoffer, Hubara & Soudry, "Train longer, generalize
better", arXiv 1705.08741; Goyal et al., "Accurate, Large Minibatch SGD", arXiv 1706.02677.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bnlab.nn
from bnlab.data.loader import DeviceLoader
from bnlab.lab import kit
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, compare, register_lab
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models.small_cnn import NORMS, SmallReluCNN
from bnlab.plots.batch import plot_vs_batch
from bnlab.train import TrainConfig, evaluate

__all__ = [
    "BN_FAMILY",
    "NORMS",
    "BatchSizeConfig",
    "bn_degrades_rule",
    "gn_stable_rule",
    "grid",
    "measure",
    "renorm_ghost_rule",
    "summarize",
]

SOURCE = "003_8a52002564f5ba9e.txt"
#: Norms with running statistics (evaluated with moving averages and recalibrated).
BN_FAMILY: tuple[str, ...] = ("bnlab", "ghost", "batchrenorm")
LABELS = {
    "none": "no norm",
    "bnlab": "BN",
    "ghost": "ghost BN",
    "batchrenorm": "Batch Renorm",
    "groupnorm": "GroupNorm",
    "layernorm": "LayerNorm",
    "instancenorm": "InstanceNorm",
}
#: Wu & He 2018, ImageNet ResNet-50 top-1 error (%) at batch 32 and batch 2 (figure 1).
GN_PAPER_ERROR = {"BN": (23.6, 34.7), "GN": (24.1, 24.1)}


@dataclass(frozen=True)
class BatchSizeConfig:
    """Settings of ``batch-size`` (defaults: the full run).

    Args:
        seeds: training seeds per (norm, batch size).
        batch_sizes: the batch-size grid.
        norms: the norms (``NORMS``).
        train_size, test_size: fixed random subsets of Fashion-MNIST.
        epochs: epochs at every batch size (the same examples seen).
        base_lr: learning rate at ``lr_reference`` (linear rule ``base_lr * B /
            lr_reference``).
        lr_reference: the batch size of ``base_lr``.
        momentum: SGD momentum.
        ghost_virtual_batch: ghost BN's virtual batch size.
        group_size: channels per GroupNorm group.
        renorm_ramp: fraction of the run at which Batch Renorm's ``r_max`` reaches 3.
        twins: ``torch.nn`` twins for BN/GN/LN/IN (faster).
        small_batch: the small batch of the verdicts.
        reference_batch: the batch the small one is compared with (the GroupNorm paper's 32).
        min_effect: an accuracy difference must also exceed this to count.
        threads: torch CPU threads while a cell trains (restored after): tiny
            convolutions gain nothing from more, and on a shared, loaded CPU two threads
            per process made a batch-2 step 20 times slower than one.
    """

    seeds: int = 3
    batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256)
    norms: tuple[str, ...] = NORMS
    train_size: int = 2048
    test_size: int = 1000
    epochs: int = 1
    base_lr: float = 0.4
    lr_reference: int = 256
    momentum: float = 0.9
    ghost_virtual_batch: int = 8
    group_size: int = 4
    renorm_ramp: float = 0.5
    twins: bool = True
    small_batch: int = 2
    reference_batch: int = 32
    min_effect: float = 0.01
    threads: int = 1

    @classmethod
    def quick(cls) -> BatchSizeConfig:
        return cls(seeds=2, batch_sizes=(2, 8, 32), train_size=64, test_size=128)

    def lr(self, batch: int) -> float:
        """The linear rule: ``base_lr * batch / lr_reference``."""
        return self.base_lr * batch / self.lr_reference


def grid(config: BatchSizeConfig) -> Grid:
    """Norm x batch size x seed (units ``NORM-bB-seedN``, seeds outermost).

    Raises:
        ValueError: an unknown norm, a verdict batch outside the grid, a batch below 2.
    """
    unknown = [n for n in config.norms if n not in NORMS]
    if unknown:
        raise ValueError(f"batch-size: unknown norms {unknown}; choose from {', '.join(NORMS)}")
    for b in (config.small_batch, config.reference_batch):
        if b not in config.batch_sizes:
            raise ValueError(
                f"batch-size: small_batch/reference_batch {b} is not in batch_sizes "
                f"{config.batch_sizes}; add it or set another"
            )
    if min(config.batch_sizes) < 2:
        raise ValueError(
            f"batch-size: batch sizes must be >= 2 (BN cannot train on one), got "
            f"{config.batch_sizes}; batch-of-one covers B=1"
        )
    return Grid(
        variants=config.norms,
        settings=config.batch_sizes,
        seeds=config.seeds,
        key=lambda c: f"{c.variant}-b{c.setting}-seed{c.seed}",
        order=("seed", "variant", "setting"),
    )


def measure(config: BatchSizeConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one (norm, batch size, seed) for ``epochs`` at the linear-rule lr; the test
    accuracy with moving averages and, for the BN family, recalibrated."""
    norm, batch, data, device = cell.variant, cell.setting, bench.data, bench.device
    model = SmallReluCNN(
        norm,
        ghost_virtual_batch=config.ghost_virtual_batch,
        group_size=config.group_size,
        twins=config.twins,
    )
    steps = config.epochs * math.ceil(min(config.train_size, data["train_images"].shape[0]) / batch)
    train = TrainConfig(
        lr=config.lr(batch),
        epochs=config.epochs,
        batch_size=batch,
        seed=cell.seed,
        momentum=config.momentum,
        device=str(device),
    )
    with kit.cpu_threads(config.threads):
        got = kit.train_variant(
            model,
            data,
            train,
            train_size=config.train_size,
            test_size=config.test_size,
            on_step=kit.renorm_warmup(model, steps, ramp=config.renorm_ramp),
        )
        recal = None
        if norm in BN_FAMILY:
            train_x, train_y = kit.take(data, "train", config.train_size)
            test_x, test_y = kit.take(data, "test", config.test_size)
            probe = copy.deepcopy(model)
            bnlab.nn.recalibrate_batchnorm(
                probe, DeviceLoader(train_x, train_y, 256, shuffle=False, device=device)
            )
            test = DeviceLoader(test_x, test_y, 512, shuffle=False, device=device)
            recal = evaluate(probe, test)["acc"]
    return {
        "lr": config.lr(batch),
        "steps": steps,
        "test_acc": got["final"]["test_acc"],
        "test_acc_recal": recal,
        "train_loss": got["final"]["train_loss"],
        "diverged": got["diverged"],
        "wall_time_s": got["wall_time_s"],
    }


def _paper_rows(config: BatchSizeConfig, cells: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The GroupNorm paper's errors at the two verdict batches, then ours per norm."""
    small, ref = config.small_batch, config.reference_batch
    rows: list[list[Any]] = [
        [f"Wu & He 2018, ImageNet ResNet-50, {k}", v[0], v[1], round(v[1] - v[0], 1)]
        for k, v in GN_PAPER_ERROR.items()
    ]
    for n in config.norms:
        e_ref = kit.mean_std([1 - a for a in kit.pick(cells, "test_acc", norm=n, batch_size=ref)])[
            0
        ]
        e_small = kit.mean_std(
            [1 - a for a in kit.pick(cells, "test_acc", norm=n, batch_size=small)]
        )[0]
        rows.append(
            [
                f"ours, Fashion-MNIST subset, SmallReluCNN, {LABELS[n]}",
                None if e_ref is None else round(100 * e_ref, 1),
                None if e_small is None else round(100 * e_small, 1),
                None if e_ref is None or e_small is None else round(100 * (e_small - e_ref), 1),
            ]
        )
    return rows


def summarize(config: BatchSizeConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """Accuracy tables per norm and batch size, the paper beside ours, the figure, verdicts."""
    cells = [{"norm": c.variant, "batch_size": c.setting, "seed": c.seed, **r} for c, r in run]
    raw = {
        "cells": cells,
        "norms": list(config.norms),
        "batch_sizes": list(config.batch_sizes),
        "small_batch": config.small_batch,
        "reference_batch": config.reference_batch,
        "min_effect": config.min_effect,
        "lr_rule": f"lr = {config.base_lr:g} * B / {config.lr_reference} (linear scaling), "
        f"SGD momentum {config.momentum:g}, {config.epochs} epoch(s) at every batch size",
    }
    verdicts, evidences = kit.apply_rules({"raw": raw}, CLAIMS)
    family = [n for n in config.norms if n in BN_FAMILY]

    def by_batch(metric: str, norms: Sequence[str]) -> list[list[Any]]:
        return [
            [LABELS[n]]
            + [
                kit.mean_std_cell(kit.pick(cells, metric, norm=n, batch_size=b))
                for b in config.batch_sizes
            ]
            for n in norms
        ]

    def error_runs(metric: str, norms: Sequence[str]) -> dict[str, Any]:
        def error(v: list[float]) -> float | None:
            return None if not v or math.isnan(v[0]) else 1 - v[0]

        return {
            LABELS[n]: {
                "x": list(config.batch_sizes),
                "runs": [
                    [
                        error(kit.pick(cells, metric, norm=n, batch_size=b, seed=s))
                        for b in config.batch_sizes
                    ]
                    for s in range(config.seeds)
                ],
            }
            for n in norms
        }

    columns = ["norm", *[f"B={b}" for b in config.batch_sizes]]
    small, ref = config.small_batch, config.reference_batch
    steps = [config.epochs * math.ceil(config.train_size / b) for b in config.batch_sizes]
    tables = [
        Table(
            "Test accuracy with moving averages (mean ± std over seeds)",
            columns,
            by_batch("test_acc", config.norms),
        ),
        Table(
            "Test accuracy after recalibrate_batchnorm (BN family; mean ± std over seeds)",
            columns,
            by_batch("test_acc_recal", family),
        ),
        Table(
            "Learning rate and steps per batch size",
            ["batch size", "lr", "steps"],
            [[b, config.lr(b), n] for b, n in zip(config.batch_sizes, steps, strict=True)],
        ),
        Table(
            f"Top-1 error (%) at batch {ref} and batch {small}: the GroupNorm paper beside ours",
            ["setting", f"error B={ref}", f"error B={small}", "increase"],
            _paper_rows(config, cells),
        ),
    ]
    plot_vs_batch(
        {
            "moving averages": error_runs("test_acc", config.norms),
            "BN family recalibrated": error_runs("test_acc_recal", family),
        },
        ctx.out_dir / "batch_size.png",
        ylabel="test error",
        title="Test error against the batch size (same epochs, linear lr scaling)",
    )
    return LabOutcome(
        tables=tables,
        verdicts=verdicts,
        figures=[
            Figure(
                "batch_size.png",
                "Test error against the batch size (log2 axis) per norm: left with moving "
                "averages, right the BN family after recalibration; mean over seeds, band "
                "= ± one standard deviation.",
            )
        ],
        raw={**raw, "evidence": evidences},
        notes=[
            raw["lr_rule"],
            f"ghost BN uses virtual batches of {config.ghost_virtual_batch}: at B <= "
            f"{config.ghost_virtual_batch} it is exactly BN.",
            "Recalibration: population statistics of the training subset in batches of 256 "
            "(bnlab.nn.recalibrate_batchnorm), weights unchanged.",
            "Large batches take few steps at this budget (see the steps table): the right end "
            "of the curves measures too few updates, for every norm alike; the verdicts use "
            f"batch {small} against batch {ref}.",
        ],
    )


CLAIM_BN = "BN degrades at small batch sizes (在小批量大小下,批量归一化的统计特性可能不够稳定)"
CLAIM_GN = "GroupNorm is stable across batch sizes"
CLAIM_RENORM = "Batch Renorm and ghost BN reduce BN's small-batch degradation"

RULE_BN = (
    "BN's per-seed test accuracy at reference_batch (32) minus at small_batch (2), with "
    "moving averages and after recalibration; a drop counts when the Welch difference "
    "exceeds max(min_effect = 1 point, 2 standard errors). supported: the moving-average "
    "accuracy drops; mixed: only the recalibrated one drops; not supported: neither."
)
RULE_GN = (
    "GroupNorm's test accuracy at reference_batch (32) against small_batch (2): supported "
    "when it does not drop by more than max(min_effect = 1 point, 2 standard errors) and "
    "its drop is smaller than BN's by that rule; mixed when it does not drop but is not "
    "better than BN; not supported when it drops."
)
RULE_RENORM = (
    "At small_batch (2), moving-average test accuracy of Batch Renorm and of ghost BN "
    "against BN's: each 'reduces the degradation' when it is higher by more than "
    "max(min_effect = 1 point, 2 standard errors). supported: both; mixed: one; not "
    "supported: neither (ghost BN equals BN for batches within one virtual batch)."
)


def _vals(raw: Mapping[str, Any], metric: str, norm: str, batch: int) -> list[float]:
    return kit.pick(raw["cells"], metric, norm=norm, batch_size=batch)


def _drop(raw: Mapping[str, Any], metric: str, norm: str) -> dict[str, Any]:
    ref = _vals(raw, metric, norm, raw["reference_batch"])
    small = _vals(raw, metric, norm, raw["small_batch"])
    if not any(math.isfinite(v) for v in ref) or not any(math.isfinite(v) for v in small):
        return {"drop": None, "se": None, "direction": "unclear"}
    c = compare(ref, small, min_effect=float(raw["min_effect"]))
    return {"drop": c.diff, "se": c.se, "direction": c.direction}


def bn_degrades_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN degrades at small batch sizes" from batch-size's results."""
    raw = results["raw"]
    moving = _drop(raw, "test_acc", "bnlab")
    recal = _drop(raw, "test_acc_recal", "bnlab")
    none = _drop(raw, "test_acc", "none")
    evidence = {
        "small_batch": raw["small_batch"],
        "reference_batch": raw["reference_batch"],
        "bn_drop": moving,
        "bn_drop_recalibrated": recal,
        "none_drop": none,
    }
    if moving["direction"] == "greater":
        verdict = "supported"
    elif recal["direction"] == "greater":
        verdict = "mixed"
    else:
        verdict = "not supported"
    return evidence, verdict


def gn_stable_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "GroupNorm is stable across batch sizes" from batch-size's results."""
    raw = results["raw"]
    gn = _drop(raw, "test_acc", "groupnorm")
    evidence: dict[str, Any] = {"gn_drop": gn, "bn_drop": _drop(raw, "test_acc", "bnlab")}
    if gn["drop"] is None:
        return evidence, "not supported"
    if gn["direction"] == "greater":
        return evidence, "not supported"

    def per_seed_drop(norm: str) -> list[float]:
        ref = kit.pick(raw["cells"], "test_acc", norm=norm, batch_size=raw["reference_batch"])
        small = kit.pick(raw["cells"], "test_acc", norm=norm, batch_size=raw["small_batch"])
        return [a - b for a, b in zip(ref, small, strict=False)]

    bn_drops = per_seed_drop("bnlab")
    if not any(math.isfinite(v) for v in bn_drops):
        evidence["gn_vs_bn"] = None
        return evidence, "mixed"
    c = compare(bn_drops, per_seed_drop("groupnorm"), min_effect=float(raw["min_effect"]))
    evidence["gn_vs_bn"] = {"bn_drop_minus_gn_drop": c.diff, "se": c.se, "direction": c.direction}
    return evidence, "supported" if c.direction == "greater" else "mixed"


def renorm_ghost_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "Batch Renorm / ghost BN reduce the small-batch degradation"."""
    raw = results["raw"]
    small = raw["small_batch"]
    bn = _vals(raw, "test_acc", "bnlab", small)
    evidence: dict[str, Any] = {"small_batch": small}
    reduces = 0
    for norm in ("batchrenorm", "ghost"):
        other = _vals(raw, "test_acc", norm, small)
        if not any(math.isfinite(v) for v in other) or not any(math.isfinite(v) for v in bn):
            evidence[norm] = None
            continue
        c = compare(other, bn, min_effect=float(raw["min_effect"]))
        evidence[norm] = {"minus_bn": c.diff, "se": c.se, "direction": c.direction}
        reduces += c.direction == "greater"
    return evidence, kit.hits_verdict(reduces, 2)


def _measured_bn(e: Mapping[str, Any]) -> str:
    return (
        f"BN accuracy drop from batch {e['reference_batch']} to {e['small_batch']}: "
        f"{kit.difference_text(e['bn_drop'], 'drop')} with moving averages, "
        f"{kit.difference_text(e['bn_drop_recalibrated'], 'drop')} recalibrated; no norm: {kit.difference_text(e['none_drop'], 'drop')}"
    )


def _measured_gn(e: Mapping[str, Any]) -> str:
    return f"GroupNorm drop {kit.difference_text(e['gn_drop'], 'drop')}, BN drop {kit.difference_text(e['bn_drop'], 'drop')}"


def _measured_renorm(e: Mapping[str, Any]) -> str:
    parts = []
    for norm, label in (("batchrenorm", "Batch Renorm"), ("ghost", "ghost BN")):
        d = e.get(norm)
        if d is None:
            parts.append(f"{label}: n/a")
        else:
            difference = kit.difference_text(d, "minus_bn")
            parts.append(f"{label} minus BN at batch {e['small_batch']}: {difference}")
    return "; ".join(parts)


SPEC = register_lab(
    grid_lab(
        name="batch-size",
        title="Accuracy against the batch size per norm",
        summary=(
            "Tests 'BN degrades at small batch sizes', 'GroupNorm is stable across batch "
            "sizes' and 'Batch Renorm / ghost BN reduce the degradation': a small ReLU CNN "
            "(two strided convs, each followed by the norm) with no norm, BN, ghost BN "
            "(virtual batch 8), Batch Renorm (scaled warm-up), GroupNorm, LayerNorm and "
            "InstanceNorm, trained at batch sizes 2..256 for the same epochs with lr = 0.4 "
            "* B / 256 (linear scaling), SGD momentum 0.9; BN family evaluated with moving "
            "averages and recalibrated. Full run: 2048 training and 1000 test images, 1 "
            "epoch, 3 seeds; the GroupNorm paper's ImageNet numbers beside ours."
        ),
        config_type=BatchSizeConfig,
        grid=grid,
        measure=measure,
        summarize=summarize,
        full_time="12 min (735 s) on a shared, loaded 2-core CPU",
    )
)

CLAIMS = kit.register_claims(
    "batch-size",
    kit.ClaimRule(
        "bn-degrades-small-batch", CLAIM_BN, SOURCE, RULE_BN, bn_degrades_rule, _measured_bn
    ),
    kit.ClaimRule(
        "groupnorm-stable-batch-size", CLAIM_GN, SOURCE, RULE_GN, gn_stable_rule, _measured_gn
    ),
    kit.ClaimRule(
        "renorm-ghost-reduce-small-batch",
        CLAIM_RENORM,
        SOURCE,
        RULE_RENORM,
        renorm_ghost_rule,
        _measured_renorm,
    ),
)
