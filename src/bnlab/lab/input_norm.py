"""``bnlab lab input-norm``: does standardizing the inputs help shallow models train?

The seeds begin with it: for shallow models, standardize the input features to mean 0 and
standard deviation 1 so that training is more stable (浅层模型的输入标准化,
``000_3d8114077ba70cad.txt``; d2l's chapter, ``004_deb69101c4c8736e.txt``, starts from the
same preprocessing step). Measured here on two shallow models:

* ``softmax``: softmax regression (one Linear layer, 784 -> 10);
* ``mlp``: one hidden layer (784 -> ``hidden`` -> 10, ``activation``);

each fed three versions of the pixels:

* ``raw``: values in [0, 1] (what ``DeviceLoader`` gives);
* ``global``: ``(x - m) / s`` with one mean and std over all pixels of the training subset;
* ``per_pixel``: each pixel standardized by its own mean and std over the training subset
  (the std clamped below at ``min_std``: border pixels are nearly constant, and dividing
  by a near-zero std would blow up the rare test image that lights them);

and each with and without BN: for ``softmax`` a BatchNorm1d on the 784 inputs (BN as a
learned input standardization), for ``mlp`` BN on the hidden layer, before the
activation (the book's placement). Plain SGD, several seeds; measured: the training loss
of the last epoch (the claim is about training), the first epoch's, and test accuracy.

Paper: LeCun, Bottou, Orr & Müller, "Efficient BackProp" (1998, section 4.3, "Normalizing
the inputs"); Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, compare, register_lab
from bnlab.lab.kit import apply_rules, directions_verdict, fits, mean_std, pick, take
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models import create
from bnlab.models.norms import make_norm
from bnlab.plots.sweeps import plot_grouped_bars

__all__ = ["INPUTS", "MODELS", "InputNormConfig", "Standardize", "input_norm_rule", "measure"]

SOURCE = "000_3d8114077ba70cad.txt"
CLAIM = "Standardizing the inputs helps shallow models train (浅层模型的输入标准化)"
MODELS = {"softmax": "softmax regression", "mlp": "one hidden layer"}
INPUTS = {"raw": "raw [0, 1]", "global": "global standardization", "per_pixel": "per-pixel"}


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed ``mean`` and ``std`` (buffers, not trained).

    Args:
        mean, std: tensors broadcastable to the input, e.g. scalars or ``(1, 1, 28, 28)``.

    Raises:
        ValueError: a ``std`` that is not positive everywhere.
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if not bool((std > 0).all()):
            raise ValueError(
                f"Standardize: std must be > 0 everywhere, got minimum {float(std.min())}"
            )
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class InputNormConfig(fits.FitConfig):
    """Settings of ``input-norm`` (defaults: the full run).

    Args:
        seeds, norm, train_size, test_size, epochs, batch_size: see ``FitConfig``.
        hidden: the MLP's hidden width.
        activation: the MLP's hidden activation ("sigmoid", "relu", "tanh").
        lr: SGD learning rate (every cell).
        min_std: lower clamp of the per-pixel std (pixel units, [0, 1] scale).
    """

    hidden: int = 256
    activation: str = "sigmoid"
    lr: float = 0.1
    min_std: float = 0.05

    QUICK = fits.FitConfig.quick_settings(hidden=32)


def standardizer(images: Tensor, inputs: str, min_std: float) -> Standardize | None:
    """The fixed input transform of ``inputs`` fitted on ``images`` (uint8 ``(N, 28, 28)``).

    Raises:
        ValueError: unknown ``inputs``.
    """
    x = images.float().div(255.0).unsqueeze(1)  # (N, 1, H, W) in [0, 1]
    if inputs == "raw":
        return None
    if inputs == "global":
        return Standardize(x.mean(), x.std().clamp_min(min_std))
    if inputs == "per_pixel":
        return Standardize(x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(min_std))
    raise ValueError(f"unknown inputs {inputs!r}; choose one of: {', '.join(INPUTS)}")


def build_model(config: InputNormConfig, model: str, bn: bool, pre: nn.Module | None) -> nn.Module:
    """The shallow model, with BN on the input (softmax) or the hidden layer (mlp)."""
    layers: list[nn.Module] = [] if pre is None else [pre]
    if model == "softmax":
        if bn:
            norm = make_norm(config.norm, 784, "1d")
            if norm is None:
                raise ValueError(f"input-norm: norm {config.norm!r} gives no layer; choose a BN")
            layers += [nn.Flatten(), norm]
        layers.append(create("mlp", norm="none", hidden=()))
    elif model == "mlp":
        layers.append(
            create(
                "mlp",
                norm=config.norm if bn else "none",
                hidden=(config.hidden,),
                activation=config.activation,
                norm_position="before",
            )
        )
    else:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    return nn.Sequential(*layers)


def grid(config: InputNormConfig) -> Grid:
    """(model, inputs) x BN or not x seed."""
    return Grid(
        variants=("nobn", "bn"),
        seeds=config.seeds,
        settings=[(model, inputs) for model in MODELS for inputs in INPUTS],
        key=lambda c: f"{c.setting[0]}-{c.setting[1]}-{c.variant}-seed{c.seed}",
    )


def measure(config: InputNormConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one (model, inputs, BN, seed), the standardizer fitted on the training subset."""
    model, inputs = cell.setting
    train_images, _ = take(bench.data, "train", config.train_size)
    pre = standardizer(train_images, inputs, config.min_std)
    net = build_model(config, model, cell.variant == "bn", pre)
    return config.fit(net, bench, cell.seed, lr=config.lr)


def _bn_text(model: str, bn: bool) -> str:
    if not bn:
        return "no BN"
    return "BN on the inputs" if model == "softmax" else "BN on the hidden layer"


def summarize(config: InputNormConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """The table of losses and accuracies, the raw-vs-standardized comparisons without
    BN, the verdict, two figures."""
    cells: list[dict[str, Any]] = []
    histories: dict[str, list[list[float | None]]] = {}
    for c, got in run:
        (model, inputs), bn, history = c.setting, c.variant == "bn", got["history"]
        record = fits.fit_record(got, ("diverged",), model=model, inputs=inputs, bn=bn, seed=c.seed)
        record["train_loss_epoch1"] = history[0]["train_loss"] if history else None
        cells.append(record)
        losses = [r["train_loss"] for r in history]
        histories.setdefault(f"{model}|{inputs}|{bn}", []).append(losses)
    raw = {"cells": cells, "train_loss_curves": histories, "min_std": config.min_std}
    verdicts, evidences = apply_rules({"raw": raw}, [(CLAIM, input_norm_rule, _measured)])
    rows = []
    for (model, inputs), bn in ((s, bn) for s in run.settings() for bn in (False, True)):
        where = {"model": model, "inputs": inputs, "bn": bn}
        loss1 = mean_std(pick(cells, "train_loss_epoch1", **where))[0]
        spread = fits.mean_std_row(cells, ("train_loss", "test_acc"), **where)
        rows.append([MODELS[model], INPUTS[inputs], _bn_text(model, bn), loss1, *spread])
    table = Table(
        "Shallow models: input standardization with and without BN (mean, std over seeds)",
        ["model", "inputs", "BN", "train loss ep1", "train loss last", "std", "test acc", "std"],
        rows,
    )
    keys = ("train_loss_diff", "train_loss_se", "direction", "test_acc_diff")
    cmp_table = Table(
        "Without BN: raw minus standardized (positive loss difference = standardizing helps)",
        ["model", "standardization", "train loss diff", "se", "helps?", _ACC_DIFF],
        [
            [MODELS[c["model"]], INPUTS[c["inputs"]], *(c[k] for k in keys)]
            for c in evidences[CLAIM]["comparisons"]
        ],
    )
    figures = [_bars(ctx, cells, *f) for f in _FIGURES]
    return LabOutcome(
        tables=[table, cmp_table], verdicts=verdicts, figures=figures, raw=raw, notes=_notes(config)
    )


_ACC_DIFF = "test acc diff (std - raw)"
_FIGURES = (
    ("train_loss", "final training loss", "input_norm_loss.png"),
    ("test_acc", "final test accuracy", "input_norm_acc.png"),
)
_BN_LABELS = ((False, "no BN"), (True, "BN (inputs for softmax, hidden for mlp)"))


def _bars(
    ctx: LabContext, cells: list[dict[str, Any]], metric: str, label: str, file: str
) -> Figure:
    """Grouped bars of ``metric`` by model and inputs, without and with BN."""
    groups = {
        bn_label: {
            f"{model}\n{inputs}": pick(cells, metric, model=model, inputs=inputs, bn=bn)
            for model in MODELS
            for inputs in INPUTS
        }
        for bn, bn_label in _BN_LABELS
    }
    title = "Shallow models and input standardization"
    plot_grouped_bars(groups, ctx.out_dir / file, ylabel=label, title=title)
    caption = (
        f"{label.capitalize()} by model, input standardization and BN: mean, whisker = "
        "std over seeds."
    )
    return Figure(file, caption)


def _notes(config: InputNormConfig) -> list[str]:
    return [
        "BN placement: softmax regression gets a BatchNorm1d on its 784 inputs; the "
        "one-hidden-layer MLP gets BN on its hidden layer, before the activation.",
        f"per-pixel std clamped below at {config.min_std} (pixel units).",
    ]


def _measured(evidence: Mapping[str, Any]) -> str:
    return (
        f"standardizing lowered the final training loss (2 standard errors) in "
        f"{evidence['helps']} of {len(evidence['comparisons'])} model/standardization pairs "
        f"without BN, raised it in {evidence['hurts']}"
    )


def input_norm_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "standardizing inputs helps shallow models train"."""
    cells = results["raw"]["cells"]
    comparisons = []
    for model in MODELS:
        raw_loss = pick(cells, "train_loss", model=model, inputs="raw", bn=False)
        raw_acc = pick(cells, "test_acc", model=model, inputs="raw", bn=False)
        for inputs in ("global", "per_pixel"):
            std_loss = pick(cells, "train_loss", model=model, inputs=inputs, bn=False)
            std_acc = pick(cells, "test_acc", model=model, inputs=inputs, bn=False)
            if not raw_loss or not std_loss:
                continue
            c = compare(raw_loss, std_loss)
            acc = compare(std_acc, raw_acc)
            comparisons.append(
                {
                    "model": model,
                    "inputs": inputs,
                    "train_loss_diff": c.diff,
                    "train_loss_se": c.se,
                    "direction": {"greater": "helps", "less": "hurts"}.get(c.direction, "unclear"),
                    "test_acc_diff": acc.diff,
                    "test_acc_direction": acc.direction,
                }
            )
    if not comparisons:
        raise ValueError("input-norm results hold no cells without BN to compare")
    directions = [c["direction"] for c in comparisons]
    helps, hurts = directions.count("helps"), directions.count("hurts")
    evidence = {"comparisons": comparisons, "helps": helps, "hurts": hurts}
    return evidence, directions_verdict(directions, "helps")


SPEC = register_lab(
    grid_lab(
        name="input-norm",
        title="Input standardization of shallow models, with and without BN",
        summary=(
            "Tests 'standardizing the inputs helps shallow models train': softmax regression "
            "and a one-hidden-layer MLP (256 sigmoid units) on raw [0, 1] pixels, globally "
            "standardized and per-pixel standardized inputs, each without and with BN (on "
            "the inputs for softmax regression, on the hidden layer for the MLP); plain SGD "
            "lr 0.1, 3 seeds; final training loss and test accuracy. Full run: 5000 training "
            "and 2000 test images, 3 epochs, batch 64."
        ),
        config_type=InputNormConfig,
        grid=grid,
        measure=measure,
        summarize=summarize,
        full_time=(
            "1.9 min wall (34 s of CPU time) with --threads 1 on the shared 2-core machine "
            "under heavy load from other jobs (2026-11-26)"
        ),
    )
)

register_claim(
    Claim(
        key="input-standardization-helps-shallow",
        claim=CLAIM,
        source=SOURCE,
        experiment="input-norm",
        rule_text=(
            "Without BN, for each shallow model (softmax regression, one hidden layer) and each "
            "standardization (global, per-pixel): the last epoch's training loss with raw [0, 1] "
            "pixels minus with standardized inputs, over seeds (Welch, a difference counts beyond "
            "2 standard errors). supported: standardizing lowers the loss in every pair; not "
            "supported: in none; mixed: in some."
        ),
        rule=input_norm_rule,
    )
)
