"""``bnlab lab init``: does BN make training less sensitive to the initial weight scale?

The seeds list "lower demands on the initial weights" (对初始化权重的要求降低,
``003_8a52002564f5ba9e.txt``) among BN's benefits. Why it could hold (Ioffe & Szegedy
2015, arXiv 1502.03167, section 3.3): a BN layer's output does not depend on the scale
of the weights before it, ``BN((a W) x) = BN(W x)`` for ``a > 0``, and the gradient
with respect to ``a W`` is ``1/a`` times that of ``W``; only the last (unnormalized)
layer's scale still matters.

Design (second edition, issue 17; the sweep is ``bnlab.lab.kit.sweeps``, shared with
``lr-sweep``): a ReLU and a sigmoid MLP 784-256-256-10, with and without BN (before each
activation), d2l's Xavier-uniform weights multiplied by a factor on the grid 0.001, 0.01,
..., 1000 (decades; biases keep their draw), plain SGD at batch 128 for 600 steps with the
lr decayed linearly to 0, 5 paired seeds (same init and data order in both arms). Each
(activation, arm) trains at its own lr: the lr of the grid 0.03..10 with the highest
final accuracy on 10,000 validation images (the last of the training split; the runs
train on the first 50,000) at factor 1, on the separate tuning seed 1000. A run *trains*
at a factor when its loss stayed finite and its final test accuracy on the full
10,000-image test set is within 3 points of that seed's best in that arm over the grid
(and at least 50 %): above what the last layer reaches on frozen random features
(75-82 %, the referee's probe, docs/lab_referee_2.md), since with BN a factor ``a``
divides the hidden layers' relative update by ``a**2`` and at large factors only the
last layer would learn. The lr is fixed across factors (tuned at factor 1), and the
last layer is not normalized in either arm: BN's invariance covers the hidden layers
only.

Primary metric, per seed: ``n_train``, the number of grid factors (decades) at which the
run trains (the set need not be contiguous; contiguity is shown). Claim: more with BN,
per activation (both settings vote), paired t, Holm, TOST margin 1 factor (one grid
step, the metric's resolution). Censoring: a seed that trains at either end of the grid
has a count that is a lower bound (``kit.sweeps.CENSORING_RULE``): it can only withdraw
a "refuted" for BN, or a "supported" when it is a no-BN seed.

Second run of this design: the first full run (3840ff2) used a fixed 75 % threshold,
the decades spanned as the metric and a 0.5-decade margin; the referee's report
(docs/lab_referee_2.md, section 10) asked for a threshold above frozen-feature
accuracy, the count of trainable factors and a margin of one grid step, declared here
before the rerun.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bnlab.lab import kit, stats
from bnlab.lab.claims import Literature
from bnlab.lab.experiment import LabContext, LabOutcome, LabSpec, Table, register_lab
from bnlab.lab.kit import sweeps
from bnlab.lab.kit.sweeps import scale_weights
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, run_grid

__all__ = [
    "CLAIMS",
    "InitConfig",
    "choose_lrs",
    "main_grid",
    "measure",
    "scale_weights",
    "specs",
    "tune_grid",
]

SOURCE = "003_8a52002564f5ba9e.txt"
SENTENCE = "对初始化权重的要求降低"
METRIC = "n_train"
FIGURE = sweeps.SweepFigure(
    "init_scale",
    "factor on the Xavier-uniform weights",
    "Initial weight scale, MLP with and without BN (each at its tuned lr)",
)
#: The per-seed table's columns: header, metrics -> cell.
PER_SEED_COLUMNS = (
    ("factors that train", lambda m: kit.mean_std_cell(m[METRIC])),
    (
        "factors that train (per seed)",
        lambda m: "; ".join(",".join(f"{v:g}" for v in t) or "none" for t in m["trains"]),
    ),
    ("contiguous", lambda m: f"{sum(m['contiguous'])} of {len(m[METRIC])}"),
    ("censored (at an end)", lambda m: f"{sum(m['width_censored'])} of {len(m[METRIC])}"),
)
TUNE_RULE = (
    "each (activation, arm) takes the lr of the grid {lrs} with the highest final accuracy "
    "on {val} validation images (the last of the training split) at factor 1 on tuning "
    "seed {seed}, ties to the smaller lr; a diverged run is never chosen"
)


@dataclass(frozen=True)
class InitConfig(sweeps.SweepConfig):
    """Settings of ``init`` (defaults: the full run, about 2-3 min with --workers 2).

    Args:
        seeds, test_size, min_seeds, threads, activations, hidden, batch, steps,
            momentum, target_acc, drop, window: as in ``kit.sweeps.SweepConfig``.
        train_size: training images (the first of the split).
        val_size: validation images for the lr tuning (the last of the split).
        factors: multipliers of the Xavier-uniform weights (increasing, equal log steps).
        lrs: the tuning grid of learning rates.
        tune_seed: the seed of the tuning runs.
        margin: the claim's equivalence margin, in grid factors (one grid step).
    """

    train_size: int | None = 50000
    val_size: int = 10000
    factors: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    lrs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    tune_seed: int = 1000
    margin: float = 1.0

    #: A smoke test: 2 seeds (below min_seeds: no verdict), three factors, 30 steps.
    QUICK = sweeps.SweepConfig.quick_settings(
        factors=(0.01, 1.0, 100.0),
        lrs=(0.1, 1.0),
        steps=30,
        window=10,
        train_size=1024,
        val_size=256,
        test_size=500,
        target_acc=30.0,
    )

    def __post_init__(self) -> None:
        self.check(self.factors, "factors")
        self.check(self.lrs, "lrs")


def specs(config: InitConfig) -> list[stats.ClaimSpec]:
    """The claim, declared before the run (see the module docstring)."""
    return [config.claim_spec("bn-eases-initialization", METRIC)]


def tune_grid(config: InitConfig) -> Grid:
    """(activation, lr) x arm on the tuning seed; units ``tune-ACT-lrLR-ARM-seedS``."""
    return Grid(
        variants=tuple(sweeps.ARMS),
        seeds=(config.tune_seed,),
        settings=tuple((a, float(lr)) for a in config.activations for lr in config.lrs),
        key=lambda c: f"tune-{c.setting[0]}-lr{c.setting[1]:g}-{c.variant}-seed{c.seed}",
    )


def main_grid(config: InitConfig) -> Grid:
    """(activation, factor) x arm x seed; units ``ACT-xFACTOR-ARM-seedN``."""
    return sweeps.sweep_grid(config, config.factors, "x")


def tune_cell(config: InitConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """One tuning run at factor 1: the final validation accuracy (%)."""
    bench = Bench(bench.data["tune"], bench.device, bench.advance)
    got = sweeps.sweep_cell(config, cell, bench, lr=float(cell.setting[1]))
    return {"lr": got["lr"], "diverged": got["diverged"], "val_acc": got["test_acc"]}


def choose_lrs(tuned: GridRun) -> dict[str, float | None]:
    """``{"ACT/ARM": lr}`` by ``TUNE_RULE`` (None: every lr diverged)."""
    accs: dict[str, dict[float, float]] = {}
    for cell, r in tuned:
        ok = accs.setdefault(f"{cell.setting[0]}/{cell.variant}", {})
        acc = r["val_acc"]
        if not r["diverged"] and acc is not None and math.isfinite(acc):
            ok[float(r["lr"])] = float(acc)
    return {key: max(ok, key=lambda lr: (ok[lr], -lr)) if ok else None for key, ok in accs.items()}


def measure(
    config: InitConfig, lrs: Mapping[str, float | None], cell: Cell, bench: Bench
) -> dict[str, Any]:
    """One run at the cell's weight factor and its (activation, arm)'s lr."""
    activation, factor = cell.setting
    lr = lrs[f"{activation}/{cell.variant}"]
    if lr is None:
        return {"lr": None, "factor": factor, "diverged": True, "test_acc": None}
    main = Bench(bench.data["main"], bench.device, bench.advance)
    return sweeps.sweep_cell(config, cell, main, lr=lr, factor=float(factor))


def run(config: InitConfig, ctx: LabContext) -> LabOutcome:
    """Tune each (activation, arm)'s lr at factor 1, then sweep the weight factor."""
    data = sweeps.tuning_data(config, ctx.data, "init")
    tune, main = tune_grid(config), main_grid(config)
    ctx.progress.start((len(tune.cells()) + len(main.cells())) * config.steps, "init")
    tuned = run_grid(ctx, tune, functools.partial(tune_cell, config), data=data, steps=config.steps)
    lrs = choose_lrs(tuned)
    measured = run_grid(
        ctx, main, functools.partial(measure, config, lrs), data=data, steps=config.steps
    )
    return summarize(config, ctx, measured, tuned, lrs)


def summarize(
    config: InitConfig,
    ctx: LabContext,
    run: GridRun,
    tuned: GridRun,
    lrs: Mapping[str, float | None],
) -> LabOutcome:
    """Accuracy against the weight factor, the factors that train per seed, the verdict."""
    per_seed = sweeps.trainability(config, run, config.factors)
    verdicts, raw = sweeps.sweep_verdicts(
        config,
        per_seed,
        specs(config),
        CLAIMS,
        factors=list(config.factors),
        lr=dict(lrs),
        tuning={f"{c.setting[0]}/{c.variant}/lr{c.setting[1]:g}": r["val_acc"] for c, r in tuned},
        tune_rule=TUNE_RULE.format(
            lrs="/".join(f"{lr:g}" for lr in config.lrs), val=config.val_size, seed=config.tune_seed
        ),
    )
    tables = [
        Table(
            f"Learning-rate tuning at factor 1 (validation accuracy %, tuning seed "
            f"{config.tune_seed}; the highest is chosen)",
            ["activation", "arm", *(f"lr={lr:g}" for lr in config.lrs), "chosen"],
            [
                [
                    act,
                    arm,
                    *(raw["tuning"].get(f"{act}/{arm}/lr{lr:g}") for lr in config.lrs),
                    lrs.get(f"{act}/{arm}"),
                ]
                for act in config.activations
                for arm in sweeps.ARMS
            ],
        ),
        *sweeps.sweep_tables(
            run,
            config.factors,
            per_seed,
            "x",
            "weight factor",
            "Per seed: the weight factors (decades) that train",
            PER_SEED_COLUMNS,
        ),
    ]
    return sweeps.sweep_outcome(
        config, ctx, run, config.factors, FIGURE, tables, verdicts, raw, [raw["tune_rule"]]
    )


CLAIMS = kit.register_claims(
    "init",
    kit.ClaimRule(
        "bn-eases-initialization",
        "BN reduces the sensitivity to the initial weights: an MLP trains over a wider "
        f"range of initial weight scales with BN ({SENTENCE})",
        SOURCE,
        "declared ClaimSpec (bnlab.lab.stats): per seed, the number of weight factors "
        "(Xavier-uniform times 0.001..1000, decade steps) at which the run's loss stays "
        "finite and its final test accuracy is within 3 points of the seed's best in that "
        "arm (and >= 50 %), each (activation, arm) at its lr tuned at factor 1 on seed 1000 "
        "and kept across factors; BN against no BN, direction higher, per activation (relu, "
        "sigmoid; both vote), paired by seed (5), Holm, TOST margin ±1 factor (one grid "
        "step). A seed that trains at an end of the grid has a censored count and withdraws "
        "a verdict it could flip ('inconclusive').",
        sweeps.censored_rule("bn-eases-initialization", high="width_censored", low=None),
        sweeps.censored_text,
        sentence=SENTENCE,
        literature=Literature(
            "Ioffe & Szegedy 2015, 'Batch Normalization', arXiv 1502.03167, section 3.3",
            "the argument: BN's output and the Jacobian of a layer are invariant to the "
            "scale of its weights, and larger weights get smaller gradients",
            "no sweep of the initial scale is reported (an argument, not a measurement); "
            "Glorot & Bengio 2010 show that without normalization the scale of the "
            "initialization decides whether deep sigmoid/tanh networks train",
            "supported",
            "ours: 2-hidden-layer MLPs, 600 steps of plain SGD; the last (unnormalized) "
            "layer keeps its scale in both arms",
        ),
    ),
)

SPEC = register_lab(
    LabSpec(
        name="init",
        title="Initial weight scale, with and without BN",
        summary=(
            "Tests 'BN reduces the sensitivity to the initial weights': a ReLU and a sigmoid "
            "MLP 784-256-256-10, with and without BN, Xavier-uniform weights times 0.001.."
            "1000 (decades), each (activation, arm) at its lr tuned at factor 1 on a "
            "separate seed, plain SGD batch 128, 600 steps (lr decayed to 0), 5 paired "
            "seeds; per seed the number of factors at which the run trains (final test "
            "accuracy on the full test set within 3 points of the seed's best in that arm); "
            "paired t per activation, Holm, TOST margin one factor."
        ),
        config_type=InitConfig,
        run=run,
        needs_data=True,
        full_time=(
            "131 s with --workers 2 at load 2.5-4 (the first full run, 3840ff2: 24 tuning "
            "+ 140 runs of 600 steps)"
        ),
    )
)
