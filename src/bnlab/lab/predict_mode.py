"""``bnlab lab predict-mode``: which statistics BN should normalize with at prediction time.

The seeds say that at prediction time "there is no minibatch", so BN must use the moving
averages accumulated in training (``000_3d8114077ba70cad.txt``; 预测阶段...需要使用在训练
过程中积累的移动平均), an approximation (``003_8a52002564f5ba9e.txt``), and that
mini-batches are assumed i.i.d. (``002_adae9b0709a5d84d.txt``). Measured here, with d2l's
LeNet-BN recipe (sigmoid LeNet, BN, SGD lr 1.0, batch 256) on a subset of Fashion-MNIST:

1. Test accuracy with the moving averages, with each test batch's own statistics (BN in
   train mode on a copy, ``bnlab.lab.kit.batch_stats_accuracy``) as a function of the
   test batch size (1 raises, 2, 8, 32, 256, 1000), and after ``recalibrate_batchnorm``
   (population statistics of the training subset).
2. The momentum of the moving averages (0.01, 0.1, 0.5, None = cumulative average):
   moving-average accuracy against the recalibrated one.
3. Non-i.i.d. batches: training batches sorted by class (each batch holds one or two
   classes; the batch order is shuffled) against shuffled ones, and test batches sorted
   by class normalized with their own statistics against shuffled ones.

Papers: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.1, the
population statistics at inference); Wu & Johnson, "Rethinking 'Batch' in BatchNorm",
arXiv 2105.07576 (precise BN, non-i.i.d. batches).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab import kit
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, compare, register_lab
from bnlab.lab.kit.fits import FitConfig
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models import create
from bnlab.nn import recalibrate_batchnorm
from bnlab.plots.batch import plot_grouped_bars, plot_vs_batch
from bnlab.train import TrainConfig, evaluate, fit

__all__ = [
    "ClassSortedLoader",
    "PredictModeConfig",
    "batch_stats_by_size",
    "grid",
    "iid_rule",
    "measure",
    "moving_average_rule",
    "recalibration_rule",
    "set_bn_momentum",
    "summarize",
]


class ClassSortedLoader:
    """Training batches that each hold one or two classes (non-i.i.d. batches).

    Every epoch the examples are ordered by class (randomly within a class) and cut into
    batches of ``batch_size``, so a batch holds one class, or two where a class ends; the
    order of the batches is then shuffled, so that what differs from a shuffled loader is
    the composition of each batch, not a curriculum over classes. Yields ``(x, y)`` as
    ``DeviceLoader`` does (``float32`` images in [0, 1] of shape ``(B, 1, H, W)``).

    Args:
        images: uint8 ``(N, H, W)``.
        labels: int64 ``(N,)``.
        batch_size: samples per batch, >= 1.
        seed: fixes the orders (with the epoch).
        device: where batches are put.

    Raises:
        ValueError: a batch size below 1, or images and labels of different lengths.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"ClassSortedLoader: batch_size must be >= 1, got {batch_size}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"ClassSortedLoader: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        self.batch_size = batch_size
        self._x = images.to(device).float().div(255.0).unsqueeze(1)
        self._y = labels.to(device)
        self._seed = seed
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def __len__(self) -> int:
        return -(-self._y.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self._seed * 100_003 + self._epoch)
        n = self._y.shape[0]
        jitter = torch.rand(n, generator=gen)
        order = torch.argsort(self._y.cpu().double() + jitter.double())
        batches = list(order.split(self.batch_size))
        for i in torch.randperm(len(batches), generator=gen).tolist():
            index = batches[i].to(self._y.device)
            yield self._x[index], self._y[index]


def set_bn_momentum(model: nn.Module, momentum: float | None) -> int:
    """Set ``momentum`` (None: cumulative average) of every batch-norm layer; returns the count.

    A batch-norm layer here is any module with a ``momentum`` attribute and a
    ``running_mean`` buffer (``torch.nn`` and ``bnlab.nn`` kinds alike).
    """
    count = 0
    for m in model.modules():
        if hasattr(m, "momentum") and isinstance(getattr(m, "running_mean", None), Tensor):
            m.momentum = momentum
            count += 1
    return count


def batch_stats_by_size(
    model: nn.Module, x: Tensor, y: Tensor, sizes: Sequence[int], *, device
) -> dict[str, float | str]:
    """Accuracy with each test batch's own statistics per test batch size (error text if any)."""
    out: dict[str, float | str] = {}
    for size in sizes:
        loader = DeviceLoader(x, y, size, shuffle=False, device=device)
        try:
            out[str(size)] = kit.batch_stats_accuracy(model, loader)
        except (ValueError, RuntimeError) as exc:
            out[str(size)] = f"{type(exc).__name__}: {exc}"
    return out


@dataclass(frozen=True)
class PredictModeConfig(FitConfig):
    """Settings of ``predict-mode`` (defaults: the full run).

    Args:
        seeds, norm, train_size, test_size, epochs, batch_size: see ``FitConfig``;
            d2l's recipe: LeNet with BN ``norm`` ("torch" is the fastest on a CPU,
            "bnlab" the same maths), 10000 training images, 3 epochs of batch 256.
        lr: learning rate (plain SGD).
        test_batches: test batch sizes normalized with their own statistics.
        momenta: moving-average momenta (None: cumulative average).
        default_momentum: the momentum of parts 1 and 3.
        sorted_test_batch: test batch size of the class-sorted test batches.
        min_effect: an accuracy difference must also exceed this to count.
        threads: torch CPU threads during the run.
    """

    train_size: int = 10000
    batch_size: int = 256
    lr: float = 1.0
    test_batches: tuple[int, ...] = (1, 2, 8, 32, 256, 1000)
    momenta: tuple[float | None, ...] = (0.01, 0.1, 0.5, None)
    default_momentum: float = 0.1
    sorted_test_batch: int = 256
    min_effect: float = 0.01
    threads: int = 1

    QUICK = FitConfig.quick_settings(
        test_batches=(1, 2, 32, 256), momenta=(0.1, None), sorted_test_batch=64
    )


def _momentum_key(momentum: float | None) -> str:
    return "cumulative" if momentum is None else f"{momentum:g}"


def _arms(config: PredictModeConfig) -> dict[str, tuple[str, float | None]]:
    """Variant name (``TRAINING-mMOMENTUM``) -> (training batches, momentum): every
    momentum with shuffled batches, then the default momentum with class-sorted ones."""
    arms = [("shuffled", m) for m in config.momenta] + [("sorted", config.default_momentum)]
    return {f"{t}-m{_momentum_key(m)}": (t, m) for t, m in arms}


def grid(config: PredictModeConfig) -> Grid:
    """The arms x seed (units ``TRAINING-mMOMENTUM-seedN``, seeds outermost).

    Raises:
        ValueError: ``default_momentum`` is not among ``momenta``.
    """
    if config.default_momentum not in config.momenta:
        raise ValueError(
            f"predict-mode: default_momentum {config.default_momentum} is not in momenta "
            f"{config.momenta}; add it"
        )
    return Grid(
        variants=list(_arms(config)), seeds=config.seeds, order=("seed", "variant", "setting")
    )


def measure(config: PredictModeConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train d2l's LeNet-BN with the arm's batches and momentum; its test accuracy with
    moving averages, recalibrated, and with batch statistics (shuffled and class-sorted
    test batches; every test batch size for the default arm)."""
    training, momentum = _arms(config)[cell.variant]
    data, device, seed = bench.data, bench.device, cell.seed
    train_x, train_y = kit.take(data, "train", config.train_size)
    test_x, test_y = kit.take(data, "test", config.test_size)
    with kit.cpu_threads(config.threads):
        model = create("lenet", norm=config.norm)
        set_bn_momentum(model, momentum)
        if training == "sorted":
            loader: Any = ClassSortedLoader(
                train_x, train_y, config.batch_size, seed=seed, device=device
            )
        else:
            loader = DeviceLoader(train_x, train_y, config.batch_size, seed=seed, device=device)
        test_loader = DeviceLoader(test_x, test_y, 1000, shuffle=False, device=device)
        train = TrainConfig(
            lr=config.lr,
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=seed,
            device=str(device),
        )
        fit(model, loader, test_loader, train)
        out: dict[str, Any] = {"moving_acc": evaluate(model, test_loader, device)["acc"]}
        probe = copy.deepcopy(model)
        recalibrate_batchnorm(
            probe, DeviceLoader(train_x, train_y, 256, shuffle=False, device=device)
        )
        out["recal_acc"] = evaluate(probe, test_loader, device)["acc"]
        order = torch.argsort(test_y, stable=True)
        size = config.sorted_test_batch
        out["batch_stats_shuffled"] = batch_stats_by_size(
            model, test_x, test_y, [size], device=device
        )[str(size)]
        out["batch_stats_sorted"] = batch_stats_by_size(
            model, test_x[order], test_y[order], [size], device=device
        )[str(size)]
        if momentum == config.default_momentum and training == "shuffled":
            out["batch_stats"] = batch_stats_by_size(
                model, test_x, test_y, config.test_batches, device=device
            )
    return out


def summarize(config: PredictModeConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """Three tables (test batch size, momentum, non-i.i.d.), three figures, the verdicts."""
    arms = _arms(config)
    cells = [
        {
            "training": arms[c.variant][0],
            "momentum": _momentum_key(arms[c.variant][1]),
            "seed": c.seed,
            **r,
        }
        for c, r in run
    ]
    default = _momentum_key(config.default_momentum)
    raw = {
        "cells": cells,
        "test_batches": list(config.test_batches),
        "momenta": [_momentum_key(m) for m in config.momenta],
        "default_momentum": default,
        "sorted_test_batch": config.sorted_test_batch,
        "min_effect": config.min_effect,
    }
    verdicts, evidences = kit.apply_rules({"raw": raw}, CLAIMS)

    base = _arm(raw)
    size_rows = []
    for size in config.test_batches:
        values = [c["batch_stats"][str(size)] for c in base]
        texts = [v for v in values if isinstance(v, str)]
        size_rows.append(
            [
                size,
                texts[0] if texts else kit.mean_std_cell(values),
                kit.mean_std_cell(kit.pick(base, "moving_acc")),
                kit.mean_std_cell(kit.pick(base, "recal_acc")),
            ]
        )
    momentum_rows = [
        [
            m,
            kit.mean_std_cell(kit.pick(_arm(raw, "shuffled", m), "moving_acc")),
            kit.mean_std_cell(kit.pick(_arm(raw, "shuffled", m), "recal_acc")),
            kit.mean_std_cell([c["recal_acc"] - c["moving_acc"] for c in _arm(raw, "shuffled", m)]),
        ]
        for m in raw["momenta"]
    ]
    iid_rows = [
        [f"{t} training batches"]
        + [kit.mean_std_cell([c[k] for c in _arm(raw, t)]) for k in _IID_KEYS]
        for t in ("shuffled", "sorted")
    ]
    size = config.sorted_test_batch
    tables = [
        Table(
            f"Test accuracy with each test batch's own statistics against the test batch size "
            f"(momentum {default}, shuffled training; mean ± std over seeds)",
            ["test batch", "batch statistics", "moving averages", "recalibrated"],
            size_rows,
        ),
        Table(
            "Momentum of the moving averages (shuffled training; mean ± std over seeds)",
            ["momentum", "moving averages", "recalibrated", "recalibrated - moving"],
            momentum_rows,
        ),
        Table(
            f"Non-i.i.d. batches: training sorted by class vs shuffled; test batches of {size} "
            "shuffled vs sorted by class (mean ± std over seeds)",
            [
                "training",
                "moving averages",
                "recalibrated",
                f"batch stats, shuffled test batches of {size}",
                f"batch stats, class-sorted test batches of {size}",
            ],
            iid_rows,
        ),
    ]
    _plot(config, ctx, raw)
    return LabOutcome(
        tables=tables,
        verdicts=verdicts,
        figures=[
            Figure(
                "test_batch.png",
                "Test accuracy with each test batch's own statistics against the test "
                "batch size (log2), beside the moving-average and recalibrated accuracy; "
                "mean over seeds, band = ± std. Batch 1 raises and is left out.",
            ),
            Figure(
                "momentum.png",
                "Moving-average and recalibrated test accuracy per momentum (cumulative = "
                "momentum None); mean over seeds, whisker = std.",
            ),
            Figure(
                "non_iid.png",
                "Class-sorted against shuffled batches, in training (moving averages, "
                "recalibrated) and at test time (batch statistics).",
            ),
        ],
        raw={**raw, "evidence": evidences},
        notes=[
            f"d2l's recipe on {config.train_size} training images: LeNet (sigmoid) with BN "
            f"({config.norm}), SGD lr {config.lr:g}, batch {config.batch_size}, "
            f"{config.epochs} epochs; test subset of {config.test_size}.",
            "Batch statistics: BN in train mode on a copy of the model, without gradients "
            "(bnlab.lab.kit.batch_stats_accuracy).",
            "Recalibrated: bnlab.nn.recalibrate_batchnorm over the training subset in "
            "batches of 256.",
            "Class-sorted training: each batch one or two classes, batch order shuffled.",
            "The momentum does not change training (BN's train-mode forward ignores the "
            "running statistics): the models of one seed are identical across momenta, so "
            "their recalibrated accuracies are equal and only the averages differ.",
        ],
    )


def _arm(
    raw: Mapping[str, Any], training: str = "shuffled", momentum: str | None = None
) -> list[dict[str, Any]]:
    """The cells of one arm (momentum key; default: the default momentum's)."""
    momentum = raw["default_momentum"] if momentum is None else momentum
    return [c for c in raw["cells"] if c["training"] == training and c["momentum"] == momentum]


#: The accuracies of the non-i.i.d. table and figure, in order.
_IID_KEYS = ("moving_acc", "recal_acc", "batch_stats_shuffled", "batch_stats_sorted")


def _plot(config: PredictModeConfig, ctx: LabContext, raw: Mapping[str, Any]) -> None:
    """The three figures: batch statistics by test batch size, momenta, non-i.i.d."""
    base = _arm(raw)
    sizes = [
        s
        for s in config.test_batches
        if all(isinstance(c["batch_stats"][str(s)], float) for c in base)
    ]
    plot_vs_batch(
        {
            "LeNet-BN, d2l recipe": {
                "batch statistics": {
                    "x": sizes,
                    "runs": [[c["batch_stats"][str(s)] for s in sizes] for c in base],
                },
                "moving averages": {
                    "x": sizes,
                    "runs": [[c["moving_acc"]] * len(sizes) for c in base],
                },
                "recalibrated": {"x": sizes, "runs": [[c["recal_acc"]] * len(sizes) for c in base]},
            }
        },
        ctx.out_dir / "test_batch.png",
        ylabel="test accuracy",
        xlabel="test batch size",
        title="Prediction with batch statistics against the test batch size",
    )
    plot_grouped_bars(
        {
            label: {m: kit.pick(_arm(raw, "shuffled", m), metric) for m in raw["momenta"]}
            for label, metric in (("moving averages", "moving_acc"), ("recalibrated", "recal_acc"))
        },
        ctx.out_dir / "momentum.png",
        ylabel="test accuracy",
        title="Momentum of the moving averages",
    )
    labels = (
        "moving averages",
        "recalibrated",
        "batch stats, shuffled test",
        "batch stats, sorted test",
    )
    plot_grouped_bars(
        {
            label: {
                f"{t} training": [
                    float(c[key]) for c in _arm(raw, t) if isinstance(c[key], int | float)
                ]
                for t in ("shuffled", "sorted")
            }
            for label, key in zip(labels, _IID_KEYS, strict=True)
        },
        ctx.out_dir / "non_iid.png",
        ylabel="test accuracy",
        title="Non-i.i.d. (class-sorted) batches in training and at test time",
    )


CLAIM_MOVING = (
    "Prediction must use the moving averages: batch statistics depend on the batch "
    "(预测阶段...需要使用在训练过程中积累的移动平均)"
)
CLAIM_RECAL = "Recalibrated (population) statistics are at least as good as the moving averages"
CLAIM_IID = "Non-i.i.d. mini-batches hurt BN (每一次输入的mini-batch的样本都服从同一个分布)"

RULE_MOVING = (
    "Momentum-0.1 models, shuffled training: a test batch of one raises in train mode, and "
    "the accuracy with the statistics of test batches of 2 is below the moving-average "
    "accuracy by more than max(min_effect = 1 point, 2 standard errors). supported: both; "
    "mixed: one; not supported: neither."
)
RULE_RECAL = (
    "For each momentum, recalibrated minus moving-average test accuracy (per seed): "
    "'at least as good' unless it is lower by more than max(min_effect = 1 point, 2 "
    "standard errors). supported: every momentum; mixed: some; not supported: none."
)
RULE_IID = (
    "Training: moving-average accuracy of shuffled minus class-sorted training batches; "
    "test time: batch-statistics accuracy of shuffled minus class-sorted test batches; each "
    "hurts when positive by more than max(min_effect = 1 point, 2 standard errors). "
    "supported: both hurt; mixed: one; not supported: neither."
)


def _floats(values: Sequence[Any]) -> list[float]:
    return [float(v) if isinstance(v, int | float) else math.nan for v in values]


def _cmp(a: Sequence[Any], b: Sequence[Any], min_effect: float) -> dict[str, Any] | None:
    fa, fb = _floats(a), _floats(b)
    if not any(math.isfinite(v) for v in fa) or not any(math.isfinite(v) for v in fb):
        return None
    c = compare(fa, fb, min_effect=min_effect)
    return {"diff": c.diff, "se": c.se, "direction": c.direction}


def moving_average_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "prediction must use the moving averages"."""
    raw = results["raw"]
    base = _arm(raw)
    one = [c["batch_stats"].get("1") for c in base]
    two = [c["batch_stats"].get("2") for c in base]
    one_fails = bool(one) and all(isinstance(v, str) for v in one)
    gap = _cmp([c["moving_acc"] for c in base], two, float(raw["min_effect"]))
    evidence = {"batch_of_one_fails": one_fails, "moving_minus_batch2": gap}
    hits = one_fails + (gap is not None and gap["direction"] == "greater")
    return evidence, kit.hits_verdict(hits, 2)


def recalibration_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "recalibrated statistics are at least as good as moving averages"."""
    raw = results["raw"]
    evidence: dict[str, Any] = {}
    ok = 0
    for m in raw["momenta"]:
        sel = _arm(raw, "shuffled", m)
        gap = _cmp(
            [c["recal_acc"] for c in sel], [c["moving_acc"] for c in sel], float(raw["min_effect"])
        )
        evidence[m] = gap
        ok += gap is not None and gap["direction"] != "less"
    return evidence, kit.hits_verdict(ok, len(raw["momenta"]))


def iid_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "non-i.i.d. batches hurt BN"."""
    raw = results["raw"]
    eff = float(raw["min_effect"])
    shuffled, ordered = _arm(raw), _arm(raw, "sorted")
    train = _cmp([c["moving_acc"] for c in shuffled], [c["moving_acc"] for c in ordered], eff)
    test = _cmp(
        [c["batch_stats_shuffled"] for c in shuffled],
        [c["batch_stats_sorted"] for c in shuffled],
        eff,
    )
    evidence = {"training_shuffled_minus_sorted": train, "test_shuffled_minus_sorted": test}
    hits = sum(1 for g in (train, test) if g is not None and g["direction"] == "greater")
    return evidence, kit.hits_verdict(hits, 2)


def _measured_moving(e: Mapping[str, Any]) -> str:
    return (
        f"test batch of one raises: {e['batch_of_one_fails']}; moving averages minus "
        f"statistics of test batches of 2: {kit.difference_text(e['moving_minus_batch2'])}"
    )


def _measured_recal(e: Mapping[str, Any]) -> str:
    return "recalibrated minus moving, per momentum: " + ", ".join(
        f"{m}: {kit.difference_text(g)}" for m, g in e.items()
    )


def _measured_iid(e: Mapping[str, Any]) -> str:
    return (
        f"training, shuffled minus sorted: {kit.difference_text(e['training_shuffled_minus_sorted'])}; "
        f"test batch statistics, shuffled minus sorted: {kit.difference_text(e['test_shuffled_minus_sorted'])}"
    )


SPEC = register_lab(
    grid_lab(
        name="predict-mode",
        title="Prediction mode: moving averages, batch statistics, recalibration",
        summary=(
            "Tests 'prediction must use the moving averages', 'recalibrated statistics are at "
            "least as good' and 'non-i.i.d. batches hurt BN': d2l's LeNet-BN recipe (lr 1.0, "
            "batch 256) on 10000 training images, 3 epochs, 3 seeds; test accuracy with "
            "moving averages, with each test batch's own statistics (batch 1..1000) and "
            "recalibrated; momenta 0.01, 0.1, 0.5 and cumulative; class-sorted training and "
            "test batches against shuffled ones."
        ),
        config_type=PredictModeConfig,
        grid=grid,
        measure=measure,
        summarize=summarize,
        full_time="9 min (515 s) on a shared, loaded 2-core CPU",
    )
)

CLAIMS = kit.register_claims(
    "predict-mode",
    kit.ClaimRule(
        "bn-predict-with-moving-averages",
        CLAIM_MOVING,
        "000_3d8114077ba70cad.txt",
        RULE_MOVING,
        moving_average_rule,
        _measured_moving,
    ),
    kit.ClaimRule(
        "recalibration-at-least-moving-averages",
        CLAIM_RECAL,
        "003_8a52002564f5ba9e.txt",
        RULE_RECAL,
        recalibration_rule,
        _measured_recal,
    ),
    kit.ClaimRule(
        "non-iid-batches-hurt-bn",
        CLAIM_IID,
        "002_adae9b0709a5d84d.txt",
        RULE_IID,
        iid_rule,
        _measured_iid,
    ),
)
