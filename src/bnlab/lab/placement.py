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

from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, compare, register_lab
from bnlab.lab.kit import apply_rules, directions_verdict, fits, pick
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models import create
from bnlab.plots.sweeps import plot_grouped_bars, plot_metric_curves

__all__ = ["PlacementConfig", "measure", "placement_rule"]

SOURCE = "000_3d8114077ba70cad.txt"
CLAIM = "BN goes before the activation (在激活函数之前): that placement trains better than after it"
PLACEMENTS = {
    "before": "BN before the activation",
    "after": "BN after the activation",
    "none": "no BN",
}


@dataclass(frozen=True)
class PlacementConfig(fits.FitConfig):
    """Settings of ``placement`` (defaults: the full run).

    Args:
        seeds, norm, train_size, test_size, epochs, batch_size: see ``FitConfig``.
        activations: hidden activations to test ("sigmoid", "relu", "tanh").
        hidden: the MLP's hidden sizes.
        lr: SGD learning rate (every cell).
        reference: also train the network without BN.
    """

    epochs: int = 4
    activations: tuple[str, ...] = ("sigmoid", "relu")
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 0.1
    reference: bool = True

    QUICK = fits.FitConfig.quick_settings(hidden=(32, 32))

    def placements(self) -> list[str]:
        """Before, after, and without BN when ``reference``."""
        return [p for p in PLACEMENTS if p != "none" or self.reference]


def grid(config: PlacementConfig) -> Grid:
    """Activation x placement x seed (unit keys ``ACTIVATION-PLACEMENT-seedN``)."""
    return Grid(variants=config.placements(), seeds=config.seeds, settings=config.activations)


def measure(config: PlacementConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train the MLP with one activation and BN placement."""
    placement = cell.variant
    model = create(
        "mlp",
        norm="none" if placement == "none" else config.norm,
        hidden=config.hidden,
        activation=cell.setting,
        norm_position="before" if placement == "none" else placement,
    )
    return config.fit(model, bench, cell.seed, lr=config.lr)


def summarize(config: PlacementConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """The table by activation and placement, before vs after, the verdict, two figures."""
    cells = [
        fits.fit_record(got, ("diverged",), activation=c.setting, placement=c.variant, seed=c.seed)
        for c, got in run
    ]
    curves: dict[str, dict[str, list[list[float | None]]]] = {}
    for c, got in run:
        by_placement = curves.setdefault(f"test accuracy, {c.setting}", {})
        by_placement.setdefault(PLACEMENTS[c.variant], []).append(
            [r["test_acc"] for r in got["history"]]
        )
    raw = {"cells": cells, "curves": curves}
    verdicts, evidences = apply_rules({"raw": raw}, [(CLAIM, placement_rule, _measured)])
    metrics = ("test_acc", "train_loss")
    rows = [
        [a, PLACEMENTS[p], *fits.mean_std_row(cells, metrics, activation=a, placement=p)]
        for a in config.activations
        for p in config.placements()
    ]
    table = Table(
        f"MLP {config.hidden}: BN placement (mean, std over seeds)",
        ["activation", "placement", "test acc", "std", "train loss", "std"],
        rows,
    )
    keys = ("train_loss_after_minus_before", "train_loss_se", "better")
    keys += ("test_acc_before_minus_after", "test_acc_se", "test_acc_better")
    cmp_table = Table(
        "Before vs after (Welch; a difference counts beyond 2 standard errors)",
        ["activation", *_CMP_COLUMNS],
        [[a, *(c[k] for k in keys)] for a, c in evidences[CLAIM]["activations"].items()],
    )
    groups = {
        PLACEMENTS[p]: {
            a: pick(cells, "test_acc", activation=a, placement=p) for a in config.activations
        }
        for p in config.placements()
    }
    title = "BN before or after the activation"
    plot_grouped_bars(
        groups, ctx.out_dir / "placement.png", ylabel="final test accuracy", title=title
    )
    plot_metric_curves(
        curves, ctx.out_dir / "placement_curves.png", title="Test accuracy per epoch"
    )
    figures = [
        Figure(
            "placement.png",
            "Final test accuracy by activation and BN placement: mean, whisker = std over seeds.",
        ),
        Figure(
            "placement_curves.png", "Test accuracy per epoch: mean over seeds, band = min..max."
        ),
    ]
    return LabOutcome(tables=[table, cmp_table], verdicts=verdicts, figures=figures, raw=raw)


_CMP_COLUMNS = (
    "train loss after - before",
    "se",
    "trains better",
    "test acc before - after",
    "se",
    "test acc better",
)


def _measured(evidence: Mapping[str, Any]) -> str:
    return "; ".join(
        f"{a}: {c['better']} trains better (training loss after - before "
        f"{c['train_loss_after_minus_before']:+.4f}, se {_r(c['train_loss_se'])})"
        for a, c in evidence["activations"].items()
    )


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


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
    return {"activations": per}, directions_verdict([p["better"] for p in per.values()], "before")


SPEC = register_lab(
    grid_lab(
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
        grid=grid,
        measure=measure,
        summarize=summarize,
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
        rule_text=(
            "Per activation (sigmoid, ReLU): the last epoch's training loss with BN after the "
            "activation minus before it, over seeds (Welch; a difference counts beyond 2 standard "
            "errors); positive = before trains better. supported: before trains better for every "
            "activation; not supported: for none (after better, or no difference); mixed: for "
            "some. Final test accuracy is compared the same way and reported, not used: the last "
            "iterate's test accuracy of these short runs moves by 0.1 from epoch to epoch."
        ),
        rule=placement_rule,
    )
)
