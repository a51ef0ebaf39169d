"""``bnlab lab placement``: BN before the activation (the seeds, the paper) or after it?

The seeds put BN "before the activation function of every layer" (在激活函数之前,
``000_3d8114077ba70cad.txt``; also ``001_7cfd4fb3ab7f2c3b.txt`` and
``002_adae9b0709a5d84d.txt``), as Ioffe & Szegedy do (arXiv 1502.03167, section 3.2:
normalize ``Wu + b``); practice often puts it after the ReLU (the Keras examples), and
the reported differences are small and go both ways (a CaffeNet benchmark on ImageNet:
47.8 % before, 49.9 % after, one run each).

Design (second edition, issue 17): an MLP 784-256-256-10 (``bnlab.models.MLP``) with BN
(torch's ``BatchNorm1d``) before or after each hidden activation, with ReLU and with
sigmoid activations; SGD with momentum 0.9, batch 128, 2 epochs of the 60,000 training
images (938 steps), lr decayed linearly to 0 (the metric is read at a settled point), the
same init and data order for both placements (paired seeds, 5 of them).

Each (activation, placement) arm runs at its own lr from the grid 0.01, 0.03, 0.1, 0.3,
1, chosen before the measured runs on a separate tuning seed (1000) by the lowest
validation error: the tuning runs train on the first 55,000 training images and are
scored on the last 5,000 (the test set is not used for tuning).

Measured: test accuracy on the full 10,000-image test set at the end (**primary**), the
final training loss (mean of the last 50 mini-batch losses) shown.

Claim (``specs``): ``bn-before-activation``: BN before the activation gives a higher test
accuracy than after it; settings ReLU and sigmoid; paired t, Holm, TOST margin 0.3
points: with 5 seeds and the paired SD of such runs (0.1-0.2 points) equivalence at 0.3
is within reach, so "no meaningful difference" can be shown if it is the truth (a
difference under 0.3 points is below the test set's own sampling noise for one model,
about 0.35 points); a seed within 2 points of chance is excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bnlab.lab import experiment, kit, stats
from bnlab.lab.claims import Literature, spec_record, stats_rule
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, register_lab
from bnlab.lab.runner import Bench, Cell, Grid, GridRun
from bnlab.models import create
from bnlab.plots.effects import plot_arms

__all__ = [
    "CLAIMS",
    "PLACEMENTS",
    "PlacementConfig",
    "main_grid",
    "specs",
    "summarize",
    "train_run",
    "tune_grid",
]

SOURCE = "000_3d8114077ba70cad.txt"
SENTENCE = "在深度模型中,批量归一化被应用到每一层的激活函数之前,以稳定网络的中间输出"
PLACEMENTS = {"before": "BN before the activation", "after": "BN after the activation"}
METRIC = "test_acc"


@dataclass(frozen=True)
class PlacementConfig(kit.paired.EpochsConfig):
    """Settings of ``placement`` (defaults: the full run).

    Args:
        seeds, train_size, test_size, min_seeds, threads, tune_seed, batch, epochs: as in
            ``kit.paired.EpochsConfig`` (5 paired seeds, all images, batch 128, 2 epochs).
        lrs: the lr grid (each arm picks one by ``kit.paired.TUNE_RULE``).
        margin: the claim's equivalence margin, in accuracy points.
        validation: training images held out to score the tuning runs.
        activations: hidden activations (the claim's settings).
        hidden: the MLP's hidden sizes.
        norm: the BN implementation (a model-registry norm).
        momentum: SGD momentum.

    Raises:
        ValueError: a setting that is not > 0, an empty lr grid or activation list.
    """

    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    margin: float = 0.3
    validation: int = 5000
    activations: tuple[str, ...] = ("relu", "sigmoid")
    hidden: tuple[int, ...] = (256, 256)
    norm: str = "torch"
    momentum: float = 0.9

    QUICK = kit.paired.EpochsConfig.quick_settings(lrs=(0.03, 0.3), validation=256, hidden=(32, 32))
    POSITIVE = ("seeds", "validation", "batch", "epochs", "margin")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.activations:
            raise ValueError("PlacementConfig: activations must name at least one activation")


def specs(config: PlacementConfig) -> list[stats.ClaimSpec]:
    """The claim, declared before the run (see the module docstring)."""
    return kit.paired.claim_specs(
        config,
        METRIC,
        [("bn-before-activation", "higher", "before", "after", config.activations)],
        chance=kit.paired.chance_near(METRIC),
    )


def main_grid(config: PlacementConfig) -> Grid:
    """Activation x placement x seed (units ``ACTIVATION-PLACEMENT-seedN``), seeds outermost."""
    return kit.paired.measured_grid(PLACEMENTS, config.seeds, config.activations)


def train_run(
    config: PlacementConfig,
    activation: str,
    placement: str,
    lr: float,
    seed: int,
    bench: Bench,
    *,
    validate: bool,
) -> dict[str, Any]:
    """One MLP run at ``lr`` decayed to 0; with ``validate``, trained without the last
    ``validation`` training images and scored on them (tuning), else the test accuracy."""
    data = dict(bench.data)
    if validate:
        n = data["train_images"].shape[0] - config.validation
        data = {
            "train_images": data["train_images"][:n],
            "train_labels": data["train_labels"][:n],
            "test_images": data["train_images"][n:],
            "test_labels": data["train_labels"][n:],
        }
    with kit.cpu_threads(config.threads):
        with experiment.seeded(seed):
            model = create(
                "mlp",
                norm=config.norm,
                hidden=config.hidden,
                activation=activation,
                norm_position=placement,
            ).to(bench.device)
        losses = kit.paired.train_decayed(
            model,
            data["train_images"],
            data["train_labels"],
            bench,
            lr=lr,
            batch=config.batch,
            steps=config.steps_for(bench.data["train_images"].shape[0]),
            seed=seed,
            momentum=config.momentum,
        )
        acc = 100.0 * kit.accuracy_on_test(model, data, bench.device)
    tail = losses[-50:]
    loss = sum(tail) / len(tail)
    return {
        "lr": lr,
        "metrics": {
            ("val_error" if validate else METRIC): (100.0 - acc) if validate else acc,
            "train_loss_last50": kit.json_float(loss),
        },
        "diverged": not math.isfinite(loss),
    }


def _tune_cell(config: PlacementConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    (activation, lr), placement = cell.setting, cell.variant
    got = train_run(config, activation, placement, lr, cell.seed, bench, validate=True)
    error = got["metrics"]["val_error"]
    return {"lr": lr, "val_error": None if got["diverged"] else error}


def _main_cell(config: PlacementConfig, lrs: dict, cell: Cell, bench: Bench) -> dict[str, Any]:
    lr = lrs[cell.setting][cell.variant]
    if lr is None:
        return {"lr": None, "metrics": None}
    return train_run(config, cell.setting, cell.variant, lr, cell.seed, bench, validate=False)


def tune_grid(config: PlacementConfig) -> Grid:
    """(activation, lr) x placement on the tuning seed (units ``tune-ACTIVATION-lrLR-PLACEMENT``)."""
    return kit.paired.tune_grid(config.activations, PLACEMENTS, config.lrs, config.tune_seed)


_EMPTY = {METRIC: math.nan, "train_loss_last50": math.nan}


def summarize(
    config: PlacementConfig, ctx: LabContext, run: GridRun, tuned: kit.paired.Tuned
) -> LabOutcome:
    """The tuning table, accuracy per arm, the claim with its interval, the figure."""
    declared = specs(config)
    per_seed = run.per_seed(lambda r: r["metrics"] if r["metrics"] is not None else _EMPTY)
    raw = {
        "per_seed": per_seed,
        "specs": [spec_record(s) for s in declared],
        **tuned.record(
            config,
            f"validation error (%, the last {config.validation} training images held out)",
        ),
    }
    verdicts, evidences = kit.apply_rules({"raw": raw}, CLAIMS)
    raw["claims"] = list(evidences.values())
    cell = kit.mean_std_cell
    tables = [
        tuned.table(
            "Learning-rate tuning: validation error (%) on the tuning seed (the lowest is chosen)",
            ["activation", "placement"],
            config.lrs,
            [
                ((a, p), tuned.values.get(a, {}).get(p, {}), tuned.lr(a, p))
                for a in config.activations
                for p in PLACEMENTS
            ],
        ),
        Table(
            f"MLP {'-'.join(map(str, (784, *config.hidden, 10)))}, each arm at its tuned lr, "
            f"mean ± std over {config.seeds} seeds",
            ["activation", "placement", "lr", "test accuracy %", "final train loss"],
            [
                [
                    a,
                    PLACEMENTS[p],
                    tuned.lr(a, p),
                    cell(v[METRIC]),
                    cell(v["train_loss_last50"]),
                ]
                for a, arms in per_seed.items()
                for p, v in arms.items()
            ],
        ),
        kit.paired.claims_table(raw["claims"], "points"),
    ]
    plot_arms(
        {
            f"{a}\n{p}": per_seed.get(a, {}).get(p, {}).get(METRIC, [])
            for a in config.activations
            for p in PLACEMENTS
        },
        ctx.out_dir / "placement.png",
        ylabel="test accuracy (%)",
        title="BN before or after the activation, each arm at its tuned lr (paired seeds)",
    )
    return LabOutcome(
        tables=tables,
        verdicts=verdicts,
        figures=[
            Figure(
                "placement.png",
                "Test accuracy (full test set, lr decayed to 0) per activation and placement: "
                "dots per seed joined by seed, mean ± 95% t interval.",
            )
        ],
        raw=raw,
        notes=[
            *tuned.notes(raw),
            f"SGD momentum {config.momentum:g}, batch {config.batch}, {config.epochs} epochs, "
            f"lr decayed linearly to 0; BN: {config.norm}.",
        ],
    )


CLAIMS = kit.register_claims(
    "placement",
    kit.ClaimRule(
        "bn-before-activation",
        "BN goes before the activation: that placement gives a higher test accuracy than BN "
        f"after the activation, each at its best lr ({SENTENCE})",
        SOURCE,
        "declared ClaimSpec (bnlab.lab.stats): primary metric test accuracy (%) on the full "
        "test set at the end of a run whose lr decays to 0, arm before against after, "
        "direction higher, settings ReLU and sigmoid (MLP 784-256-256-10), paired by seed, "
        "Holm, TOST margin ±0.3 points, at least 5 seeds, runs within 2 points of chance "
        "excluded; each arm at the lr of the grid 0.01-1 with the lowest validation error "
        "on tuning seed 1000.",
        stats_rule("bn-before-activation"),
        kit.paired.measured_text,
        sentence=SENTENCE,
        literature=Literature(
            "Ioffe & Szegedy 2015, arXiv 1502.03167, section 3.2 (before the nonlinearity); "
            "ducha-aiki/caffenet-benchmark, batchnorm.md (a public benchmark, not a paper)",
            "CaffeNet-like net on ImageNet at 128 px, one run per placement",
            "top-1 accuracy 0.474 before (0.478 with scale and bias) against 0.499 after "
            "the ReLU; the paper itself reports no comparison of placements",
            "context-dependent",
            "ours: a 2-hidden-layer MLP on Fashion-MNIST, 938 steps, 5 paired seeds at each "
            "arm's tuned lr; theirs: a convolutional net on ImageNet, single runs",
        ),
    ),
)

SPEC = register_lab(
    kit.paired.tuned_lab(
        name="placement",
        title="BN before or after the activation, each at its tuned lr",
        summary=(
            "Tests the seeds' placement of BN before the activation against after it: an MLP "
            "784-256-256-10 with ReLU and with sigmoid activations, BN before or after each "
            "activation, SGD momentum 0.9, batch 128, 2 epochs, lr decayed to 0, each arm at "
            "its own lr (grid 0.01-1, tuned on a separate seed's validation split), 5 paired "
            "seeds; primary metric test accuracy on the full test set; paired t, Holm, TOST "
            "margin 0.3 points."
        ),
        config_type=PlacementConfig,
        tune=(tune_grid, _tune_cell),
        measure=(main_grid, _main_cell),
        criterion="val_error",
        summarize=summarize,
        full_time="about 3 min on 2 quiet CPU cores (40 runs of about 7 s of CPU each)",
    )
)
