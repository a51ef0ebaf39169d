"""``bnlab lab input-norm``: does standardizing the inputs help shallow models train?

The seeds begin with it: for shallow models, standardize every input feature to mean 0
and standard deviation 1, which "reduces the differences of scale between features and
makes training more stable" (减小了不同特征之间的尺度差异,使得网络的训练更加稳定,
``000_3d8114077ba70cad.txt``). LeCun, Bottou, Orr & Müller, "Efficient BackProp" (1998,
section 4.3) give the reason: inputs with a non-zero mean or unequal variances make the
Hessian ill-conditioned, and gradient descent slow.

Design (second edition, issue 17). The first edition used one lr for every input,
which confounds the conditioning with the step size (a rescaled input is a rescaled
lr). Now each (model, input) arm runs at its own lr:

* models: softmax regression (784 -> 10) and one hidden layer (784 -> 128 sigmoid -> 10),
  PyTorch's default init drawn from the seed (the same weights for every input);
* inputs: ``raw`` pixels in [0, 1]; ``global``: ``(x - m) / s`` with one mean and std
  over all training pixels; ``per_pixel``: each pixel by its own training mean and std
  (the std clamped below at 0.05: border pixels are nearly constant);
* plain SGD, batch 128, 2 epochs of the 60,000 training images (938 steps), lr decayed
  linearly to 0 (a settled point), the same data order per seed (5 paired seeds);
* each arm's lr from the grid 0.003 ... 10 (factors of about 3; 10 was added after the
  first full run chose 3, then the grid's edge, for every MLP arm), chosen before the
  measured runs on a separate tuning seed (1000) by the lowest final training loss
  (``kit.paired.TUNE_RULE``).

Measured: the training loss over the full training set at the end (**primary**: the
claim is about training), the test accuracy on the full 10,000-image test set, and,
once, the conditioning of each input: the eigenvalues of the second-moment matrix
``E[x x^T]`` of the inputs with a constant 1 appended (the Hessian of least squares on a
linear model with a bias, LeCun et al.'s argument), and of the covariance.

Claim (``specs``): ``input-standardization-helps-shallow``: standardized inputs reach a
lower final training loss than raw ones, each at its best lr; settings: each model x
standardization (4); paired t, Holm, TOST margin 0.01 nats (about 2-3 % of the final
loss of these models; a smaller gap does not move their accuracy visibly); a seed within
2 points of chance is excluded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab import kit, stats
from bnlab.lab.claims import Literature, spec_record
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, register_lab
from bnlab.lab.runner import Bench, Cell, Grid, GridRun
from bnlab.lab.stats_claims import stats_claim
from bnlab.models import create
from bnlab.plots.effects import plot_arms
from bnlab.plots.sweeps import plot_sweep
from bnlab.train import evaluate

__all__ = [
    "CLAIMS",
    "INPUTS",
    "MODELS",
    "InputNormConfig",
    "Standardize",
    "build_model",
    "conditioning",
    "main_cell",
    "main_grid",
    "specs",
    "standardizer",
    "summarize",
    "train_run",
    "tune_cell",
    "tune_grid",
]

SOURCE = "000_3d8114077ba70cad.txt"
SENTENCE = "这样做的好处是减小了不同特征之间的尺度差异,使得网络的训练更加稳定"
MODELS = {"softmax": "softmax regression", "mlp": "one hidden layer (128 sigmoid)"}
INPUTS = {"raw": "raw [0, 1]", "global": "global standardization", "per_pixel": "per-pixel"}
METRIC = "train_loss"


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
class InputNormConfig(kit.paired.EpochsConfig):
    """Settings of ``input-norm`` (defaults: the full run): ``kit.paired.EpochsConfig``'s
    (5 paired seeds, all images, batch 128, 2 epochs, the lr grid ``lrs``) and these.

    Args:
        margin: the claim's equivalence margin, in nats of training loss.
        hidden: the MLP's hidden width.
        activation: the MLP's hidden activation.
        min_std: lower clamp of the per-pixel std (pixel units, [0, 1] scale).

    Raises:
        ValueError: a setting that is not > 0, or an empty or non-positive lr grid.
    """

    lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    margin: float = 0.01
    hidden: int = 128
    activation: str = "sigmoid"
    min_std: float = 0.05

    QUICK = kit.paired.EpochsConfig.quick_settings(lrs=(0.01, 0.1), hidden=32)
    POSITIVE = ("seeds", "batch", "epochs", "hidden", "min_std", "margin")


def specs(config: InputNormConfig) -> list[stats.ClaimSpec]:
    """The claim, declared before the run (see the module docstring)."""
    standardized = [_setting(m, i) for m in MODELS for i in ("global", "per_pixel")]
    return kit.paired.claim_specs(
        config,
        METRIC,
        [("input-standardization-helps-shallow", "lower", "standardized", "raw", standardized)],
        chance=kit.paired.chance_near("test_acc"),
    )


def _setting(model: str, inputs: str) -> str:
    return f"{model}, {inputs}"


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


def build_model(config: InputNormConfig, model: str, pre: nn.Module | None) -> nn.Module:
    """The shallow model behind the fixed input transform ``pre`` (None: raw pixels).

    Raises:
        ValueError: an unknown model.
    """
    if model == "softmax":
        net = create("mlp", norm="none", hidden=())
    elif model == "mlp":
        net = create("mlp", norm="none", hidden=(config.hidden,), activation=config.activation)
    else:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    return net if pre is None else nn.Sequential(pre, net)


def conditioning(images: Tensor, pre: nn.Module | None) -> dict[str, float]:
    """Eigenvalue summaries of the inputs' second moment (with a constant 1 appended:
    the least-squares Hessian of a linear model with a bias) and of their covariance.

    Returns:
        ``second_moment_*`` and ``covariance_*``: ``max``, ``min``, ``median`` eigenvalue,
        ``condition`` (max / min; inf when min <= 0) and ``condition_median`` (max /
        median).
    """
    with torch.no_grad():
        x = kit.float_images(images)
        if pre is not None:
            x = pre(x)
        x = x.flatten(1).double()
    ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
    xa = torch.cat([x, ones], 1)
    second = xa.T @ xa / x.shape[0]
    centered = x - x.mean(0)
    covariance = centered.T @ centered / (x.shape[0] - 1)
    out: dict[str, float] = {}
    for name, matrix in (("second_moment", second), ("covariance", covariance)):
        ev = torch.linalg.eigvalsh(matrix)
        top, low, mid = float(ev[-1]), float(ev[0]), float(ev.median())
        out[f"{name}_max"] = top
        out[f"{name}_min"] = low
        out[f"{name}_median"] = mid
        out[f"{name}_condition"] = top / low if low > 0 else math.inf
        out[f"{name}_condition_median"] = top / mid if mid > 0 else math.inf
    return {k: kit.json_float(v) for k, v in out.items()}


def train_run(
    config: InputNormConfig, model: str, inputs: str, lr: float, seed: int, bench: Bench
) -> dict[str, Any]:
    """One run: SGD at ``lr`` decayed to 0; the final training loss over the whole
    training set and the test accuracy (%)."""
    data, device = bench.data, bench.device
    images, labels = data["train_images"], data["train_labels"]
    steps = config.steps_for(images.shape[0])
    with kit.cpu_threads(config.threads):
        pre = standardizer(images, inputs, config.min_std)
        net, losses = kit.paired.train_new(
            lambda: build_model(config, model, pre),
            data,
            bench,
            lr=lr,
            batch=config.batch,
            steps=steps,
            seed=seed,
        )
        train = evaluate(net, DeviceLoader(images, labels, 1000, shuffle=False, device=device))
        test_acc = 100.0 * kit.accuracy_on_test(net, data, device)
    return {
        "lr": lr,
        "metrics": {
            METRIC: kit.json_float(train["loss"]),
            "test_acc": test_acc,
            "train_loss_first100": kit.json_float(sum(losses[:100]) / max(1, len(losses[:100]))),
        },
    }


def tune_cell(config: InputNormConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    (model, lr), inputs = cell.setting, cell.variant
    got = train_run(config, model, inputs, lr, cell.seed, bench)
    return {"lr": lr, "final_train_loss": got["metrics"][METRIC]}


def main_cell(config: InputNormConfig, lrs: dict, cell: Cell, bench: Bench) -> dict[str, Any]:
    lr = lrs[cell.setting][cell.variant]
    if lr is None:
        return {"lr": None, "metrics": None}
    return train_run(config, cell.setting, cell.variant, lr, cell.seed, bench)


def main_grid(config: InputNormConfig) -> Grid:
    """The measured runs: model x input x seed (units ``MODEL-INPUT-seedN``), seeds outermost."""
    return kit.paired.measured_grid(INPUTS, config.seeds, MODELS)


def tune_grid(config: InputNormConfig) -> Grid:
    """(model, lr) x input on the tuning seed (units ``tune-MODEL-lrLR-INPUT``)."""
    return kit.paired.tune_grid(MODELS, INPUTS, config.lrs, config.tune_seed)


def _conditioning_unit(
    config: InputNormConfig, ctx: LabContext, data: Mapping[str, Tensor]
) -> dict[str, Any]:
    """The unit ``conditioning``: each input's :func:`conditioning` (after the runs)."""
    images = data["train_images"]
    return {
        "cond": ctx.unit(
            "conditioning",
            lambda: {
                i: conditioning(images, standardizer(images, i, config.min_std)) for i in INPUTS
            },
        )
    }


_EMPTY = {METRIC: math.nan, "test_acc": math.nan, "train_loss_first100": math.nan}


def per_seed_of(run: GridRun) -> dict[str, dict[str, Any]]:
    """The claim's ``{setting: {"standardized" | "raw": {metric: [per seed]}}}``."""
    by = run.per_seed(missing=_EMPTY)
    return {
        _setting(m, i): {"standardized": by[m][i], "raw": by[m]["raw"]}
        for m in MODELS
        for i in ("global", "per_pixel")
        if m in by
    }


def summarize(
    config: InputNormConfig,
    ctx: LabContext,
    run: GridRun,
    tuned: kit.paired.Tuned,
    cond: Mapping[str, Mapping[str, float]],
) -> LabOutcome:
    """Per-arm losses and accuracies, the tuning and conditioning tables, the claim, figures."""
    declared = specs(config)
    per_arm = run.per_seed(missing=_EMPTY)
    raw = {
        "per_seed": per_seed_of(run),
        "per_arm": per_arm,
        "specs": [spec_record(s) for s in declared],
        **tuned.record(config, "final training loss (whole training set)"),
        "conditioning": cond,
    }
    verdicts = kit.decide(raw, CLAIMS)
    cell = kit.mean_std_cell
    tables = [
        tuned.table(
            "Learning-rate tuning: final training loss on the tuning seed (the lowest is chosen)",
            ["model", "inputs"],
            config.lrs,
            [tuned.row(m, i, (MODELS[m], INPUTS[i])) for m in MODELS for i in INPUTS],
        ),
        Table(
            f"Each arm at its tuned lr, mean ± std over {config.seeds} seeds",
            [
                "model",
                "inputs",
                "lr",
                "final train loss",
                "test acc %",
                "train loss, first 100 steps",
            ],
            [
                [
                    MODELS[m],
                    INPUTS[i],
                    tuned.lr(m, i),
                    cell(v[METRIC]),
                    cell(v["test_acc"]),
                    cell(v["train_loss_first100"]),
                ]
                for m, arms in per_arm.items()
                for i, v in arms.items()
            ],
        ),
        Table(
            "Conditioning of the inputs (training set): eigenvalues of E[x x^T] with a bias "
            "input (the least-squares Hessian) and of the covariance",
            [
                "inputs",
                "E[xx^T] max",
                "E[xx^T] min",
                "max/min",
                "max/median",
                "cov max/min",
                "cov max/median",
            ],
            [
                [
                    INPUTS[i],
                    f"{c['second_moment_max']:.4g}",
                    f"{c['second_moment_min']:.3g}",
                    _big(c["second_moment_condition"]),
                    _big(c["second_moment_condition_median"]),
                    _big(c["covariance_condition"]),
                    _big(c["covariance_condition_median"]),
                ]
                for i, c in cond.items()
            ],
        ),
        kit.paired.claims_table(raw["claims"], "nats"),
    ]
    plot_arms(
        {
            f"{m}\n{i}": per_arm.get(m, {}).get(i, {}).get(METRIC, [])
            for m in MODELS
            for i in INPUTS
        },
        ctx.out_dir / "input_norm.png",
        ylabel="final training loss (nats)",
        title="Shallow models, each input at its tuned lr (paired seeds)",
    )
    plot_sweep(
        {
            f"{m}, {i}": {
                "x": list(config.lrs),
                "runs": [[tuned.criterion(m, i, lr) for lr in config.lrs]],
            }
            for m in MODELS
            for i in INPUTS
        },
        ctx.out_dir / "input_norm_tuning.png",
        xlabel="learning rate",
        ylabel="final training loss (tuning seed)",
        title="Which lr suits which input (tuning seed)",
    )
    return LabOutcome(
        tables=tables,
        verdicts=verdicts,
        figures=[
            Figure(
                "input_norm.png",
                "Final training loss per model and input at each arm's tuned lr: dots per seed "
                "joined by seed, mean ± 95% t interval.",
            ),
            Figure(
                "input_norm_tuning.png",
                "Final training loss against the lr on the tuning seed, per model and input: "
                "the standardized inputs need other step sizes than raw pixels.",
            ),
        ],
        raw=raw,
        notes=[
            *tuned.notes(raw),
            f"SGD batch {config.batch}, {config.epochs} epochs, lr decayed linearly to 0; "
            f"per-pixel std clamped below at {config.min_std}.",
        ],
    )


def _big(x: float | None) -> str:
    return "inf" if x is None else f"{x:.3g}"


CLAIMS = kit.register_claims(
    "input-norm",
    stats_claim(
        "input-standardization-helps-shallow",
        "Standardizing the inputs (mean 0, std 1) helps shallow models train: a lower final "
        f"training loss than raw pixels, each input at its best lr ({SENTENCE})",
        SOURCE,
        "declared ClaimSpec (bnlab.lab.stats): primary metric the final training loss over "
        "the whole training set (lr decayed to 0), arm standardized against raw, direction "
        "lower, settings softmax regression and a one-hidden-layer sigmoid MLP x global and "
        "per-pixel standardization, paired by seed, Holm, TOST margin ±0.01 nats, at least 5 "
        "seeds, runs within 2 points of chance (test accuracy) excluded; each arm at the lr "
        "of the grid 0.003-10 with the lowest final training loss on tuning seed 1000.",
        sentence=SENTENCE,
        literature=Literature(
            "LeCun, Bottou, Orr & Mueller 1998, 'Efficient BackProp', section 4.3 "
            "(normalizing the inputs) and section 5 (the Hessian's eigenvalues)",
            "linear and shallow networks trained by (stochastic) gradient descent",
            "zero-mean, equal-variance (and decorrelated) inputs reduce the eigenvalue "
            "spread of the Hessian and so speed up convergence (analysis and worked "
            "examples; no benchmark numbers)",
            "supported",
            "ours: Fashion-MNIST pixels (bounded, many near-constant border pixels), 938 SGD "
            "steps, each input at its own tuned lr; global standardization only shifts and "
            "rescales all pixels together",
        ),
    ),
)

SPEC = register_lab(
    kit.paired.tuned_lab(
        name="input-norm",
        title="Input standardization of shallow models, each input at its tuned lr",
        summary=(
            "Tests 'standardizing the inputs helps shallow models train' without confounding "
            "the conditioning with the step size: softmax regression and a one-hidden-layer "
            "sigmoid MLP on raw, globally standardized and per-pixel standardized pixels, each "
            "at its own lr (grid 0.003-10, tuned on a separate seed), SGD batch 128, 2 epochs, "
            "lr decayed to 0, 5 paired seeds; primary metric the final training loss, test "
            "accuracy on the full test set shown; the eigenvalue spread of each input's "
            "second-moment matrix and covariance beside."
        ),
        config_type=InputNormConfig,
        extras=_conditioning_unit,
        full_time=(
            "about 2 min on 2 quiet CPU cores (72 runs of 1-2 s of CPU each, measured at load 6-9; "
            "the conditioning unit 18 s of CPU)"
        ),
    )
)
