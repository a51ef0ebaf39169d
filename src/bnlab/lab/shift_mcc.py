"""``bnlab lab shift-mcc``: covariate-shift detection with the Matthews correlation
coefficient, and internal covariate shift measured with it.

One seed (``002_adae9b0709a5d84d.txt``) proposes the Matthews correlation coefficient
(MCC) to tell whether covariate shift happened. Its operational form is *adversarial
validation*: a classifier learns to tell sample A (label 0) from sample B (label 1) on
one half of each, and its MCC on the other, held-out half is the shift score: about 0
without shift, up to 1 when the samples are told apart perfectly.

The classifier (:func:`adversarial_mcc`) is a one-hidden-layer MLP (``hidden`` ReLU
units; ``hidden=0`` gives logistic regression) on the flattened inputs, each feature
standardized with the training half's mean and variance, trained full-batch with Adam
and a BCE loss for a fixed number of steps; a held-out example is called "B" when its
logit is positive.

Design (second edition, issue 17), 5 paired seeds:

1. The detector, validated before it is used. Per seed, two disjoint random samples of
   ``sample_size`` test images, A and B. Scored: A against B (the **null**: one
   distribution); A against B with a **planted** shift of declared strength
   (``planted``): brightness ``x + s``, contrast ``m + (1 - s)(x - m)``, Gaussian noise
   ``x + s N(0, 1)`` (each clipped to [0, 1]), and a **class mix**: B redrawn from the
   other test images with a fraction ``s`` of classes 0-4 (0.5 is the split's own mix),
   a label shift with no pixel artefact; and a training sample against A (the splits).
2. Internal covariate shift measured with it. d2l's LeNet without and with BN trains
   with SGD (batch 128, lr held for 75% of the steps, then linear to 0), in two
   settings that both train: ReLU at one lr (0.1) for both arms, 800 steps; sigmoid at
   each arm's lr tuned on a separate seed (no BN 1, BN 3: the lowest final training
   loss on seed 1000, as chosen by ``ics``'s tuning of this LeNet, same steps and
   schedule, over 0.3/1/3/10, where 3 is interior for BN; ``convergence`` chose the
   same over 0.1-3), 2,000 steps.
   Every ``probe_every`` (k) steps a fixed probe set of training images goes through a
   train-mode copy of the network; the inputs of ``conv2``, ``fc1``, ``fc2``, ``fc3`` are
   recorded. The shift of a layer over the interval starting at step t is the MCC
   between its inputs at t (first half of the probe images) and at t + k (second half,
   so no image is on both sides). Read **at matched training loss (primary)**: the
   intervals starting in the ``read_steps`` steps from the first step where the 25-step
   moving-average training loss reaches ``loss_level`` (0.8); **at matched step
   (secondary)**: the intervals starting at ``step_reads``. The same-step score (both
   halves at t) is shown as the layer's null.
3. The detector at the size and dimension it is used at inside LeNet (400 + 400 probe
   images, 200 per side held out; 84 to 1,176 features), at the first matched-loss
   probe t0 of every run: side B moved by ``internal_planted`` (0.05, 0.1) of each
   feature's std (:func:`plant_shift`), scored like the intervals; +0.1 sd is voted
   with the planted pixel shifts (a setting of the detection claim), +0.05 shown. And a
   positive control: t0 against t0 + ``long_interval`` (200 steps), which must be
   clearly above the same-step null if the 20-step score could see a drift at all.

Changed after the referee's report (``docs/lab_referee_2.md``, section 12), before the
rerun at fresh seeds (``first_seed`` 200; the run at 2d391f1 used 0-4): the detector
was validated only on 1,500-image samples of 784 pixels, while the internal use has 200
held-out examples per side in 84-1,176 dimensions, where its power differs (the
referee's probe: about two thirds at ``fc1``'s 400 dimensions); so the calibration at
the internal size (item 3) joins the detection claim, and the long-interval positive
control is shown. In the sigmoid setting BN's layers step at lr 3 and no BN's at lr 1,
so BN moves about 3x further per 20 steps there: the ReLU setting (one lr) is the clean
comparison.

Claims (``specs``, Holm over the four, TOST margins in MCC units): planted shifts are
detected (shifted minus null, margin 0.1; the pixel shifts and +0.1 sd inside LeNet,
where 0.1 MCC is about a 0.03-0.04 sd mean shift per feature at ``fc1``, by the
referee's isotropic probe); the null is not flagged (null minus 0,
margin 0.05; expected refuted); the train and test splits differ (train-test minus null,
Welch, margin 0.05; expected refuted); BN lowers the internal MCC at matched loss
(margin 0.1). A LeNet run within 2 points of chance (10 %) never left chance and is
excluded; a run that never reaches the loss level has no matched-loss value (excluded).

Paper: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167; Santurkar et al., "How Does Batch
Normalization Help Optimization?", arXiv 1805.11604; Matthews (1975); Chicco & Jurman,
"The advantages of the Matthews correlation coefficient (MCC) over F1 score and accuracy
in binary classification evaluation" (BMC Genomics, 2020).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import experiment, kit, stats
from bnlab.lab.claims import Literature, spec_record
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, LabSpec, Table, register_lab
from bnlab.lab.kit import matched
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, run_grid
from bnlab.lab.stats_claims import stats_claim
from bnlab.plots.effects import plot_arms
from bnlab.train.steps import every, run_steps

__all__ = [
    "ARMS",
    "CLAIMS",
    "SHIFT_KINDS",
    "ShiftMccConfig",
    "adversarial_mcc",
    "class_mix",
    "detector_scores",
    "internal_run",
    "matthews_corrcoef",
    "shift_images",
    "specs",
]

SOURCE = "002_adae9b0709a5d84d.txt"
SENTENCE = "(附)如何判断是否已经出现协变量漂移:MCC(Matthews correlation coefficient),这个指标本质上是用一个训练集数据和预测集数据之间的相关系数,取值在[-1,1]之间,如果是1就是强烈的正相关,0就是没有相关性,-1就是强烈的负相关。"
SENTENCE_ICS = "内部协变量漂移(Internal Convariate Shift):Internal 指的是深层网络的隐藏层。内部协变量漂移是指,针对深层神经网络的内部的某个隐藏层,它的输入数据是上一层神经网络的输出。"
SENTENCE_SPLITS = "协变量漂移/偏移(Convariate Shift):一般是指训练集与测试集的分布不同,或每次迭代时输入层输入的样本服从的分布不同。"
SHIFT_KINDS: tuple[str, ...] = ("brightness", "contrast", "noise")
PLANTED_KINDS: tuple[str, ...] = (*SHIFT_KINDS, "class-mix")
PROBED = ("conv2", "fc1", "fc2", "fc3")
#: arm -> the model registry's norm.
ARMS: dict[str, str] = {"none": "none", "bn": kit.BN_NORM}
ACC = "final_test_acc"
CHANCE = kit.paired.chance_near(ACC)


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
    with experiment.seeded(seed) as gen:
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


@dataclass(frozen=True)
class ShiftMccConfig(matched.MatchedConfig):
    """Settings of ``shift-mcc`` (defaults: the full run).

    Args:
        seeds, train_size, test_size, min_seeds, threads, steps, batch, hold, window,
            loss_level: ``kit.matched.MatchedConfig`` (5 paired seeds, all images, ReLU
            800 and sigmoid 2,000 steps of batch 128, loss level 0.8).
        sample_size: images per side of a detector comparison (half trains the classifier).
        hidden, classifier_steps, classifier_lr, weight_decay: the adversarial classifier.
        planted: ``((kind, strength), ...)``: the planted shifts of the detection claim
            (``SHIFT_KINDS`` and ``"class-mix"``, whose strength is the fraction of
            classes 0-4 in B).
        lrs: ``((activation, arm, lr), ...)``: every LeNet run's lr.
        read_steps: the steps from the first reach of ``loss_level`` whose intervals are
            read.
        step_reads: the interval starts read at matched step.
        probe_every: ``k``, the steps between probes (shift of step t against t + k).
        probe_size: probe images (two halves of ``probe_size / 2``).
        first_seed: the measured seeds (detector and LeNet runs) are ``first_seed``
            onwards (200: fresh seeds for the rerun after the referee's report).
        internal_planted: the planted shifts (in each feature's std) of the detector's
            calibration at the internal sample size and dimension.
        internal_voted: the one of them in the detection claim (the others are shown).
        long_interval: the positive control's interval (t0 against t0 + this), a
            multiple of ``probe_every``.
        detect_margin, null_margin, ics_margin: the claims' TOST margins (MCC units).
    """

    # The detector.
    sample_size: int = 1500
    hidden: int = 32
    classifier_steps: int = 100
    classifier_lr: float = 0.01
    weight_decay: float = 1e-3
    planted: tuple[tuple[str, float], ...] = (
        ("brightness", 0.005),
        ("contrast", 0.02),
        ("noise", 0.01),
        ("class-mix", 0.9),
    )
    # The LeNet runs: lrs, and the read-out of the shift inside.
    lrs: tuple[tuple[str, str, float], ...] = (
        ("relu", "none", 0.1),
        ("relu", "bn", 0.1),
        ("sigmoid", "none", 1.0),
        ("sigmoid", "bn", 3.0),
    )
    read_steps: int = 40
    step_reads: tuple[int, ...] = (100, 300, 500)
    probe_every: int = 20
    probe_size: int = 800
    first_seed: int = 200
    # The detector at the internal size and dimension; the positive control.
    internal_planted: tuple[float, ...] = (0.05, 0.1)
    internal_voted: float = 0.1
    long_interval: int = 200
    # The claims' margins.
    detect_margin: float = 0.1
    null_margin: float = 0.05
    ics_margin: float = 0.1

    #: A smoke test: 2 seeds (below min_seeds: no verdict), tiny samples and runs.
    QUICK = matched.MatchedConfig.quick_settings(
        sample_size=200,
        classifier_steps=30,
        test_size=1000,
        read_steps=10,
        step_reads=(5, 10),
        probe_size=128,
        first_seed=0,
        long_interval=10,
    )
    POSITIVE = (
        *matched.MatchedConfig.POSITIVE,
        *("sample_size", "classifier_steps", "classifier_lr"),
        *("detect_margin", "null_margin", "ics_margin"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        for kind, strength in self.planted:
            if kind not in PLANTED_KINDS:
                raise ValueError(
                    f"{owner}: unknown planted shift {kind!r}; choose from "
                    f"{', '.join(PLANTED_KINDS)}"
                )
            if kind == "class-mix" and not 0.0 <= strength <= 1.0:
                raise ValueError(f"{owner}: class-mix must be a fraction in [0, 1], got {strength}")
        known = {(s, a) for s, a, _ in self.lrs}
        for setting in self.settings:
            for arm in ARMS:
                if (setting, arm) not in known:
                    raise ValueError(f"{owner}: lrs has no lr for ({setting!r}, {arm!r})")
        if self.internal_voted not in self.internal_planted:
            raise ValueError(
                f"{owner}: internal_voted {self.internal_voted} is not in internal_planted "
                f"{self.internal_planted!r}"
            )
        if self.long_interval < 1 or self.long_interval % self.probe_every:
            raise ValueError(
                f"{owner}: long_interval must be a positive multiple of probe_every "
                f"({self.probe_every}), got {self.long_interval}"
            )
        for start in self.step_reads:
            if start % self.probe_every:
                raise ValueError(
                    f"{owner}: step_reads must be multiples of probe_every "
                    f"({self.probe_every}), got {start}"
                )

    def lr_of(self, setting: str, arm: str) -> float:
        return {(s, a): lr for s, a, lr in self.lrs}[(setting, arm)]


def specs(config: ShiftMccConfig) -> list[stats.ClaimSpec]:
    """The four claims, declared before the run (see the module docstring)."""
    kinds = (*(kind for kind, _ in config.planted), internal_key(config.internal_voted))
    null, detect = config.null_margin, config.detect_margin
    declare = partial(kit.paired.claim_specs, config, "mcc", chance=None)
    return [
        *declare(
            [("mcc-detects-covariate-shift", "higher", "shifted", "null", kinds)], margin=detect
        ),
        *declare(
            [("mcc-false-positive-on-null", "higher", "null", "zero", ("null",))], margin=null
        ),
        *declare(
            [("fashion-mnist-splits-shifted", "higher", "train-test", "null", ("splits",))],
            margin=null,
            paired=False,
        ),
        *_internal(config, "mcc_at_loss", "bn-reduces-ics-mcc"),
    ]


def shown_specs(config: ShiftMccConfig) -> list[stats.ClaimSpec]:
    """Shown, not voted: the internal MCC at matched step; the detector at the internal
    size and dimension for the planted shifts not voted; the long-interval positive
    control against the same-step null, per setting and arm."""
    others = tuple(internal_key(d) for d in config.internal_planted if d != config.internal_voted)
    return [
        *_internal(config, "mcc_step", "internal MCC at matched step"),
        *kit.paired.claim_specs(
            config,
            "mcc",
            [
                *(
                    [("internal planted shift detected", "higher", "shifted", "null", others)]
                    if others
                    else []
                ),
                (
                    f"positive control: t0 vs t0 + {config.long_interval} above the null",
                    "higher",
                    "long",
                    "null",
                    control_keys(config),
                ),
            ],
            chance=None,
            margin=config.detect_margin,
        ),
    ]


def internal_key(delta: float) -> str:
    """The detection claim's setting of the planted shift ``delta`` inside LeNet."""
    return f"inside LeNet: +{delta:g} sd"


def control_keys(config: ShiftMccConfig) -> tuple[str, ...]:
    """The positive control's settings, one per (setting, arm)."""
    return tuple(f"control {s}/{a}" for s in config.settings for a in ARMS)


def _internal(config: ShiftMccConfig, metric: str, name: str) -> list[stats.ClaimSpec]:
    """BN lowers the internal MCC (``metric``), per setting, runs at chance excluded."""
    return kit.paired.claim_specs(
        config,
        metric,
        [(name, "lower", "bn", "none", config.settings)],
        chance=CHANCE,
        margin=config.ics_margin,
    )


def _flat(images: Tensor) -> Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 784)`` in [0, 1]."""
    return images.reshape(images.shape[0], -1).to(torch.float32) / 255.0


def _score(config: ShiftMccConfig, a: Tensor, b: Tensor, seed: int) -> float:
    return adversarial_mcc(
        a,
        b,
        seed=seed,
        hidden=config.hidden,
        steps=config.classifier_steps,
        lr=config.classifier_lr,
        weight_decay=config.weight_decay,
    )["mcc"]


def class_mix(labels: Tensor, pool: Tensor, n: int, fraction: float) -> Tensor:
    """``n`` indices of ``pool`` (in its order) with a fraction ``fraction`` of labels
    0-4 (as many as there are) and the rest from labels 5-9.

    Args:
        labels: the labels of the whole split.
        pool: candidate indices into the split, in a random order.
        n: how many to draw.
        fraction: the share of classes 0-4.
    """
    low = pool[labels[pool] < 5]
    high = pool[labels[pool] >= 5]
    k = min(round(fraction * n), low.numel())
    return torch.cat([low[:k], high[: n - k]])


def detector_scores(config: ShiftMccConfig, data: Mapping[str, Tensor], seed: int) -> dict:
    """One seed's detector scores: the null (A vs B, disjoint random test samples), each
    planted shift of B, and a training sample against A."""
    n = config.sample_size
    labels = data["test_labels"]
    perm = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))
    n = min(n, labels.shape[0] // 2)
    a_idx, rest = perm[:n], perm[n:]
    a = _flat(data["test_images"][a_idx])
    b = _flat(data["test_images"][rest[:n]])
    out = {"null": _score(config, a, b, seed)}
    for kind, strength in config.planted:
        if kind == "class-mix":
            shifted = _flat(data["test_images"][class_mix(labels, rest, n, strength)])
        else:
            gen = torch.Generator().manual_seed(seed)
            shifted = shift_images(b, kind, strength, generator=gen)
        out[kind] = _score(config, a, shifted, seed)
    train, _ = kit.take(data, "train", n, seed=seed)
    out["train-test"] = _score(config, _flat(train), a, seed)
    return out


def _detector_cell(config: ShiftMccConfig, cell: Cell, bench: Bench) -> dict:
    return detector_scores(config, bench.data, cell.seed)


def plant_shift(x: Tensor, delta: float) -> Tensor:
    """``x`` (``(N, *)``) with every feature moved by ``delta`` of its std over the N
    examples: the planted shift of the internal calibration."""
    flat = x.reshape(x.shape[0], -1)
    return (flat + delta * flat.std(dim=0, unbiased=False)).reshape(x.shape)


def internal_run(
    config: ShiftMccConfig, setting: str, arm: str, seed: int, bench: Bench
) -> dict[str, Any]:
    """Train LeNet (``setting``: its activation) at its lr; score each probed layer's
    shift over the intervals read at matched loss and at matched step. At the first
    matched-loss probe (step t0), also: the same-step null (both sides at t0), the
    detector at the internal size and dimension (``internal_planted``: side B moved by
    delta of each feature's std), and the long-interval positive control (t0 against
    t0 + ``long_interval``, when the run lasts that long)."""
    k, lr = config.probe_every, config.lr_of(setting, arm)
    probe = kit.probe_batch(bench.data, config.probe_size, bench.device)
    half = probe.shape[0] // 2
    scores: list[dict[str, Any]] = []
    nulls: dict[str, float] = {}
    planted: dict[str, dict[str, float]] = {}  # delta (repr) -> layer -> MCC
    long: dict[str, float] = {}
    anchor: list[Any] = []  # [(t0, {layer: inputs})] until the long interval is scored
    previous: list[Any] = []  # [(step, {layer: (P, features)})] of the last needed probe

    def score(x0: Tensor, x1: Tensor, seed: int) -> float:
        """The MCC of ``x0``'s first half of the probe images against ``x1``'s second."""
        n = probe.shape[0]
        return _score(config, x0.reshape(n, -1)[:half], x1.reshape(n, -1)[half : 2 * half], seed)

    with matched.lenet_run(config, setting, ARMS[arm], lr, seed, bench) as run:

        def needed(step: int) -> str | None:
            """Why the interval starting at ``step`` is read: "loss", "step", both
            ("loss+step") or None."""
            reach = matched.first_reach(run.loss_ma.values, config.loss_level)
            why = []
            if reach is not None and reach <= step < reach + config.read_steps:
                why.append("loss")
            if step in config.step_reads:
                why.append("step")
            return "+".join(why) or None

        def record(step: int) -> None:
            seen = None
            if anchor and step == anchor[0][0] + config.long_interval:
                t0, before = anchor.pop()
                seen = kit.probe_copy(run.model, probe, PROBED)
                for n in PROBED:
                    long[n] = score(before[n], seen[n], seed * 1000 + 11)
            if previous:
                t0, before, why = previous.pop()
                seen = seen if seen is not None else kit.probe_copy(run.model, probe, PROBED)
                for n in PROBED:
                    got = score(before[n], seen[n], seed * 1000 + t0)
                    scores.append({"start": t0, "why": why, "layer": n, "mcc": got})
            why = needed(step)
            if why is not None and step + k <= run.steps:
                seen = seen if seen is not None else kit.probe_copy(run.model, probe, PROBED)
                previous.append((step, seen, why))
                if "loss" in why and not nulls:
                    for n in PROBED:
                        nulls[n] = score(seen[n], seen[n], seed * 1000 + 7)
                    for delta in config.internal_planted:
                        planted[repr(delta)] = {
                            n: score(seen[n], plant_shift(seen[n], delta), seed * 1000 + 7)
                            for n in PROBED
                        }
                    if step + config.long_interval <= run.steps:
                        anchor.append((step, seen))

        run.train(on_batch=every(k, lambda s: record(s.step)))
        if (previous or anchor) and run.steps % k == 0:
            record(run.steps)
        acc = run.test_accuracy()
    values = run.loss_ma.values
    tail = [v for v in values[-50:] if math.isfinite(v)]
    return {
        "lr": lr,
        "scores": scores,
        "null": nulls,
        "planted": planted,
        "long": long,
        "metrics": {
            "steps_to_level": matched.first_reach(values, config.loss_level),
            "mcc_at_loss": kit.finite_mean(s["mcc"] for s in scores if "loss" in s["why"]),
            "mcc_step": kit.finite_mean(s["mcc"] for s in scores if "step" in s["why"]),
            "null_at_loss": kit.finite_mean(nulls.values()),
            "long_at_loss": kit.finite_mean(long.values()),
            **{
                _planted_key(delta): kit.finite_mean(planted.get(repr(delta), {}).values())
                for delta in config.internal_planted
            },
            "final_train_loss": sum(tail) / len(tail) if tail else None,
            ACC: acc,
        },
    }


def _planted_key(delta: float) -> str:
    return f"planted_{delta:g}_at_loss"


def _internal_cell(config: ShiftMccConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    return internal_run(config, cell.setting, cell.variant, cell.seed, bench)


def internal_grid(config: ShiftMccConfig) -> Grid:
    """The LeNet runs: setting by setting, seed x arm (units ``SETTING-ARM-seedN``)."""
    return kit.paired.measured_grid(
        ARMS, config.seed_list, config.settings, order=("setting", "seed", "variant")
    )


def run(config: ShiftMccConfig, ctx: LabContext) -> LabOutcome:
    """The detector's units (one per seed), then the LeNet runs, setting by setting."""
    data = config.subsets(ctx.data, "shift-mcc")
    grid = internal_grid(config)
    ctx.progress.start(config.seeds + kit.paired.by_setting(grid, config.steps_of), "shift-mcc")
    detector = run_grid(
        ctx,
        Grid(("detector",), config.seed_list, key=lambda c: f"detector-seed{c.seed}"),
        partial(_detector_cell, config),
        data=data,
    )
    internal = kit.paired.run_by_setting(
        ctx, grid, partial(_internal_cell, config), data=data, steps=config.steps_of
    )
    return summarize(config, ctx, detector.results, internal)


def per_seed_numbers(
    config: ShiftMccConfig, detector: Sequence[Mapping[str, float]], internal: GridRun
) -> dict[str, Any]:
    """``setting -> arm -> metric -> [per seed]`` for every claim."""
    null = [d["null"] for d in detector]
    per_seed: dict[str, Any] = {
        kind: {"shifted": {"mcc": [d[kind] for d in detector]}, "null": {"mcc": null}}
        for kind, _ in config.planted
    }
    per_seed["null"] = {"null": {"mcc": null}, "zero": {"mcc": [0.0] * len(null)}}
    per_seed["splits"] = {
        "train-test": {"mcc": [d["train-test"] for d in detector]},
        "null": {"mcc": null},
    }
    by_run = internal.per_seed(lambda r: r["metrics"])
    runs = [by_run[s][a] for s in config.settings for a in ARMS]

    def over_runs(metric: str) -> list[float | None]:
        """Per seed: the mean of ``metric`` over every (setting, arm) run."""
        return [kit.finite_mean(r[metric][i] for r in runs) for i in range(len(null))]

    for delta in config.internal_planted:
        per_seed[internal_key(delta)] = {
            "shifted": {"mcc": over_runs(_planted_key(delta))},
            "null": {"mcc": over_runs("null_at_loss")},
        }
    for s in config.settings:
        for a in ARMS:
            per_seed[f"control {s}/{a}"] = {
                "long": {"mcc": by_run[s][a]["long_at_loss"]},
                "null": {"mcc": by_run[s][a]["null_at_loss"]},
            }
    per_seed.update(by_run)
    return per_seed


_COLUMNS = [
    ("steps to loss level", "steps_to_level"),
    ("MCC at loss", "mcc_at_loss"),
    ("MCC at step", "mcc_step"),
    ("same-step null", "null_at_loss"),
    ("final train loss", "final_train_loss"),
    ("final test acc %", ACC),
]


def summarize(
    config: ShiftMccConfig,
    ctx: LabContext,
    detector: Sequence[Mapping[str, float]],
    internal: GridRun,
) -> LabOutcome:
    """Tables, verdicts and figures."""
    per_seed = per_seed_numbers(config, detector, internal)
    raw: dict[str, Any] = {
        "per_seed": per_seed,
        "specs": [spec_record(s) for s in specs(config)],
        "planted": [list(p) for p in config.planted],
        "lr": {s: {a: config.lr_of(s, a) for a in ARMS} for s in config.settings},
        "units": {s: internal.select(setting=s) for s in config.settings},
        "classifier": (
            f"MLP {config.hidden} ReLU units" if config.hidden else "logistic regression"
        )
        + f", full-batch Adam lr {config.classifier_lr}, {config.classifier_steps} steps, "
        f"weight decay {config.weight_decay}, half of each sample held out",
    }
    verdicts = kit.decide(raw, CLAIMS)
    raw["shown"] = stats.evaluate_experiment(shown_specs(config), per_seed)
    cell = kit.mean_std_cell
    det_rows = [["null: A vs B (one distribution)", "-", cell(per_seed["null"]["null"]["mcc"])]]
    det_rows += [
        [f"planted: {kind}", strength, cell(per_seed[kind]["shifted"]["mcc"])]
        for kind, strength in config.planted
    ]
    det_rows.append(
        ["train sample vs test sample", "-", cell(per_seed["splits"]["train-test"]["mcc"])]
    )
    det_rows += [
        [
            f"inside LeNet ({config.probe_size // 4} + {config.probe_size // 4} held out per "
            "side, layer inputs, mean of layers and runs): same-step null",
            "-",
            cell(per_seed[internal_key(config.internal_voted)]["null"]["mcc"]),
        ],
        *(
            [
                "inside LeNet: planted mean shift (each feature's sd)"
                + (" [voted]" if delta == config.internal_voted else ""),
                delta,
                cell(per_seed[internal_key(delta)]["shifted"]["mcc"]),
            ]
            for delta in config.internal_planted
        ),
    ]
    layer_rows = []
    for s in config.settings:
        for a in ARMS:
            units = internal.select(setting=s, variant=a)
            for n in PROBED:
                values = [
                    kit.finite_mean(
                        x["mcc"] for x in r["scores"] if x["layer"] == n and "loss" in x["why"]
                    )
                    for r in units
                ]
                nulls = [r["null"].get(n) for r in units]
                planted = [
                    cell([r.get("planted", {}).get(repr(d), {}).get(n) for r in units])
                    for d in config.internal_planted
                ]
                long = cell([r.get("long", {}).get(n) for r in units])
                layer_rows.append([s, a, n, cell(values), cell(nulls), *planted, long])
    raw["excluded_runs"] = [
        [s, a, seed, reach if reach is not None else "never", acc]
        for s, a, seed, reach, acc, _ in matched.excluded_runs(
            per_seed, config.settings, ARMS, CHANCE, config.first_seed
        )
    ]
    tables = [
        Table(
            f"Detector (held-out MCC, mean ± std over {len(detector)} seeds; "
            f"{config.sample_size} images per side)",
            ["comparison", "strength", "MCC"],
            det_rows,
        ),
        matched.arm_table(
            f"Inside LeNet: MCC of a layer's inputs at step t vs t + {config.probe_every} "
            f"(mean over conv2/fc1/fc2/fc3 inputs; mean ± std over seeds); 'at loss': the "
            f"intervals starting in the {config.read_steps} steps after the training loss "
            f"reaches {config.loss_level:g}; 'at step': those starting at "
            f"{', '.join(map(str, config.step_reads))}",
            per_seed,
            raw["lr"],
            _COLUMNS,
            config.settings,
            ARMS,
        ),
        Table(
            "Per layer at matched loss (mean ± std over seeds): the interval's MCC, the "
            "same-step null, the detector's calibration at this size and dimension (a "
            "planted mean shift of delta sd in every feature of side B), and the "
            f"positive control (t0 vs t0 + {config.long_interval})",
            [
                "setting",
                "arm",
                "layer input",
                f"MCC t vs t + {config.probe_every}",
                "null",
                *(f"planted +{d:g} sd" for d in config.internal_planted),
                f"t0 vs t0 + {config.long_interval}",
            ],
            layer_rows,
        ),
        kit.paired.claims_table(raw["claims"], "MCC", 3),
        matched.shown_table(
            "Shown, not voted: the internal MCC at matched step; the detector inside LeNet "
            "at the planted shifts not voted; the long-interval positive control against "
            "the same-step null",
            raw["shown"],
            "MCC",
        ),
        Table(
            "LeNet runs excluded (never left chance, or never at the loss level)",
            ["setting", "arm", "seed", "steps to loss level", "final test acc %"],
            raw["excluded_runs"] or [["-", "-", "-", "none excluded", "-"]],
        ),
    ]
    _figures(config, ctx, per_seed)
    return LabOutcome(
        tables=tables,
        verdicts=verdicts,
        figures=[
            Figure(
                "shift_detector.png",
                "Held-out MCC of the adversarial classifier per seed (a seed's comparisons "
                "joined): the null (two samples of one distribution), each planted shift, and "
                "a training sample against a test sample; mean ± 95% t interval.",
            ),
            Figure(
                "shift_internal.png",
                f"Primary metric of the internal claim: MCC between a layer's inputs at step t "
                f"and t + {config.probe_every}, at matched training loss, per setting and arm "
                "(one point per seed).",
            ),
        ],
        raw=raw,
        notes=[
            f"Classifier: {raw['classifier']}.",
            "Sigmoid lrs: no BN 1, BN 3, as ics's tuning of this LeNet chose on seed 1000 over "
            "0.3/1/3/10 (3 interior for BN; convergence chose the same over 0.1-3); ReLU: "
            "lr 0.1 for both arms. In the sigmoid setting BN's layers step 3x further per "
            "interval: the ReLU setting is the clean comparison.",
            f"Seeds {config.seed_list[0]}-{config.seed_list[-1]} (detector and LeNet runs).",
            "Brightness, contrast and noise shifts move the black background off 0, which a "
            "classifier sees easily; the class mix changes only which images B holds.",
        ],
    )


def _figures(config: ShiftMccConfig, ctx: LabContext, per_seed: Mapping[str, Any]) -> None:
    plot_arms(
        {
            "null": per_seed["null"]["null"]["mcc"],
            **{kind: per_seed[kind]["shifted"]["mcc"] for kind, _ in config.planted},
            "train-test": per_seed["splits"]["train-test"]["mcc"],
        },
        ctx.out_dir / "shift_detector.png",
        ylabel="held-out MCC (shift score)",
        title="Adversarial validation: the null, planted shifts, the splits",
    )
    matched.plot_primary(
        per_seed,
        "mcc_at_loss",
        config.settings,
        ARMS,
        ctx.out_dir / "shift_internal.png",
        ylabel=f"MCC(t, t + {config.probe_every}) at matched loss",
        what="internal shift",
        level=config.loss_level,
    )


_OURS = "ours: 1,500 Fashion-MNIST test images per side, a 32-unit MLP classifier, 5 seeds"
_SANTURKAR = (
    "Santurkar, Tsipras, Ilyas & Madry 2018, 'How Does Batch Normalization Help "
    "Optimization?', arXiv 1805.11604"
)

CLAIMS = kit.register_claims(
    "shift-mcc",
    stats_claim(
        "mcc-detects-covariate-shift",
        "MCC (adversarial validation) detects covariate shift: a planted shift scores "
        "above the null",
        SOURCE,
        "declared ClaimSpec (bnlab.lab.stats): held-out MCC of A vs shifted B minus A vs "
        "B (the null), per planted shift (brightness +0.005, contrast 0.02, Gaussian noise "
        "0.01, class mix 90% of classes 0-4, on 1,500 test images per side; and, at the "
        "size and dimension of the internal use, LeNet's conv2/fc1/fc2/fc3 inputs on 400 "
        "probe images per side at the first matched-loss probe, side B moved by 0.1 of "
        "each feature's std, against the same-step null, mean over layers and runs), "
        "direction higher, paired by seed, Holm over the experiment's 4 claims, TOST "
        "margin ±0.1 MCC, at least 5 seeds; supported only if every planted shift is "
        "detected",
        sentence=SENTENCE,
        literature=Literature(
            "Rabanser, Günnemann & Lipton 2019, 'Failing Loudly: An Empirical Study of "
            "Methods for Detecting Dataset Shift', arXiv 1810.11953",
            "MNIST and CIFAR-10 with planted shifts (Gaussian noise, image transformations, "
            "class-prior changes) at several strengths and sample sizes",
            "a domain classifier (adversarial validation) detects large shifts from few "
            "samples but is weaker than two-sample tests on dimension-reduced "
            "representations for small shifts (numbers unverified)",
            "supported",
            _OURS + "; theirs: many shift types, sample sizes and detectors",
        ),
    ),
    stats_claim(
        "mcc-false-positive-on-null",
        "Adversarial validation reports a shift between two samples of one distribution "
        "(a false positive); expected not to",
        SOURCE,
        "declared ClaimSpec: held-out MCC of A vs B, two disjoint random samples of the "
        "test split, against 0 (what no shift gives), direction higher, Holm over the 4 "
        "claims, TOST margin ±0.05 MCC, at least 5 seeds; refuted = the null is within "
        "±0.05 of 0 (the detector is calibrated)",
        sentence=SENTENCE,
        literature=Literature(
            "Matthews 1975; Chicco & Jurman 2020, BMC Genomics 21:6",
            "binary classification: the MCC is the correlation of predictions and labels",
            "a classifier no better than chance has MCC 0 in expectation",
            "refuted",
            "a property of the MCC, not an experiment; ours checks the trained detector",
        ),
    ),
    stats_claim(
        "fashion-mnist-splits-shifted",
        "Fashion-MNIST's training and test splits differ in distribution (covariate shift "
        "between training and test data); expected not to",
        SOURCE,
        "declared ClaimSpec: held-out MCC of a training sample vs a test sample minus the "
        "null, Welch (different samples), direction higher, Holm over the 4 claims, TOST "
        "margin ±0.05 MCC, at least 5 seeds",
        sentence=SENTENCE_SPLITS,
        literature=Literature(
            "Xiao, Rasul & Vollgraf 2017, 'Fashion-MNIST', arXiv 1708.07747",
            "70,000 Zalando product images; the test split is a random 10,000 of them",
            "train and test are drawn from one pool (no shift by construction; no test reported)",
            "refuted",
            _OURS,
        ),
    ),
    stats_claim(
        "bn-reduces-ics-mcc",
        "BN reduces internal covariate shift, as measured by MCC: a layer's inputs at "
        "step t and t + k are harder to tell apart with BN",
        SOURCE,
        "declared ClaimSpec: primary metric the held-out MCC between a layer's inputs at "
        "step t and t + 20 (conv2/fc1/fc2/fc3 inputs on 800 probe images, halves on each "
        "side), averaged over layers and the intervals starting in the 40 steps after the "
        "25-step moving-average training loss reaches 0.8 (matched loss; matched step "
        "shown, not voted), BN against no BN, direction lower, per setting (ReLU LeNet at "
        "lr 0.1 for both; sigmoid LeNet at lrs tuned on a separate seed: 1 and 3), paired "
        "by seed, Holm over the 4 claims, TOST margin ±0.1, at least 5 seeds; runs within "
        "2 points of chance or never at the loss level excluded; the ReLU setting (one lr) "
        "is the clean test: in the sigmoid setting BN's layers step 3x further per "
        "interval; shown: t0 vs t0 + 200 (positive control) against the same-step null",
        sentence=SENTENCE_ICS,
        literature=Literature(
            "Ioffe & Szegedy 2015, arXiv 1502.03167, figure 1; " + _SANTURKAR + ", section 2",
            "Ioffe: a sigmoid MLP on MNIST (activation percentiles over training); "
            "Santurkar: VGG on CIFAR-10 and deep linear networks (activation histograms, "
            "gradient ICS)",
            "Ioffe: the input distributions drift less with BN (figure only); Santurkar: "
            "BN does not reduce ICS in the gradient sense, and noisy BN with more drift "
            "trains as well",
            "context-dependent",
            "ours: an MCC two-sample score on layer inputs, LeNet on Fashion-MNIST, 800-2,000 "
            "steps; neither paper used a classifier-based shift score",
        ),
    ),
)

SPEC = register_lab(
    LabSpec(
        name="shift-mcc",
        title="Covariate-shift detection with MCC (adversarial validation), also inside LeNet",
        summary=(
            "Tests 'MCC detects covariate shift' and 'BN reduces internal covariate shift' "
            "(as MCC): a 32-unit MLP learns to tell sample A from sample B, its held-out "
            "Matthews correlation is the shift score. The detector is validated first: a "
            "null (two samples of the test split), planted shifts (brightness, contrast, "
            "noise, a class mix), and train vs test, 1,500 images per side, 5 seeds; and at "
            "the internal size (400 probe images per side, layer inputs, a planted 0.1 sd "
            "mean shift). Then "
            "inside d2l's LeNet with and without BN, both trained (ReLU at lr 0.1, 800 "
            "steps; sigmoid at tuned lrs 1 and 3, 2,000 steps), the inputs of conv2/fc1/fc2/"
            "fc3 at step t vs t + 20, read at matched training loss 0.8 (primary) and at "
            "matched steps, with a t vs t + 200 positive control. Four declared claims, "
            "Holm, TOST."
        ),
        config_type=ShiftMccConfig,
        run=run,
        needs_data=True,
        full_time=(
            "about 3 min on 2 quiet CPU cores with --workers 2 (~330 CPU-s: 5 detector "
            "units ~22 s, 10 ReLU runs ~7 s, 10 sigmoid runs ~14 s, each with its "
            "calibration and positive control; single units timed under load, 2026-12-07)"
        ),
    )
)
