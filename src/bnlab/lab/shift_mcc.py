"""``bnlab lab shift-mcc``: covariate-shift detection with the Matthews correlation coefficient.

One seed (``002_adae9b0709a5d84d.txt``) proposes the Matthews correlation coefficient
(MCC) to tell whether covariate shift happened. Its operational form is *adversarial
validation*: a classifier learns to tell sample A (label 0) from sample B (label 1) on
one half of each, and its MCC on the other, held-out half is the shift score. Without
shift no classifier beats chance and the score is about 0; the more the distributions
differ, the closer to 1.

The classifier (:func:`adversarial_mcc`) is a one-hidden-layer MLP (``hidden`` ReLU
units; ``hidden=0`` gives logistic regression) on the flattened inputs, each feature
standardized with the training half's mean and variance, trained full-batch with Adam
and a BCE loss for a fixed number of steps; a held-out example is called "B" when its
logit is positive. A hidden layer matters: a variance change (Gaussian noise) is
invisible to a linear classifier on raw pixels.

Four uses:

1. calibration (the null): two random halves of one sample of the test split, over
   ``calibration_seeds`` draws. "Detectable" means a score above the null mean plus
   ``null_sigmas`` (3) standard deviations of these calibration scores;
2. the train split against the test split of Fashion-MNIST;
3. a dose-response: half of a test sample against the other half shifted in
   brightness (``x + s``), contrast (``m + (1 - s)(x - m)``, ``m`` the image's mean) or
   Gaussian noise (``x + s * N(0, 1)``), each clipped to [0, 1], at several strengths ``s``;
4. internal covariate shift: d2l's LeNet (sigmoid) with and without BN trains with SGD;
   every ``probe_every`` steps a fixed probe set of training images goes through a copy
   of the network in train mode (BN uses the probe set's statistics, as in training)
   and the inputs of ``conv2``, ``fc1``, ``fc2`` and ``fc3`` are recorded. The shift
   score of a layer at step t is the MCC between its inputs at step t (first half of
   the probe images) and at step t + k (second half, so no image is on both sides);
   the same-step score (both halves at step t) is the layer's own null.

Paper: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167; Matthews (1975), "Comparison of
the predicted and observed secondary structure of T4 phage lysozyme"; Chicco & Jurman,
"The advantages of the Matthews correlation coefficient (MCC) over F1 score and accuracy
in binary classification evaluation" (BMC Genomics, 2020).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab.claims import Claim, holds_of, register_claim
from bnlab.lab.experiment import (
    Figure,
    LabContext,
    LabOutcome,
    LabSpec,
    Table,
    Verdict,
    compare,
    describe,
    register_lab,
    seeded,
)
from bnlab.lab.kit import (
    LabConfig,
    float_images,
    ladder_verdict,
    mean_std,
    number_or_na,
    probe_copy,
    take,
)
from bnlab.lab.runner import Bench, Cell, Grid, run_grid
from bnlab.models import create
from bnlab.plots.shift import plot_dose_response, plot_internal_mcc
from bnlab.train.steps import cycle, every, run_steps

__all__ = [
    "SHIFT_KINDS",
    "ShiftMccConfig",
    "adversarial_mcc",
    "decide_bn_reduces_ics",
    "decide_detects_shift",
    "decide_train_test",
    "matthews_corrcoef",
    "null_threshold",
    "run",
    "shift_images",
]

SOURCE = "002_adae9b0709a5d84d.txt"
CLAIM_DETECTS = "MCC detects covariate shift (如何判断是否已经出现协变量漂移: MCC)"
CLAIM_ICS = "BN reduces internal covariate shift, as measured by MCC (降低内部协变量漂移)"
CLAIM_SPLITS = "Fashion-MNIST's train and test splits show no detectable covariate shift"

SHIFT_KINDS: tuple[str, ...] = ("brightness", "contrast", "noise")
PROBED = ("conv2", "fc1", "fc2", "fc3")
VARIANTS = {"none": "LeNet, no BN", "bn": "LeNet + BN"}


def matthews_corrcoef(pred: Tensor, target: Tensor) -> float:
    """The Matthews correlation coefficient of binary predictions.

    ``MCC = (TP * TN - FP * FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN))``, the
    Pearson correlation of the two 0/1 vectors. When a factor of the denominator is 0
    (constant predictions or a single class), the correlation is undefined; it is
    returned as 0, "no better than chance", as scikit-learn does.

    Args:
        pred, target: 0/1 (or bool) tensors of the same shape ``(N,)``.

    Returns:
        A float in [-1, 1].

    Raises:
        ValueError: shapes differ, or a value is not 0 or 1.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"matthews_corrcoef: pred and target must have the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    for name, t in (("pred", pred), ("target", target)):
        bad = t[(t != 0) & (t != 1)]
        if bad.numel():
            raise ValueError(
                f"matthews_corrcoef: {name} must hold only 0 and 1, got {bad[0].item()!r}"
            )
    p, y = pred.bool().reshape(-1), target.bool().reshape(-1)
    # Python ints: the products of counts overflow float32 precision for large N.
    tp = int((p & y).sum())
    tn = int((~p & ~y).sum())
    fp = int((p & ~y).sum())
    fn = int((~p & y).sum())
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    if den == 0:
        return 0.0
    return (tp * tn - fp * fn) / math.sqrt(den)


def adversarial_mcc(
    a: Tensor,
    b: Tensor,
    *,
    seed: int = 0,
    hidden: int = 32,
    steps: int = 100,
    lr: float = 0.01,
    weight_decay: float = 1e-3,
    holdout: float = 0.5,
) -> dict[str, float]:
    """The shift score of two samples: a classifier's held-out MCC at telling them apart.

    Both samples are cut to the smaller size ``n`` (a seeded random subset), so chance
    is 50%; ``holdout`` of each side is held out. Features are standardized with the
    training part's mean and ``sqrt(var + 0.01 * mean(var))`` (the floor keeps constant
    pixels, such as the black border, from blowing up).

    Args:
        a, b: samples ``(N_a, *)`` and ``(N_b, *)`` with the same feature shape.
        seed: fixes the subsets, the split and the classifier's initialisation.
        hidden: hidden ReLU units (0: logistic regression).
        steps, lr, weight_decay: full-batch Adam training.
        holdout: the held-out fraction of each side, in (0, 1).

    Returns:
        ``{"mcc", "accuracy", "n_train", "n_holdout"}`` (the counts over both sides).

    Raises:
        ValueError: feature shapes differ, too few examples, or a bad ``holdout``.
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"adversarial_mcc: samples must have the same feature shape, got "
            f"{tuple(a.shape[1:])} and {tuple(b.shape[1:])}"
        )
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"adversarial_mcc: holdout must be in (0, 1), got {holdout}")
    n = min(a.shape[0], b.shape[0])
    n_test = round(n * holdout)
    n_train = n - n_test
    if n_test < 1 or n_train < 1:
        raise ValueError(
            f"adversarial_mcc: need at least 2 examples per sample, got {a.shape[0]} and "
            f"{b.shape[0]}"
        )
    with seeded(seed) as gen:
        ia = torch.randperm(a.shape[0], generator=gen)[:n]
        ib = torch.randperm(b.shape[0], generator=gen)[:n]
        xa = a[ia].reshape(n, -1).to(torch.float32)
        xb = b[ib].reshape(n, -1).to(torch.float32)
        x_train = torch.cat([xa[:n_train], xb[:n_train]])
        y_train = torch.cat([torch.zeros(n_train), torch.ones(n_train)])
        x_test = torch.cat([xa[n_train:], xb[n_train:]])
        y_test = torch.cat([torch.zeros(n_test), torch.ones(n_test)])
        mean = x_train.mean(0)
        var = x_train.var(0, unbiased=False)
        scale = (var + 0.01 * var.mean().clamp_min(1e-12)).sqrt()
        x_train = (x_train - mean) / scale
        x_test = (x_test - mean) / scale
        d = x_train.shape[1]
        model: nn.Module
        if hidden > 0:
            model = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        else:
            model = nn.Linear(d, 1)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        run_steps(  # full batch: the same (x, y) every step
            model,
            itertools.repeat((x_train, y_train)),
            opt,
            steps=steps,
            forward=lambda m, x: m(x).squeeze(1),
            loss_fn=F.binary_cross_entropy_with_logits,
        )
        with torch.no_grad():
            pred = (model(x_test).squeeze(1) > 0).to(torch.float32)
    return {
        "mcc": matthews_corrcoef(pred, y_test),
        "accuracy": float((pred == y_test).float().mean()),
        "n_train": 2 * n_train,
        "n_holdout": 2 * n_test,
    }


def shift_images(x: Tensor, kind: str, strength: float, *, generator: torch.Generator) -> Tensor:
    """A shifted copy of images in [0, 1] (clipped back to [0, 1]).

    ``brightness``: ``x + s``; ``contrast``: ``m + (1 - s)(x - m)`` with ``m`` each
    image's mean (``s`` = 1 leaves a flat image); ``noise``: ``x + s * N(0, 1)``.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "brightness":
        out = x + strength
    elif kind == "contrast":
        m = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        out = m + (1.0 - strength) * (x - m)
    elif kind == "noise":
        out = x + strength * torch.randn(x.shape, generator=generator)
    else:
        raise ValueError(f"unknown shift {kind!r}; choose one of: {', '.join(SHIFT_KINDS)}")
    return out.clamp(0.0, 1.0)


def null_threshold(scores: Sequence[float], sigmas: float) -> float | None:
    """The detection threshold: mean + ``sigmas`` standard deviations of null scores."""
    stats = describe(scores)
    if stats["mean"] is None:
        return None
    return stats["mean"] + sigmas * (stats["std"] or 0.0)


@dataclass(frozen=True)
class ShiftMccConfig(LabConfig):
    """Settings of ``shift-mcc`` (defaults: the full run).

    Args:
        seeds: seeds of the train/test and dose-response scores and of the LeNet runs.
        sample_size: images per side of a comparison (half trains the classifier).
        calibration_seeds: draws of the null (two random halves of one test sample).
        null_sigmas: detectable = above null mean + this many null standard deviations.
        hidden, classifier_steps, classifier_lr, weight_decay: the adversarial classifier.
        brightness, contrast, noise: shift strengths (0 first: no shift).
        monotone_tolerance: a dose-response is monotone when no mean score drops by more
            than this from one strength to the next.
        ics_norm: the BN variant's norm in LeNet (``bnlab.models.available_norms()``).
        ics_train_size, ics_steps, ics_batch_size, ics_lr: LeNet's SGD training.
        probe_every: ``k``, the steps between probes (shift of step t against t + k).
        probe_size: probe images (two halves of ``probe_size / 2``).
        null_probes: probes (evenly spread) at which the same-step null is scored.
    """

    sample_size: int = 1500
    calibration_seeds: int = 10
    null_sigmas: float = 3.0
    hidden: int = 32
    classifier_steps: int = 100
    classifier_lr: float = 0.01
    weight_decay: float = 1e-3
    brightness: tuple[float, ...] = (0.0, 0.005, 0.02, 0.05, 0.2)
    contrast: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.3)
    noise: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3)
    monotone_tolerance: float = 0.03
    ics_norm: str = "torch"
    ics_train_size: int = 5000
    ics_steps: int = 240
    ics_batch_size: int = 64
    ics_lr: float = 0.9
    probe_every: int = 40
    probe_size: int = 800
    null_probes: int = 3

    QUICK = LabConfig.quick_settings(
        sample_size=200,
        calibration_seeds=3,
        classifier_steps=30,
        brightness=(0.0, 0.3),
        contrast=(0.0, 0.5),
        noise=(0.0, 0.3),
        ics_train_size=256,
        ics_steps=10,
        probe_every=10,
        probe_size=128,
        null_probes=1,
    )

    def levels(self, kind: str) -> tuple[float, ...]:
        return {"brightness": self.brightness, "contrast": self.contrast, "noise": self.noise}[kind]


def _flat(images: Tensor) -> Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 784)`` in [0, 1]."""
    return images.reshape(images.shape[0], -1).to(torch.float32) / 255.0


def _score(config: ShiftMccConfig, a: Tensor, b: Tensor, seed: int) -> dict[str, float]:
    return adversarial_mcc(
        a,
        b,
        seed=seed,
        hidden=config.hidden,
        steps=config.classifier_steps,
        lr=config.classifier_lr,
        weight_decay=config.weight_decay,
    )


def _halves(data: Mapping[str, Tensor], n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two disjoint random halves of ``2 n`` test images (fewer if the split is small)."""
    images, _ = take(data, "test", 2 * n, seed=seed)
    x = _flat(images)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 7919))
    half = x.shape[0] // 2
    return x[perm[:half]], x[perm[half : 2 * half]]


def _ics_unit(config: ShiftMccConfig, data: Mapping[str, Tensor], variant: str, seed: int) -> Any:
    """Train LeNet for ``ics_steps`` SGD steps; score each probed layer's shift per probe."""
    with seeded(seed):
        model = create("lenet", norm=config.ics_norm if variant == "bn" else "none")
    train_x, train_y = take(data, "train", config.ics_train_size, seed=0)
    loader = DeviceLoader(train_x, train_y, config.ics_batch_size, shuffle=True, seed=seed)
    probe_images, _ = take(data, "train", config.probe_size, seed=1)
    probe = float_images(probe_images)  # (P, 1, 28, 28)
    half = probe.shape[0] // 2
    opt = torch.optim.SGD(model.parameters(), lr=config.ics_lr)

    def record() -> dict[str, Tensor]:
        # A train-mode copy: BN uses the probe set's statistics, as in training.
        seen = probe_copy(model, probe, PROBED)
        return {n: seen[n].reshape(probe.shape[0], -1) for n in PROBED}

    probes: list[tuple[int, dict[str, Tensor]]] = [(0, record())]
    with seeded(seed):
        losses = run_steps(
            model,
            cycle(loader),
            opt,
            steps=config.ics_steps,
            train_mode=True,
            on_step=every(
                config.probe_every, lambda s: probes.append((s.done, record())), after=True
            ),
        )
    scores: dict[str, list[dict[str, Any]]] = {n: [] for n in PROBED}
    for i in range(len(probes) - 1):
        (t0, seen0), (t1, seen1) = probes[i], probes[i + 1]
        for n in PROBED:
            got = _score(config, seen0[n][:half], seen1[n][half : 2 * half], seed * 1000 + i)
            scores[n].append({"step": t0, "step_to": t1, "mcc": got["mcc"]})
    null: dict[str, list[float]] = {n: [] for n in PROBED}
    count = min(config.null_probes, len(probes))
    picks = sorted({round(j * (len(probes) - 1) / max(count - 1, 1)) for j in range(count)})
    for i in picks:
        _, seen = probes[i]
        for n in PROBED:
            got = _score(config, seen[n][:half], seen[n][half : 2 * half], seed * 1000 + 500 + i)
            null[n].append(got["mcc"])
    # Accuracy on a test subset, so a network that did not learn (and so hardly moved) is
    # visible beside its shift scores.
    test_x, test_y = take(data, "test", 1000, seed=0)
    model.eval()
    with torch.no_grad():
        logits = model(float_images(test_x))
    accuracy = float((logits.argmax(1) == test_y.long()).float().mean())
    return {
        "scores": scores,
        "null": null,
        "test_acc": accuracy,
        "final_loss": sum(losses[-10:]) / max(len(losses[-10:]), 1),
    }


def _dose_settings(config: ShiftMccConfig) -> list[tuple[str, float]]:
    """``("none", 0.0)`` (the unshifted score every kind's zero level shares), then every
    shift kind's strengths above 0."""
    return [("none", 0.0)] + [
        (kind, s) for kind in SHIFT_KINDS for s in config.levels(kind) if s > 0
    ]


def _dose_key(cell: Cell) -> str:
    kind, s = cell.setting
    return (
        f"dose-{kind}-seed{cell.seed}" if kind == "none" else f"dose-{kind}-{s:g}-seed{cell.seed}"
    )


def run(config: ShiftMccConfig, ctx: LabContext) -> LabOutcome:
    """Four grids of units: the null draws, train vs test, the dose-response, inside LeNet."""
    if ctx.data is None:
        raise ValueError("shift-mcc needs Fashion-MNIST in ctx.data")
    data = ctx.data
    settings = _dose_settings(config)
    total = config.calibration_seeds + config.seeds * (1 + len(settings)) + 2 * config.seeds
    ctx.progress.start(total, "shift-mcc")

    def calibrate(cell: Cell, bench: Bench) -> Any:
        a, b = _halves(data, config.sample_size, 100 + cell.seed)
        return _score(config, a, b, 100 + cell.seed)

    def splits(cell: Cell, bench: Bench) -> Any:
        a, _ = take(data, "train", config.sample_size, seed=cell.seed)
        b, _ = take(data, "test", config.sample_size, seed=cell.seed)
        return _score(config, _flat(a), _flat(b), cell.seed)

    def dose_score(cell: Cell, bench: Bench) -> Any:
        kind, s = cell.setting
        a, b = _halves(data, config.sample_size, cell.seed)
        if kind != "none":
            b = shift_images(b, kind, s, generator=torch.Generator().manual_seed(cell.seed))
        return _score(config, a, b, cell.seed)

    calibration = [
        r["mcc"]
        for r in run_grid(
            ctx,
            Grid(("calibration",), config.calibration_seeds, key=lambda c: f"calibration-{c.seed}"),
            calibrate,
        ).results
    ]
    threshold = null_threshold(calibration, config.null_sigmas)
    train_test = [
        r["mcc"] for r in run_grid(ctx, Grid(("train-test",), config.seeds), splits).results
    ]
    doses = run_grid(
        ctx, Grid(("dose",), config.seeds, settings=settings, key=_dose_key), dose_score
    )
    dose: dict[str, dict[str, list[float]]] = {k: {} for k in SHIFT_KINDS}
    for kind in SHIFT_KINDS:
        for s in config.levels(kind):
            where = ("none", 0.0) if s <= 0 else (kind, s)
            dose[kind][repr(float(max(s, 0.0)))] = [r["mcc"] for r in doses.select(setting=where)]
    lenets = run_grid(
        ctx,
        Grid(tuple(VARIANTS), config.seeds, key=lambda c: f"ics-{c.variant}-seed{c.seed}"),
        lambda cell, bench: _ics_unit(config, data, cell.variant, cell.seed),
    )
    internal = {v: lenets.select(variant=v) for v in VARIANTS}

    raw: dict[str, Any] = {
        "calibration": calibration,
        "null_sigmas": config.null_sigmas,
        "threshold": threshold,
        "train_test": train_test,
        "dose": {k: {"levels": list(config.levels(k)), "mcc": dose[k]} for k in SHIFT_KINDS},
        "monotone_tolerance": config.monotone_tolerance,
        "internal": internal,
        "layers": list(PROBED),
        "classifier": (
            f"MLP {config.hidden} ReLU units" if config.hidden else "logistic regression"
        )
        + f", full-batch Adam lr {config.classifier_lr}, {config.classifier_steps} steps, "
        f"weight decay {config.weight_decay}, half of each sample held out",
    }
    results = {"raw": raw}
    ev_detect, v_detect = decide_detects_shift(results)
    ev_ics, v_ics = decide_bn_reduces_ics(results)
    ev_split, v_split = decide_train_test(results)

    cal = describe(calibration)
    tt = describe(train_test)
    tables = [
        Table(
            "Null and train/test scores (MCC; mean, std over draws)",
            ["comparison", "mean MCC", "std", "min", "max", "draws"],
            [
                [
                    "two halves of the test split (null)",
                    cal["mean"],
                    cal["std"],
                    cal["min"],
                    cal["max"],
                    cal["n"],
                ],
                ["train split vs test split", tt["mean"], tt["std"], tt["min"], tt["max"], tt["n"]],
                [
                    f"detection threshold (null mean + {config.null_sigmas:g} std)",
                    threshold,
                    None,
                    None,
                    None,
                    None,
                ],
            ],
        ),
    ]
    dose_rows = []
    for kind in SHIFT_KINDS:
        for s in config.levels(kind):
            m, sd = mean_std(dose[kind][repr(float(s))])
            dose_rows.append(
                [kind, s, m, sd, None if m is None or threshold is None else m > threshold]
            )
    tables.append(
        Table(
            "Dose-response: test half vs shifted test half (MCC; mean, std over seeds)",
            ["shift", "strength", "mean MCC", "std", "detectable"],
            dose_rows,
        )
    )
    ics_rows = []
    for variant, label in VARIANTS.items():
        for layer in PROBED:
            per_seed = [_mean([s["mcc"] for s in u["scores"][layer]]) for u in internal[variant]]
            nulls = [x for u in internal[variant] for x in u["null"][layer]]
            m, sd = mean_std(per_seed)
            nm, nsd = mean_std(nulls)
            ics_rows.append([label, layer, m, sd, nm, nsd])
        accs = [u["test_acc"] for u in internal[variant]]
        m, sd = mean_std(accs)
        ics_rows.append([label, "test accuracy", m, sd, None, None])
    tables.append(
        Table(
            f"Internal shift: MCC of a layer's inputs at step t vs t + {config.probe_every} "
            "(mean over the run; mean, std over seeds) and the same-step null",
            ["network", "layer", "mean MCC", "std", "null mean", "null std"],
            ics_rows,
        )
    )

    plot_dose_response(
        {
            k: {
                "levels": list(config.levels(k)),
                "mcc": [dose[k][repr(float(s))] for s in config.levels(k)],
            }
            for k in SHIFT_KINDS
        },
        ctx.out_dir / "shift_dose_response.png",
        threshold=threshold,
    )
    curves = {
        label: {
            layer: {
                "steps": [s["step"] for s in internal[variant][0]["scores"][layer]],
                "runs": [[s["mcc"] for s in u["scores"][layer]] for u in internal[variant]],
            }
            for layer in PROBED
        }
        for variant, label in VARIANTS.items()
    }
    plot_internal_mcc(curves, ctx.out_dir / "shift_internal.png", k=config.probe_every)
    return LabOutcome(
        tables=tables,
        verdicts=[
            Verdict(CLAIM_DETECTS, holds_of(v_detect), _measured_detect(ev_detect, v_detect)),
            Verdict(CLAIM_ICS, holds_of(v_ics), _measured_ics(ev_ics, v_ics)),
            Verdict(
                CLAIM_SPLITS,
                holds_of(v_split),
                f"{v_split}: train-vs-test MCC {number_or_na(ev_split['train_test_mean'])} "
                f"(max {number_or_na(ev_split['train_test_max'])}) against the threshold "
                f"{number_or_na(ev_split['threshold'])}",
            ),
        ],
        figures=[
            Figure(
                "shift_dose_response.png",
                "Shift score (held-out MCC of the adversarial classifier) against the "
                "strength of a brightness, contrast or noise shift of test images: mean "
                "over seeds, band = min..max; dashed: detection threshold from the null.",
            ),
            Figure(
                "shift_internal.png",
                f"Internal covariate shift: MCC between a layer's inputs at step t and at "
                f"t + {config.probe_every} during training, LeNet (sigmoid) without and "
                "with BN, mean over seeds.",
            ),
        ],
        raw=raw,
        notes=[
            f"Classifier: {raw['classifier']}.",
            "An MCC near 1 is a ceiling: the classifier separates the two samples "
            "perfectly, so larger shifts cannot score higher.",
            f"Detectable: MCC above the null mean + {config.null_sigmas:g} std of "
            f"{config.calibration_seeds} calibration draws (two random halves of one test "
            "sample).",
        ],
    )


def _mean(values: Sequence[float | None]) -> float | None:
    return describe([math.nan if v is None else v for v in values])["mean"]


RULE_DETECTS = (
    "For each shift (brightness, contrast, Gaussian noise), the mean MCC over seeds at "
    "each strength; the dose-response is monotone when no mean drops by more than "
    "monotone_tolerance (0.03) from one strength to the next, and it detects when the "
    "strongest shift's mean is above the threshold (null mean + 3 std of the calibration "
    "scores: two random halves of one test sample). supported: every shift is monotone "
    "and detected; not supported: none is; mixed: otherwise."
)


def decide_detects_shift(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "MCC detects covariate shift" from shift-mcc's results."""
    raw = results["raw"]
    threshold = raw["threshold"]
    tol = float(raw["monotone_tolerance"])
    evidence: dict[str, Any] = {"threshold": threshold}
    good = 0
    for kind, entry in raw["dose"].items():
        means = [_mean(entry["mcc"][repr(float(s))]) for s in entry["levels"]]
        finite = [m for m in means if m is not None]
        monotone = len(finite) == len(means) and all(
            later >= earlier - tol for earlier, later in itertools.pairwise(finite)
        )
        detected = bool(finite) and threshold is not None and finite[-1] > threshold
        evidence[kind] = {"means": means, "monotone": monotone, "detected": detected}
        good += monotone and detected
    n = len(raw["dose"])
    return evidence, ladder_verdict(good == n, good == 0)


def _measured_detect(evidence: Mapping[str, Any], verdict: str) -> str:
    parts = [
        f"{k}: MCC {number_or_na(evidence[k]['means'][0])} -> {number_or_na(evidence[k]['means'][-1])}"
        f"{'' if evidence[k]['monotone'] else ' (not monotone)'}"
        for k in SHIFT_KINDS
        if k in evidence
    ]
    return f"{verdict}: " + "; ".join(parts) + f"; threshold {number_or_na(evidence['threshold'])}"


RULE_ICS = (
    "Per seed, the mean over probed layers (conv2, fc1, fc2, fc3 inputs) and probe "
    "intervals of the MCC between a layer's inputs at step t and at step t + k, LeNet "
    "(sigmoid) with and without BN. supported: the BN mean is lower by more than twice "
    "the Welch standard error over seeds (compare) and no single layer is higher with BN "
    "by that rule; not supported: BN's mean is not lower and no layer is lower; mixed: "
    "otherwise."
)


def decide_bn_reduces_ics(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN reduces internal covariate shift (MCC)" from the results."""
    raw = results["raw"]
    internal = raw["internal"]
    layers = raw["layers"]

    def per_seed(variant: str, which: Sequence[str]) -> list[float]:
        out = []
        for u in internal[variant]:
            vals = [s["mcc"] for n in which for s in u["scores"][n]]
            m = _mean(vals)
            out.append(math.nan if m is None else m)
        return out

    bn, none = per_seed("bn", layers), per_seed("none", layers)
    overall = compare(bn, none)
    by_layer = {n: compare(per_seed("bn", [n]), per_seed("none", [n])) for n in layers}
    evidence = {
        "mean_mcc_bn": _mean(bn),
        "mean_mcc_none": _mean(none),
        "diff": overall.diff,
        "se": overall.se,
        "direction": overall.direction,
        "by_layer": {
            n: {"diff": c.diff, "se": c.se, "direction": c.direction} for n, c in by_layer.items()
        },
    }
    lower = [n for n, c in by_layer.items() if c.direction == "less"]
    higher = [n for n, c in by_layer.items() if c.direction == "greater"]
    less = overall.direction == "less"
    return evidence, ladder_verdict(less and not higher, not less and not lower)


def _measured_ics(evidence: Mapping[str, Any], verdict: str) -> str:
    return (
        f"{verdict}: mean MCC(t, t+k) {number_or_na(evidence['mean_mcc_bn'])} with BN, "
        f"{number_or_na(evidence['mean_mcc_none'])} without (difference {evidence['diff']:+.3f}, "
        f"standard error {number_or_na(evidence['se'])})"
    )


RULE_SPLITS = (
    "supported: the mean train-vs-test MCC over seeds is at or below the detection "
    "threshold (null mean + 3 std of the calibration scores); not supported: above it."
)


def decide_train_test(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "train and test splits show no detectable shift"."""
    raw = results["raw"]
    stats = describe(raw["train_test"])
    threshold = raw["threshold"]
    evidence = {
        "train_test_mean": stats["mean"],
        "train_test_max": stats["max"],
        "threshold": threshold,
    }
    if stats["mean"] is None or threshold is None:
        return evidence, "mixed"
    return evidence, "supported" if stats["mean"] <= threshold else "not supported"


SPEC = register_lab(
    LabSpec(
        name="shift-mcc",
        title="Covariate-shift detection with MCC (adversarial validation)",
        summary=(
            "Tests 'MCC detects covariate shift' and 'BN reduces internal covariate shift': "
            "a one-hidden-layer MLP (32 ReLU units, full-batch Adam) learns to tell sample A "
            "from sample B; its held-out Matthews correlation is the shift score. Null: two "
            "random halves of the test split (10 draws; detectable = mean + 3 std). Scored: "
            "train vs test split; test half vs a brightness/contrast/noise-shifted test half "
            "at 5 strengths (dose-response); inside LeNet (sigmoid) with and without BN, the "
            "inputs of conv2/fc1/fc2/fc3 at step t vs t + 40 over 240 SGD steps. Full run: "
            "1500 images per side, 3 seeds."
        ),
        config_type=ShiftMccConfig,
        run=run,
        needs_data=True,
        full_time="about 7.5 min (427 s) on a shared, heavily loaded 2-core CPU machine",
    )
)

register_claim(
    Claim(
        key="mcc-detects-covariate-shift",
        claim=CLAIM_DETECTS,
        source=SOURCE,
        experiment="shift-mcc",
        rule_text=RULE_DETECTS,
        rule=decide_detects_shift,
    )
)
register_claim(
    Claim(
        key="bn-reduces-ics-mcc",
        claim=CLAIM_ICS,
        source=SOURCE,
        experiment="shift-mcc",
        rule_text=RULE_ICS,
        rule=decide_bn_reduces_ics,
    )
)
