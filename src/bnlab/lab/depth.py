"""``bnlab lab depth``: where deep networks stop training without BN, and where skips matter.

The seeds say that BN, together with residual blocks, lets practitioners routinely
train networks of more than 100 layers (d2l's chapter, ``004_deb69101c4c8736e.txt``:
批量归一化使从业者可以例行地训练超过 100 层的网络), and that skip connections let the
gradient pass straight through deep networks (``000_3d8114077ba70cad.txt``: 残差网络引入了
"跳跃连接" ... 解决了深度网络中的梯度消失问题). Measured here: the plain CNN of
``bnlab.models.plain`` (He et al.'s CIFAR layout without shortcuts) and the CIFAR ResNet
of ``bnlab.models.resnet.cifar_resnet`` at the same depths (``6n + 2`` weight layers),
each with and without BN, all trained with the same budget: the same fixed subset of
Fashion-MNIST seen once (``steps`` SGD steps of ``batch_size`` images), SGD with
momentum 0.9 and one fixed learning rate for every model (0.05: He et al.'s 0.1 at
batch 128 scaled linearly to batch 64; no per-model tuning), the models' own
Kaiming-normal initialisation (He et al.), inputs standardized with the training
split's mean and standard deviation. Recorded per run: the training loss at every step
(a NaN/inf loss stops the run and is recorded as diverged), the final training loss
(mean of the last ``final_window`` steps) and the final test accuracy.

Per (network, norm, depth) a seed is *stuck* when its run diverged or its final
training loss is above ``stuck_loss`` (ln 10 = 2.303 is the loss of a uniform guess);
the setting is stuck when every seed is, trains when none is, and is partly stuck
otherwise. The training loss decides, not the test accuracy: after so short a training
the accuracy in eval mode also carries the lag of BN's running averages. The verdicts
(see ``PLAIN_RULE`` and ``SKIP_RULE``) are computed from these numbers.

Papers: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", arXiv
1512.03385 (section 4.2, figure 6); Ioffe & Szegedy, "Batch Normalization", arXiv
1502.03167.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import (
    Figure,
    LabContext,
    LabOutcome,
    Table,
    compare,
    register_lab,
    seeded,
)
from bnlab.lab.kit import (
    DIVERGENCE_RULE,
    LabConfig,
    apply_rules,
    mean_std,
    pick,
    take,
    train_variant,
)
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models import create
from bnlab.models.resnet import check_cifar_depth, cifar_resnet
from bnlab.plots.depth import plot_depth_accuracy, plot_depth_curves
from bnlab.train import TrainConfig
from bnlab.train.fit import StepInfo

__all__ = [
    "ARCHS",
    "VARIANTS",
    "DepthConfig",
    "measure",
    "plain_rule",
    "skip_rule",
    "status_of",
]

PLAIN_SOURCE = "004_deb69101c4c8736e.txt"
PLAIN_CLAIM = (
    "Without BN, the plain network stops training as depth grows "
    "(批量归一化使从业者可以例行地训练超过 100 层的网络)"
)
SKIP_SOURCE = "000_3d8114077ba70cad.txt"
SKIP_CLAIM = (
    "Skip connections matter at depth: a deep ResNet trains better than the plain "
    "network of the same depth, both with BN (跳跃连接 ... 解决了深度网络中的梯度消失问题)"
)

#: Networks: label of each.
ARCHS: dict[str, str] = {"plain": "plain CNN", "resnet": "ResNet"}
#: Variants: "bn" uses ``DepthConfig.norm``, "none" no normalization.
VARIANTS: dict[str, str] = {"bn": "BN", "none": "no BN"}
#: Fashion-MNIST training split: mean and standard deviation of the pixels in [0, 1].
FASHION_MNIST_STATS = (0.2860, 0.3530)
#: The loss of a uniform guess over 10 classes.
CHANCE_LOSS = math.log(10)


@dataclass(frozen=True)
class DepthConfig(LabConfig):
    """Settings of ``depth`` (defaults: the full run).

    Args:
        seeds: training seeds per (network, norm, depth).
        norm: the BN variant's norm (``bnlab.models.available_norms()``); "torch" is the
            fastest on the CPU, "bnlab" computes the same function more slowly.
        width: channels of the first stage (16 in He et al.; the stages have
            ``width * (1, 2, 4)``). Smaller widths cost quadratically less.
        depths: weight layers, each ``6n + 2`` (8, 14, 20, 26, 32, 44, 56, ...).
        steps: SGD steps per run; the run sees ``steps * batch_size`` training images
            once (one epoch of a fixed subset), the same budget for every model.
        batch_size: SGD batch size.
        lr: the learning rate of every run (no per-model tuning).
        momentum: SGD momentum.
        test_size: test images (a fixed random subset of the test split).
        init: "default" (the models' Kaiming-normal weights, drawn from the seed) or
            "xavier_uniform" (d2l's trainer).
        smooth: moving-average window (steps) of the loss curves in the figure.
        final_window: the final training loss is the mean loss of this many last steps.
        stuck_loss: a seed is stuck when its final training loss is above this (ln 10 =
            2.303 is chance).
        min_effect: the plain-minus-ResNet difference in final training loss (with BN,
            at the largest depth) must also exceed this.
    """

    seeds: int = 2
    norm: str = "torch"
    width: int = 8
    depths: tuple[int, ...] = (8, 20, 44)
    steps: int = 60
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    test_size: int = 500
    init: Literal["default", "xavier_uniform"] = "default"
    smooth: int = 5
    final_window: int = 10
    stuck_loss: float = 2.0
    min_effect: float = 0.05

    QUICK = LabConfig.quick_settings(
        seeds=1,
        depths=(8, 14),
        width=4,
        test_size=128,
        steps=12,
        batch_size=16,
        smooth=3,
        final_window=4,
    )

    def __post_init__(self) -> None:
        if not self.depths:
            raise ValueError("depth: depths must name at least one depth, got ()")
        for depth in self.depths:
            check_cifar_depth("depth", depth)
        if list(self.depths) != sorted(set(self.depths)):
            raise ValueError(
                f"depth: depths must be increasing without repeats, got {self.depths!r}; "
                f"use {tuple(sorted(set(self.depths)))!r}"
            )
        if self.norm == "none":
            raise ValueError(
                "depth: norm is the BN variant's norm and cannot be 'none' (the no-BN "
                "variant is always run); use 'torch' or 'bnlab'"
            )
        for name in ("seeds", "width", "steps", "batch_size", "test_size", "smooth"):
            if getattr(self, name) < 1:
                raise ValueError(f"depth: {name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.final_window <= self.steps:
            raise ValueError(
                f"depth: final_window must be in 1..steps ({self.steps}), got {self.final_window}"
            )


def _build(arch: str, norm: str, depth: int, width: int) -> Any:
    if arch == "plain":
        return create("plain", norm=norm, depth=depth, width=width)
    return cifar_resnet(norm, depth=depth, width=width)


def _key(arch: str, variant: str, depth: int, seed: int) -> str:
    return f"{arch}-{variant}-d{depth}-seed{seed}"


def _curve_key(arch: str, variant: str, depth: int) -> str:
    return f"{arch}-{variant}-d{depth}"


def status_of(cell: Mapping[str, Any], stuck_loss: float) -> bool:
    """Whether one run is stuck: diverged, or its final loss missing or above ``stuck_loss``."""
    loss = cell.get("final_loss")
    return bool(
        cell.get("diverged") or loss is None or not math.isfinite(loss) or loss > stuck_loss
    )


def _setting_status(cells: Sequence[Mapping[str, Any]], stuck_loss: float) -> str:
    flags = [status_of(c, stuck_loss) for c in cells]
    if not flags:
        return "missing"
    if all(flags):
        return "stuck"
    if not any(flags):
        return "trains"
    return "partly stuck"


def _select(cells: Sequence[Mapping[str, Any]], **where: Any) -> list[Mapping[str, Any]]:
    return [c for c in cells if all(c.get(k) == v for k, v in where.items())]


def _sizes(config: DepthConfig, data: Mapping[str, Tensor]) -> tuple[int, int]:
    """The training images one run sees once, and the test images.

    Raises:
        ValueError: the data holds fewer training images than ``steps * batch_size``.
    """
    train_size = config.steps * config.batch_size
    available = int(data["train_images"].shape[0])
    if available < train_size:
        raise ValueError(
            f"depth: steps * batch_size = {train_size} training images needed, the data "
            f"holds {available}; lower steps or batch_size"
        )
    return train_size, min(config.test_size, int(data["test_images"].shape[0]))


def prepare(config: DepthConfig, data: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Check the data once (a bad split fails before any training)."""
    _, test_size = _sizes(config, data)
    take(data, "test", test_size)
    return data


def grid(config: DepthConfig) -> Grid:
    """(depth, network) x variant x seed."""
    return Grid(
        variants=tuple(VARIANTS),
        seeds=config.seeds,
        settings=[(depth, arch) for depth in config.depths for arch in ARCHS],
        key=lambda c: _key(c.setting[1], c.variant, c.setting[0], c.seed),
    )


def measure(config: DepthConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one (depth, network, variant, seed) for ``steps`` SGD steps: ``train_variant``'s
    result with the loss of every step (None where not finite) instead of the history."""
    (depth, arch), seed = cell.setting, cell.seed
    norm = config.norm if cell.variant == "bn" else "none"
    with seeded(seed):
        model = _build(arch, norm, depth, config.width)
    losses: list[float | None] = []

    def on_step(info: StepInfo) -> None:
        loss = float(info.loss)
        losses.append(loss if math.isfinite(loss) else None)

    train = TrainConfig(
        lr=config.lr,
        momentum=config.momentum,
        epochs=1,
        batch_size=config.batch_size,
        seed=seed,
        device=str(bench.device),
        init=config.init,
    )
    train_size, test_size = _sizes(config, bench.data)
    got = train_variant(
        model,
        bench.data,
        train,
        train_size=train_size,
        test_size=test_size,
        normalize=FASHION_MNIST_STATS,
        on_step=on_step,
    )
    got["losses"] = losses
    del got["history"]  # one epoch: the same numbers as "final"
    return got


def _record(config: DepthConfig, cell: Cell, got: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's row of ``raw["cells"]``: the final loss is the mean of the last
    ``final_window`` steps' losses, None for a run that stopped early or diverged."""
    losses = got["losses"]
    tail = [v for v in losses[-config.final_window :] if v is not None]
    finished = tail and not got["nonfinite"] and len(losses) >= config.steps
    (depth, arch), final = cell.setting, got["final"]
    return {
        "arch": arch,
        "variant": cell.variant,
        "depth": depth,
        "seed": cell.seed,
        "final_loss": sum(tail) / len(tail) if finished else None,
        "test_acc": final["test_acc"],
        "test_loss": final["test_loss"],
        "initial_loss": got["initial_loss"],
        "steps_done": len(losses),
        "diverged": bool(got["diverged"]),
        "nonfinite": bool(got["nonfinite"]),
        "wall_time_s": got["wall_time_s"],
    }


def _raw(config: DepthConfig, run: GridRun, sizes: tuple[int, int]) -> dict[str, Any]:
    """The cells, the loss curves, the rules' settings and the budget's text."""
    curves: dict[str, list[list[float | None]]] = {}
    for c, got in run:
        curves.setdefault(_curve_key(c.setting[1], c.variant, c.setting[0]), []).append(
            got["losses"]
        )
    train_size, test_size = sizes
    return {
        "cells": [_record(config, c, got) for c, got in run],
        "curves": curves,
        "depths": list(config.depths),
        "stuck_loss": config.stuck_loss,
        "min_effect": config.min_effect,
        "chance_loss": CHANCE_LOSS,
        "train_images": train_size,
        "test_images": test_size,
        "budget": (
            f"{config.steps} SGD steps of {config.batch_size} images ({train_size} images "
            f"seen once), lr {config.lr:g}, momentum {config.momentum:g}, the same for "
            f"every model; BN = norm {config.norm!r}; width {config.width}; init "
            f"{config.init!r}"
        ),
        "divergence_rule": DIVERGENCE_RULE.format(margin=0.01),
        "stuck_rule": (
            f"a run is stuck when it diverged or its final training loss (mean of the last "
            f"{config.final_window} steps) is above {config.stuck_loss:g} (ln 10 = 2.303 is "
            "chance); a setting is stuck when every seed is, trains when none is"
        ),
    }


def _row(config: DepthConfig, cells: list[dict[str, Any]], **where: Any) -> list[Any]:
    """A table row's numbers: final loss and test accuracy (mean, std), diverged seeds,
    the setting's status."""
    div = sum(1 for c in _select(cells, **where) if c["diverged"])
    return [
        *mean_std(pick(cells, "final_loss", **where)),
        *mean_std(pick(cells, "test_acc", **where)),
        f"{div}/{config.seeds}",
        _setting_status(_select(cells, **where), config.stuck_loss),
    ]


_COLUMNS = ["final loss", "loss std", "test acc", "acc std", "diverged", "status"]


def summarize(config: DepthConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """The table by depth, network and norm, the two verdicts, two figures."""
    raw = _raw(config, run, _sizes(config, ctx.data))
    cells, curves = raw["cells"], raw["curves"]
    rules = [(PLAIN_CLAIM, plain_rule, _plain_measured), (SKIP_CLAIM, skip_rule, _skip_measured)]
    verdicts, _ = apply_rules({"raw": raw}, rules)
    rows = [
        [depth, arch_label, label, *_row(config, cells, arch=arch, variant=variant, depth=depth)]
        for depth in config.depths
        for arch, arch_label in ARCHS.items()
        for variant, label in VARIANTS.items()
    ]
    tables = [
        Table(
            "Final training loss and test accuracy by depth (mean, std over seeds; "
            "the same budget for every model)",
            ["depth", "network", "norm", *_COLUMNS],
            rows,
        )
    ]
    lines = {f"{ARCHS[a]}, {label}": (a, v) for a in ARCHS for v, label in VARIANTS.items()}
    panels = {
        f"depth {depth}": {
            name: curves.get(_curve_key(a, v, depth), []) for name, (a, v) in lines.items()
        }
        for depth in config.depths
    }
    plot_depth_curves(
        panels,
        ctx.out_dir / "depth_curves.png",
        smooth=config.smooth,
        title="Training loss per step, plain CNN vs ResNet, with and without BN",
    )
    series = {
        name: {
            "x": list(config.depths),
            "runs": [
                [
                    _first(pick(cells, "test_acc", arch=a, variant=v, depth=d, seed=s))
                    for d in config.depths
                ]
                for s in range(config.seeds)
            ],
        }
        for name, (a, v) in lines.items()
    }
    plot_depth_accuracy(
        series,
        ctx.out_dir / "depth_accuracy.png",
        title="Final test accuracy against depth (same budget)",
    )
    return LabOutcome(
        tables=tables,
        verdicts=verdicts,
        figures=[
            Figure(
                "depth_curves.png",
                f"Training loss per step (moving mean of {config.smooth} steps, mean over "
                "seeds), one panel per depth: plain CNN and ResNet, with and without BN; "
                "dashed: ln 10, the loss of a uniform guess; a diverging run leaves the top of "
                "its panel (y axis cut at 3.5).",
            ),
            Figure(
                "depth_accuracy.png",
                "Final test accuracy against depth: mean over seeds, band = min..max; "
                "dashed: chance.",
            ),
        ],
        raw=raw,
        notes=[raw["budget"], raw["stuck_rule"], raw["divergence_rule"]],
    )


def _first(values: list[float]) -> float | None:
    if not values or not math.isfinite(values[0]):
        return None
    return values[0]


def _mean(cells: Sequence[Mapping[str, Any]], metric: str, **where: Any) -> float | None:
    """The mean over seeds of ``metric`` of the matching cells (None without a finite value)."""
    return mean_std(pick(cells, metric, **where))[0]


def _statuses(raw: Mapping[str, Any], arch: str, variant: str) -> dict[int, str]:
    cells = raw["cells"]
    stuck_loss = float(raw["stuck_loss"])
    return {
        int(d): _setting_status(_select(cells, arch=arch, variant=variant, depth=d), stuck_loss)
        for d in raw["depths"]
    }


def plain_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "without BN, the plain network stops training as depth grows"."""
    raw = results["raw"]
    depths = [int(d) for d in raw["depths"]]
    none = _statuses(raw, "plain", "none")
    bn = _statuses(raw, "plain", "bn")
    low, high = min(depths), max(depths)
    stuck_from = next((d for d in depths if none[d] == "stuck"), None)
    cells = raw["cells"]
    evidence = {
        "plain_none_status": {str(d): none[d] for d in depths},
        "plain_bn_status": {str(d): bn[d] for d in depths},
        "first_stuck_depth_none": stuck_from,
        "largest_depth": high,
        **{
            f"{metric}_{variant}_at_largest": _mean(
                cells, metric, arch="plain", variant=variant, depth=high
            )
            for metric in ("final_loss", "test_acc")
            for variant in ("none", "bn")
        },
        "stuck_loss": raw["stuck_loss"],
    }
    if none[high] == "trains" or bn[high] == "stuck":
        return evidence, "not supported"
    supported = none[high] == "stuck" and none[low] == "trains" and bn[high] == "trains"
    return evidence, "supported" if supported else "mixed"


def _plain_measured(evidence: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    high = evidence["largest_depth"]
    return (
        "plain CNN without BN by depth: "
        + ", ".join(f"{d} {s}" for d, s in evidence["plain_none_status"].items())
        + f"; at depth {high} final loss {fmt(evidence['final_loss_none_at_largest'])} "
        f"without BN vs {fmt(evidence['final_loss_bn_at_largest'])} with BN, test acc "
        f"{fmt(evidence['test_acc_none_at_largest'])} vs {fmt(evidence['test_acc_bn_at_largest'])}"
    )


def skip_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "skip connections matter at depth (with BN)"."""
    raw = results["raw"]
    cells = raw["cells"]
    depths = [int(d) for d in raw["depths"]]
    min_effect = float(raw["min_effect"])
    by_depth: dict[str, Any] = {}
    for d in (min(depths), max(depths)):
        res = pick(cells, "final_loss", arch="resnet", variant="bn", depth=d)
        pln = pick(cells, "final_loss", arch="plain", variant="bn", depth=d)
        try:
            c = compare(pln, res, min_effect=min_effect)
            entry = {"diff": c.diff, "se": c.se, "direction": c.direction}
        except ValueError:
            entry = {"diff": None, "se": None, "direction": "unclear"}
        for arch in ("resnet", "plain"):
            entry[f"{arch}_loss"] = _mean(cells, "final_loss", arch=arch, variant="bn", depth=d)
            entry[f"{arch}_acc"] = _mean(cells, "test_acc", arch=arch, variant="bn", depth=d)
        by_depth[str(d)] = entry
    top = by_depth[str(max(depths))]
    evidence = {"largest_depth": max(depths), "by_depth": by_depth, "min_effect": min_effect}
    if top["direction"] == "greater":
        return evidence, "supported"
    small = top["diff"] is not None and abs(top["diff"]) <= min_effect
    return evidence, "not supported" if top["direction"] == "less" or small else "mixed"


def _skip_measured(evidence: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    parts = []
    for d, e in evidence["by_depth"].items():
        diff = "n/a" if e["diff"] is None else f"{e['diff']:+.3f}"
        parts.append(
            f"depth {d}: final loss plain {fmt(e['plain_loss'])} vs ResNet "
            f"{fmt(e['resnet_loss'])} (difference {diff}, standard error {fmt(e['se'])}); "
            f"test acc plain {fmt(e['plain_acc'])} vs ResNet {fmt(e['resnet_acc'])}"
        )
    return "with BN, " + "; ".join(parts)


SPEC = register_lab(
    grid_lab(
        name="depth",
        title="Depth: plain CNN vs ResNet, with and without BN",
        summary=(
            "Tests 'without BN, the plain network stops training as depth grows' and "
            "'skip connections matter at depth': He et al.'s CIFAR layout (6n + 2 weight "
            "layers) as a plain CNN and as a ResNet, at depths 8, 20 and 44, with BN "
            "(norm 'torch') and without, 2 seeds (the CPU budget allows no more), all with "
            "the same budget: 60 SGD steps of 64 images (3840 training images seen once), "
            "momentum 0.9, lr 0.05 for every model (no tuning), Kaiming-normal "
            "initialisation, width 8 (channels 8/16/32) on 28x28 inputs; per-step training "
            "loss curves, final loss (mean of the last 10 steps) and test accuracy on 500 "
            "test images. A short-training view: it shows which networks start to train at "
            "all, not the accuracy they would reach."
        ),
        config_type=DepthConfig,
        grid=grid,
        measure=measure,
        summarize=summarize,
        prepare=prepare,
        full_time=(
            "16.5 min on the shared 2-core CPU machine under load 8-11 (--threads 1; "
            "4 min 48 s + 11 min 41 s, stopped once and resumed; the 24 runs' own times "
            "sum to 939 s: about 20 s per depth-8 run, 50 s per depth-20, 65-75 s per "
            "depth-44)"
        ),
    )
)

register_claim(
    Claim(
        key="no-bn-plain-stops-training-with-depth",
        claim=PLAIN_CLAIM,
        source=PLAIN_SOURCE,
        experiment="depth",
        rule_text=(
            "A run is stuck when it diverged (NaN/inf loss, or its mean training loss above its "
            "first batch's) or its final training loss (mean of its last steps) is above "
            "stuck_loss (2.0; ln 10 = 2.303 is chance); a (network, norm, depth) is stuck when "
            "every seed is, trains when no seed is, partly stuck otherwise. supported: the plain "
            "CNN without BN is stuck at the largest depth and trains at the smallest, and the "
            "plain CNN with BN trains at the largest depth. not supported: the plain CNN without "
            "BN trains at the largest depth, or the plain CNN with BN is stuck there too. mixed "
            "otherwise (partly stuck, or stuck already at the smallest depth)."
        ),
        rule=plain_rule,
    )
)
register_claim(
    Claim(
        key="skip-connections-matter-at-depth",
        claim=SKIP_CLAIM,
        source=SKIP_SOURCE,
        experiment="depth",
        rule_text=(
            "With BN, compare the final training loss (mean of the last steps) of the plain CNN "
            "and of the ResNet at the largest depth over seeds (Welch difference plain - ResNet; "
            "it counts when it exceeds twice its standard error and min_effect, 0.05; with one "
            "seed a side, min_effect alone). The training loss, not the test accuracy, because the "
            "claim is about training deep networks, and after a short training the test accuracy "
            "in eval mode also carries the lag of BN's running averages. supported: the ResNet's "
            "loss is lower. not supported: the plain CNN's is lower, or the difference is below "
            "min_effect. mixed: a difference above min_effect that the seeds do not separate (or "
            "no finite loss on a side). The same comparison at the smallest depth, and the test "
            "accuracies, are reported as context."
        ),
        rule=skip_rule,
    )
)
