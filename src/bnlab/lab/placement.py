"""``bnlab lab placement``: BN before the activation (the book) or after it?

The seeds put BN "before the activation function of every layer" (在激活函数之前,
``000_3d8114077ba70cad.txt``; also ``001_7cfd4fb3ab7f2c3b.txt`` and
``002_adae9b0709a5d84d.txt``), as the paper does, while the Keras and PyTorch examples
put it after. Measured here: an MLP (``hidden`` layers, ``bnlab.models.MLP`` with
``norm_position="before"`` or ``"after"``) with sigmoid and with ReLU activations, plain
SGD, several seeds; the last epoch's training loss (the claim is about training; it
decides) and the final test accuracy (reported: the last iterate's test accuracy of
these short runs moves by about 0.1 between epochs), with a network without BN as a
reference. For each activation the two placements are compared with Welch's difference
of means: a difference counts when it exceeds twice its standard error.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.2: normalize
``Wu + b``, before the nonlinearity).
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
    compare,
    register_lab,
)
from bnlab.lab.kit import mean_std, pick, train_variant
from bnlab.models import create
from bnlab.plots.sweeps import plot_grouped_bars, plot_metric_curves
from bnlab.train import TrainConfig

__all__ = ["PlacementConfig", "placement_rule", "run"]

SOURCE = "000_3d8114077ba70cad.txt"
CLAIM = "BN goes before the activation (在激活函数之前): that placement trains better than after it"
PLACEMENTS = {
    "before": "BN before the activation",
    "after": "BN after the activation",
    "none": "no BN",
}


@dataclass(frozen=True)
class PlacementConfig:
    """Settings of ``placement`` (defaults: the full run).

    Args:
        seeds: training seeds per cell.
        activations: hidden activations to test ("sigmoid", "relu", "tanh").
        hidden: the MLP's hidden sizes.
        norm: the BN norm name.
        lr: SGD learning rate (every cell).
        train_size, test_size: image subsets.
        epochs, batch_size: training length and batch.
        reference: also train the network without BN.
    """

    seeds: int = 3
    activations: tuple[str, ...] = ("sigmoid", "relu")
    hidden: tuple[int, ...] = (256, 256)
    norm: str = "torch"
    lr: float = 0.1
    train_size: int = 5000
    test_size: int = 2000
    epochs: int = 4
    batch_size: int = 64
    reference: bool = True

    @classmethod
    def quick(cls) -> PlacementConfig:
        return cls(seeds=2, hidden=(32, 32), train_size=512, test_size=256, epochs=1)


def run(config: PlacementConfig, ctx: LabContext) -> LabOutcome:
    if ctx.data is None:
        raise ValueError("placement needs Fashion-MNIST in ctx.data")
    placements = [p for p in PLACEMENTS if p != "none" or config.reference]
    ctx.progress.start(len(config.activations) * len(placements) * config.seeds, "placement")
    cells: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[list[float | None]]]] = {}
    for activation in config.activations:
        for placement in placements:
            for seed in range(config.seeds):

                def compute(
                    activation: str = activation, placement: str = placement, seed: int = seed
                ) -> Any:
                    model = create(
                        "mlp",
                        norm="none" if placement == "none" else config.norm,
                        hidden=config.hidden,
                        activation=activation,
                        norm_position="before" if placement == "none" else placement,
                    )
                    train = TrainConfig(
                        lr=config.lr,
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
                    )

                got = ctx.unit(f"{activation}-{placement}-seed{seed}", compute)
                cells.append(
                    {
                        "activation": activation,
                        "placement": placement,
                        "seed": seed,
                        **got["final"],
                        "diverged": got["diverged"],
                    }
                )
                curves.setdefault(f"test accuracy, {activation}", {}).setdefault(
                    PLACEMENTS[placement], []
                ).append([r["test_acc"] for r in got["history"]])
                ctx.progress.advance()
    raw = {"cells": cells, "curves": curves}
    evidence, verdict = placement_rule({"raw": raw})

    rows = []
    for activation in config.activations:
        for placement in placements:
            where = {"activation": activation, "placement": placement}
            acc, acc_sd = mean_std(pick(cells, "test_acc", **where))
            loss, loss_sd = mean_std(pick(cells, "train_loss", **where))
            rows.append([activation, PLACEMENTS[placement], acc, acc_sd, loss, loss_sd])
    table = Table(
        f"MLP {config.hidden}: BN placement (mean, std over seeds)",
        ["activation", "placement", "test acc", "std", "train loss", "std"],
        rows,
    )
    cmp_table = Table(
        "Before vs after (Welch; a difference counts beyond 2 standard errors)",
        [
            "activation",
            "train loss after - before",
            "se",
            "trains better",
            "test acc before - after",
            "se",
            "test acc better",
        ],
        [
            [
                a,
                c["train_loss_after_minus_before"],
                c["train_loss_se"],
                c["better"],
                c["test_acc_before_minus_after"],
                c["test_acc_se"],
                c["test_acc_better"],
            ]
            for a, c in evidence["activations"].items()
        ],
    )
    groups = {
        PLACEMENTS[p]: {
            a: pick(cells, "test_acc", activation=a, placement=p) for a in config.activations
        }
        for p in placements
    }
    plot_grouped_bars(
        groups,
        ctx.out_dir / "placement.png",
        ylabel="final test accuracy",
        title="BN before or after the activation",
    )
    plot_metric_curves(
        curves, ctx.out_dir / "placement_curves.png", title="Test accuracy per epoch"
    )
    holds = holds_of(verdict)
    measured = f"{verdict}: " + "; ".join(
        f"{a}: {c['better']} trains better (training loss after - before "
        f"{c['train_loss_after_minus_before']:+.4f}, se {_r(c['train_loss_se'])})"
        for a, c in evidence["activations"].items()
    )
    return LabOutcome(
        tables=[table, cmp_table],
        verdicts=[Verdict(CLAIM, holds, measured)],
        figures=[
            Figure(
                "placement.png",
                "Final test accuracy by activation and BN placement: mean, whisker = std over seeds.",
            ),
            Figure(
                "placement_curves.png", "Test accuracy per epoch: mean over seeds, band = min..max."
            ),
        ],
        raw=raw,
    )


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


RULE_TEXT = (
    "Per activation (sigmoid, ReLU): the last epoch's training loss with BN after the "
    "activation minus before it, over seeds (Welch; a difference counts beyond 2 standard "
    "errors); positive = before trains better. supported: before trains better for every "
    "activation; not supported: for none (after better, or no difference); mixed: for some. "
    "Final test accuracy is compared the same way and reported, not used: the last "
    "iterate's test accuracy of these short runs moves by 0.1 from epoch to epoch."
)


def placement_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN before the activation trains better than after it"."""
    cells = results["raw"]["cells"]
    per: dict[str, Any] = {}
    for activation in dict.fromkeys(c["activation"] for c in cells):
        where = {"activation": activation}
        before = pick(cells, "train_loss", placement="before", **where)
        after = pick(cells, "train_loss", placement="after", **where)
        if not before or not after:
            continue
        loss = compare(after, before)
        acc = compare(
            pick(cells, "test_acc", placement="before", **where),
            pick(cells, "test_acc", placement="after", **where),
        )
        per[activation] = {
            "train_loss_after_minus_before": loss.diff,
            "train_loss_se": loss.se,
            "better": {"greater": "before", "less": "after"}.get(loss.direction, "no difference"),
            "test_acc_before_minus_after": acc.diff,
            "test_acc_se": acc.se,
            "test_acc_better": {"greater": "before", "less": "after"}.get(
                acc.direction, "no difference"
            ),
        }
    if not per:
        raise ValueError("placement results hold no activation with both placements")
    wins = sum(p["better"] == "before" for p in per.values())
    verdict = "supported" if wins == len(per) else "not supported" if wins == 0 else "mixed"
    return {"activations": per}, verdict


SPEC = register_lab(
    LabSpec(
        name="placement",
        title="BN before or after the activation",
        summary=(
            "Tests the seeds' placement of BN before the activation against after it: an MLP "
            "784-256-256-10 with sigmoid and with ReLU activations, BN before or after the "
            "activation (and no BN as a reference), plain SGD lr 0.1, 3 seeds; the last "
            "epoch's training loss compared with the 2-standard-error rule (test accuracy "
            "reported too). Full run: 5000 training and "
            "2000 test images, 4 epochs, batch 64."
        ),
        config_type=PlacementConfig,
        run=run,
        needs_data=True,
        full_time=(
            "3.5 min wall (36 s of CPU time) with --threads 1 on the shared 2-core machine "
            "under heavy load from other jobs (2026-11-26)"
        ),
    )
)

register_claim(
    Claim(
        key="bn-before-activation",
        claim=CLAIM,
        source=SOURCE,
        experiment="placement",
        rule_text=RULE_TEXT,
        rule=placement_rule,
    )
)
