"""The d2l batch-norm chapter's experiment, reproduced and explained.

Book: Zhang, Lipton, Li & Smola, "Dive into Deep Learning", section "Batch
Normalization" (LeNet with BN on Fashion-MNIST). Paper: Ioffe & Szegedy, arXiv 1502.03167.

Four variants of the chapter's LeNet (sigmoid, 28x28 inputs), each trained with the
book's recipe (plain SGD, 10 epochs, batch 256, Xavier-uniform init):

=========  ==========================================  ====
variant    normalization                               lr
=========  ==========================================  ====
none       no BN (d2l's LeNet section uses lr 0.9)     0.9
textbook   the chapter's scratch BN (bnlab.textbook)   1.0
bnlab      bnlab.nn.BatchNorm1d/2d                     1.0
torch      torch.nn.BatchNorm1d/2d                     1.0
=========  ==========================================  ====

Beyond the book, each BN variant is also evaluated after every epoch with its BN
statistics *recalibrated* (``bnlab.nn.recalibrate_batchnorm``: population statistics
of training batches under the current weights) and with each test batch's own
statistics. The book's test accuracy of the BN LeNet ranges from 0.57 to 0.89 across
rebuilds while train accuracy stays near 0.90: the moving averages (momentum 0.1)
trail weights that still move fast at lr 1.0, so prediction with them is unstable.
Comparing the three evaluations, per epoch and over seeds, measures that.

The runner writes one folder per (variant, seed) with ``fit``'s metrics and checkpoint,
so an interrupted experiment resumes where it stopped and ends with the numbers of an
uninterrupted one. The experiment's folder is a ``bnlab.train.run_dir.RunDir`` too:
its ``config.json`` records the settings and the data, and a resume with other settings
(other than more seeds or variants) is refused.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab.kit.probes import batch_stats_accuracy
from bnlab.lab.pool import run_in_pool, worker_report
from bnlab.models import create
from bnlab.models.norms import first_norm_affine
from bnlab.nn.precise_bn import recalibrate_batchnorm
from bnlab.train import TrainConfig, evaluate, fit
from bnlab.train.fit import StepInfo
from bnlab.train.io import read_json, write_json
from bnlab.train.run_dir import RunDir

__all__ = [
    "BOOK_RESULTS",
    "VARIANTS",
    "D2LConfig",
    "Variant",
    "batch_stats_accuracy",
    "run_d2l",
    "summarize",
]


@dataclass(frozen=True)
class Variant:
    """One arm of the experiment: a LeNet norm and its learning rate.

    ``cost``: a run's expected time relative to the others; parallel workers start the
    longest runs first, so that no core idles at the end while one long run finishes.
    """

    name: str
    norm: str
    lr: float
    label: str
    cost: float = 1.0


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # Costs: each run's time beside another, extra evaluations included, over
        # bnlab's (32.5 s; bench_d2l_floor.py, quiet 2-core machine, one thread each).
        # No BN trains slower per step here (a saturated sigmoid net); the book's BN
        # runs several autograd ops per layer.
        Variant("none", "none", 0.9, "LeNet, no BN (lr 0.9)", cost=1.15),
        Variant("textbook", "textbook", 1.0, "LeNet + textbook BN", cost=1.7),
        Variant("bnlab", "bnlab", 1.0, "LeNet + bnlab BN", cost=1.0),
        Variant("torch", "torch", 1.0, "LeNet + torch BN", cost=1.05),
    )
}

#: What the book's executed notebooks print (d2l-zh 2.0, PyTorch, on a GPU), one build.
#: Across about 86 rebuilds the BN LeNet's test accuracy ranged 0.57-0.89 while its
#: train accuracy stayed within 0.897-0.911.
BOOK_RESULTS: dict[str, dict[str, float]] = {
    "none": {"train_loss": 0.469, "train_acc": 0.823, "test_acc": 0.779},
    "textbook": {"train_loss": 0.273, "train_acc": 0.899, "test_acc": 0.807},
    "torch": {"train_loss": 0.267, "train_acc": 0.902, "test_acc": 0.708},
}

#: Metrics summarized over seeds (mean, std, min, max).
SUMMARY_METRICS = (
    "train_loss",
    "train_acc",
    "test_acc",
    "test_acc_recalibrated",
    "test_acc_batch_stats",
    "test_acc_spread_last5",
    "test_acc_recalibrated_spread_last5",
    "images_per_s",
    "wall_time_s",
)


@dataclass(frozen=True)
class D2LConfig:
    """Settings of the experiment.

    Args:
        epochs: epochs per run (the book: 10).
        batch_size: training batch size (the book: 256).
        seeds: one run per seed and variant.
        variants: names from ``VARIANTS``.
        recalibrate_batches: training batches (of ``batch_size``) used for the
            recalibrated evaluation after each epoch.
        eval_batch_size: batch size of the test loader (also the test batches whose own
            statistics ``test_acc_batch_stats`` uses).
        device: where to train.
    """

    epochs: int = 10
    batch_size: int = 256
    seeds: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = tuple(VARIANTS)
    recalibrate_batches: int = 40
    eval_batch_size: int = 256
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(
                f"unknown d2l variant {unknown[0]!r}; choose from: {', '.join(VARIANTS)}"
            )
        if not self.variants:
            raise ValueError("D2LConfig: variants is empty; choose from: " + ", ".join(VARIANTS))
        if not self.seeds:
            raise ValueError("D2LConfig: seeds is empty; give at least one seed")
        for name in ("epochs", "batch_size", "recalibrate_batches", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"D2LConfig: {name} must be an int >= 1, got {value!r}")


@dataclass
class _Extra:
    """Per-epoch evaluations beyond fit's own (kept in ``extra_eval.json``)."""

    by_epoch: dict[int, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> _Extra:
        """What ``path`` holds (nothing yet: empty)."""
        if not path.exists():
            return cls()
        return cls({int(k): v for k, v in read_json(path).items()})

    def write(self, path: Path) -> None:
        write_json(path, {str(k): v for k, v in sorted(self.by_epoch.items())})


def _loader(
    data: dict[str, Tensor], split: str, batch_size: int, order_seed: int | None, device: Any
) -> DeviceLoader:
    """``split``'s loader: shuffled in ``order_seed``'s order, in order when None."""
    return DeviceLoader(
        data[f"{split}_images"],
        data[f"{split}_labels"],
        batch_size,
        shuffle=order_seed is not None,
        seed=0 if order_seed is None else order_seed,
        device=device,
    )


def _eval_loaders(
    data: dict[str, Tensor], seed: int, config: D2LConfig
) -> tuple[DeviceLoader, DeviceLoader]:
    """The test loader and the recalibration's (its own, differently seeded order of the
    training set)."""
    device = torch.device(config.device)
    test = _loader(data, "test", config.eval_batch_size, None, device)
    return test, _loader(data, "train", config.batch_size, seed + 10_000, device)


def _extra_evaluations(
    model: nn.Module,
    recal_loader: DeviceLoader,
    test_loader: DeviceLoader,
    config: D2LConfig,
    epoch: int,
) -> dict[str, float]:
    """Epoch ``epoch``'s evaluations beyond fit's own (they draw no random numbers)."""
    recal_loader.set_epoch(epoch)
    return {
        "test_acc_recalibrated": _recalibrated_accuracy(
            model, recal_loader, test_loader, config.recalibrate_batches
        ),
        "test_acc_batch_stats": batch_stats_accuracy(model, test_loader),
    }


def _epoch_state(run_dir: Path, epoch: int) -> Path:
    """Where a run whose extra evaluations run apart keeps epoch ``epoch``'s model."""
    return run_dir / "epochs" / f"epoch{epoch}.pt"


def _recalibrated_accuracy(
    model: nn.Module, train_loader: DeviceLoader, test_loader: DeviceLoader, batches: int
) -> float:
    probe = copy.deepcopy(model)
    recalibrate_batchnorm(probe, train_loader, num_batches=batches)
    return evaluate(probe, test_loader)["acc"]


def _spread(values: Sequence[float]) -> float | None:
    return max(values) - min(values) if values else None


def _run_one(
    variant: Variant,
    seed: int,
    data: dict[str, Tensor],
    config: D2LConfig,
    run_dir: Path,
    *,
    resume: bool,
    on_step: Callable[[StepInfo], None] | None,
    defer_extras: bool = False,
    until_epoch: int | None = None,
) -> dict[str, Any]:
    """One (variant, seed) run. ``defer_extras``: a BN run saves each epoch's model
    (``_epoch_state``) instead of evaluating it; :func:`_run_extras` evaluates them and
    :func:`_with_extras` completes the record (parallel workers: another worker may
    evaluate while this one trains). ``until_epoch``: stop after that epoch, with its
    checkpoint (a later call with ``resume=True`` continues exactly). The numbers are
    the same either way."""
    device = torch.device(config.device)
    train_loader = _loader(data, "train", config.batch_size, seed, device)
    test_loader, recal_loader = _eval_loaders(data, seed, config)
    torch.manual_seed(seed)
    model = create("lenet", norm=variant.norm)
    has_bn = variant.norm != "none"
    train_config = TrainConfig(
        lr=variant.lr,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=seed,
        device=config.device,
    )
    extra_path = run_dir / "extra_eval.json"
    extra = _Extra()
    resumable = resume and RunDir(run_dir).checkpoint.exists()
    if resumable:
        # No extra_eval.json: a run without BN, or one stopped before its first extras.
        extra = _Extra.read(extra_path)
    elif not RunDir(run_dir).is_empty():
        # Leftovers of a run interrupted before its first checkpoint: start it afresh.
        shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)

    def on_epoch(record: dict[str, Any]) -> None:
        if not has_bn:
            return
        epoch = int(record["epoch"])
        if defer_extras:
            path = _epoch_state(run_dir, epoch)
            path.parent.mkdir(exist_ok=True)
            part = path.with_suffix(".tmp")
            torch.save(model.state_dict(), part)
            os.replace(part, path)  # atomic: a state is whole or absent
            return
        extra.by_epoch[epoch] = _extra_evaluations(model, recal_loader, test_loader, config, epoch)
        extra.write(extra_path)

    def on_start(steps_done: int) -> None:
        # fit checkpoints an epoch before on_epoch evaluates it: a run stopped in between
        # resumes from that checkpoint without the epoch's extra evaluations. The model
        # is that epoch's now, and the evaluations draw no random numbers: make them up
        # (deferred: save its state, unless saved already).
        epoch = steps_done // len(train_loader)
        missing = epoch not in extra.by_epoch and not (
            defer_extras and _epoch_state(run_dir, epoch).exists()
        )
        if has_bn and epoch >= 1 and missing:
            on_epoch({"epoch": epoch})

    result = fit(
        model,
        train_loader,
        test_loader,
        train_config,
        run_dir=run_dir,
        resume=resumable,
        on_step=on_step,
        on_epoch=on_epoch,
        on_start=on_start,
        stop_when=None if until_epoch is None else lambda r: r["epoch"] >= until_epoch,
    )
    out: dict[str, Any] = {
        "variant": variant.name,
        "seed": seed,
        "lr": variant.lr,
        **{k: result.final[k] for k in ("train_loss", "train_acc", "test_acc")},
        "images_per_s": result.images_per_s,
        "wall_time_s": result.wall_time_s,
        "train_time_s": result.train_time_s,
        "images_per_s_definition": result.images_per_s_definition,
        "test_acc_spread_last5": _spread([r["test_acc"] for r in result.history[-5:]]),
        "history": [dict(r) for r in result.history],
    }
    if has_bn:
        out |= dict.fromkeys(_EXTRA_KEYS)  # filled by _with_extras, in this order
        gamma, beta = first_norm_affine(model)
        out["first_bn_gamma"] = gamma.tolist()
        out["first_bn_beta"] = beta.tolist()
        if not defer_extras:
            # A parallel session stopped before evaluating its saved epochs: do it here.
            missing = [e for e in range(1, config.epochs + 1) if e not in extra.by_epoch]
            if missing and all(_epoch_state(run_dir, e).exists() for e in missing):
                extra.by_epoch = _run_extras(variant, seed, data, config, run_dir)
            _with_extras(out, extra.by_epoch, config)
    return out


#: The fields of a BN run's record that its extra evaluations fill.
_EXTRA_KEYS = (
    "test_acc_recalibrated",
    "test_acc_batch_stats",
    "test_acc_recalibrated_spread_last5",
)


def _with_extras(
    out: dict[str, Any], by_epoch: Mapping[int, Mapping[str, float]], config: D2LConfig
) -> dict[str, Any]:
    """A BN run's record completed with its per-epoch extra evaluations (in place)."""
    history = out["history"]
    for record in history:
        record.update(by_epoch.get(int(record["epoch"]), {}))
    final_extra = by_epoch.get(config.epochs, {})
    out["test_acc_recalibrated"] = final_extra.get("test_acc_recalibrated")
    out["test_acc_batch_stats"] = final_extra.get("test_acc_batch_stats")
    out["test_acc_recalibrated_spread_last5"] = _spread(
        [r["test_acc_recalibrated"] for r in history[-5:] if "test_acc_recalibrated" in r]
    )
    return out


def _run_extras(
    variant: Variant,
    seed: int,
    data: dict[str, Tensor],
    config: D2LConfig,
    run_dir: Path,
    epochs: Sequence[int] | None = None,
) -> dict[int, dict[str, float]]:
    """The extra evaluations of a deferred run (``_run_one(defer_extras=True)``) from its
    saved epoch states (``epochs``, default all), each epoch once: those in
    ``extra_eval.json`` already are kept (a resumed run), the others computed and added
    to it (one file per run: tasks of one run that write it must not overlap)."""
    test_loader, recal_loader = _eval_loaders(data, seed, config)
    model = create("lenet", norm=variant.norm)
    path = run_dir / "extra_eval.json"
    extra = _Extra.read(path)
    for epoch in range(1, config.epochs + 1) if epochs is None else epochs:
        if epoch in extra.by_epoch:
            continue
        state = torch.load(
            _epoch_state(run_dir, epoch), map_location=config.device, weights_only=True
        )
        model.load_state_dict(state)
        extra.by_epoch[epoch] = _extra_evaluations(model, recal_loader, test_loader, config, epoch)
        extra.write(path)
    return extra.by_epoch


def _forward_step(
    on_run_step: Callable[[str, int, StepInfo], None],
    on_step: Callable[[StepInfo], None] | None,
    name: str,
    seed: int,
    info: StepInfo,
) -> None:
    on_run_step(name, seed, info)
    if on_step is not None:
        on_step(info)


def _worker_task(
    data: dict[str, Tensor],
    kind: str,
    name: str,
    seed: int,
    config: D2LConfig,
    run_dir: Path,
    resume: bool,
    report_steps: bool,
    part: Any,
) -> Any:
    """A task of a worker of ``bnlab.lab.pool``: a (variant, seed) run up to epoch
    ``part`` (``"run"``; None: to the end; steps reported back, extra evaluations
    deferred), or the extra evaluations of its epochs ``part`` (``"extras"``)."""
    if kind == "extras":
        return _run_extras(VARIANTS[name], seed, data, config, run_dir, part)
    run_dir.mkdir(parents=True, exist_ok=True)
    on_step = worker_report if report_steps else None
    return _run_one(
        VARIANTS[name],
        seed,
        data,
        config,
        run_dir,
        resume=resume,
        on_step=on_step,
        defer_extras=True,
        until_epoch=part,
    )


#: The extra evaluations of a BN run, in units of the run's cost (measured: 13-16%).
_EXTRAS_COST = 0.15


def _run_parallel(
    todo: Sequence[tuple[str, int]],
    data: dict[str, Tensor],
    config: D2LConfig,
    runs_dir: Path,
    *,
    resume: bool,
    workers: int,
    threads: int,
    store: Callable[[str, int, dict[str, Any]], None],
    on_run_start: Callable[[str, int], None] | None,
    on_step: Callable[[StepInfo], None] | None,
    on_run_step: Callable[[str, int, StepInfo], None] | None,
) -> None:
    """The runs in ``workers`` processes, longest first, in tasks small enough to share
    the workers out evenly: each run in two halves (the second resumes the first's
    checkpoint, exactly), and a BN run's extra evaluations of each half a task of its
    own, from the saved epoch states; a worker out of training evaluates while the
    other trains. Each run is stored when its last task ends."""
    report = on_step is not None or on_run_step is not None
    tasks: list[tuple[Any, ...]] = []
    cost: list[float] = []
    after: list[tuple[int, ...]] = []
    last: set[int] = set()  # the tasks that complete a run
    half = config.epochs // 2
    spans = [(1, half), (half + 1, config.epochs)] if half >= 1 else [(1, config.epochs)]
    for name, seed in todo:
        run_dir = runs_dir / name / f"seed{seed}"
        variant = VARIANTS[name]
        trained: tuple[int, ...] = ()
        evaluated: tuple[int, ...] = ()
        for first, end in spans:
            share = variant.cost * (end - first + 1) / config.epochs
            until = None if end == config.epochs else end
            tasks.append(
                ("run", name, seed, config, run_dir, resume or bool(trained), report, until)
            )
            cost.append(share)
            after.append(trained)
            trained = (len(tasks) - 1,)
            if variant.norm != "none":
                epochs = range(first, end + 1)
                tasks.append(("extras", name, seed, config, run_dir, resume, report, epochs))
                cost.append(share * _EXTRAS_COST)
                after.append(trained + evaluated)  # one writer of extra_eval.json at a time
                evaluated = (len(tasks) - 1,)
        last.add(len(tasks) - 1)
    pending: dict[tuple[str, int], dict[str, Any]] = {}
    begun: set[tuple[str, int]] = set()

    def started(index: int) -> None:
        run = tuple(tasks[index][1:3])
        if run not in begun:
            begun.add(run)
            if on_run_start is not None:
                on_run_start(*run)

    def finished(index: int, result: Any) -> None:
        kind, name, seed, *_, part = tasks[index]
        if kind == "run" and part is None:
            pending[(name, seed)] = result  # the whole run's record
        if index in last:
            record = pending.pop((name, seed))
            store(name, seed, record if kind == "run" else _with_extras(record, result, config))

    def message(index: int, info: StepInfo) -> None:
        name, seed = tasks[index][1:3]
        if on_run_step is not None:
            on_run_step(name, seed, info)
        if on_step is not None:
            on_step(info)

    run_in_pool(
        _worker_task,
        tasks,
        cost=cost,
        after=after,
        workers=workers,
        threads=threads,
        shared=data,
        on_result=finished,
        on_start=started,
        on_message=message,
    )


def _stats(values: Sequence[float]) -> dict[str, float]:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:  # JSON has no NaN: missing is None
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(clean),
        "std": statistics.stdev(clean) if len(clean) > 1 else 0.0,
        "min": min(clean),
        "max": max(clean),
        "n": len(clean),
    }


def _verdicts(per_variant: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Claims of the chapter, each decided from the measured numbers.

    ``holds`` is True or False, or None when the run is too short to decide.
    """
    verdicts: list[dict[str, Any]] = []

    def mean(variant: str, metric: str) -> float:
        value = per_variant.get(variant, {}).get("metrics", {}).get(metric, {}).get("mean")
        return math.nan if value is None else value

    if "none" in per_variant and "bnlab" in per_variant:
        a, b = mean("bnlab", "train_loss"), mean("none", "train_loss")
        verdicts.append(
            {
                "claim": "BN speeds up training: lower final train loss with BN (same epochs)",
                "measured": f"train loss {a:.3f} with bnlab BN vs {b:.3f} without",
                "holds": bool(a < b),
            }
        )
    bn_variants = [v for v in ("textbook", "bnlab", "torch") if v in per_variant]
    if bn_variants:
        moving = statistics.fmean(mean(v, "test_acc_spread_last5") for v in bn_variants)
        recal = statistics.fmean(mean(v, "test_acc_recalibrated_spread_last5") for v in bn_variants)
        epochs = min(len(c) for v in bn_variants for c in per_variant[v]["curves"]["test_acc"])
        verdicts.append(
            {
                "claim": (
                    "Prediction with moving averages is unstable at lr 1.0: test accuracy "
                    "jumps more between the last 5 epochs than with recalibrated statistics"
                ),
                "measured": (
                    f"range over the last 5 epochs: {moving:.3f} with moving averages, "
                    f"{recal:.3f} recalibrated (mean over BN variants and seeds)"
                ),
                # Five epochs are needed for the range to mean anything.
                "holds": bool(moving > recal) if epochs >= 5 else None,
            }
        )
        gain = statistics.fmean(
            mean(v, "test_acc_recalibrated") - mean(v, "test_acc") for v in bn_variants
        )
        verdicts.append(
            {
                "claim": "Recalibrating BN statistics after training does not hurt test accuracy",
                "measured": f"final test accuracy changes by {gain:+.3f} after recalibration",
                "holds": bool(gain >= -0.005),
            }
        )
    if "bnlab" in per_variant and "torch" in per_variant:
        a, b = mean("bnlab", "train_loss"), mean("torch", "train_loss")
        verdicts.append(
            {
                "claim": "bnlab's BN trains like torch's (same recipe, same seeds)",
                "measured": f"final train loss {a:.4f} (bnlab) vs {b:.4f} (torch)",
                "holds": bool(abs(a - b) <= 0.02),
            }
        )
    return verdicts


def summarize(records: Sequence[dict[str, Any]], config: D2LConfig) -> dict[str, Any]:
    """Per-variant mean/std/min/max over seeds, the book's numbers beside, and verdicts."""
    per_variant: dict[str, dict[str, Any]] = {}
    for name in config.variants:
        runs = [r for r in records if r["variant"] == name]
        if not runs:
            continue
        metrics = {m: _stats([r.get(m) for r in runs]) for m in SUMMARY_METRICS}
        entry: dict[str, Any] = {
            "label": VARIANTS[name].label,
            "lr": VARIANTS[name].lr,
            "seeds": [r["seed"] for r in runs],
            "metrics": metrics,
            "book": BOOK_RESULTS.get(name),
            "curves": {
                key: [[h.get(key) for h in r["history"]] for r in runs]
                for key in ("train_loss", "train_acc", "test_acc", "test_acc_recalibrated")
            },
        }
        if "first_bn_gamma" in runs[0]:
            entry["first_bn_gamma"] = runs[0]["first_bn_gamma"]
            entry["first_bn_beta"] = runs[0]["first_bn_beta"]
        per_variant[name] = entry
    return {"config": asdict(config), "variants": per_variant, "verdicts": _verdicts(per_variant)}


# What a resume may change: more (or fewer) seeds and variants reuse the finished runs;
# how the command was typed and the device do not change the numbers.
# The layout (processes x threads) may change too: at one thread per process, the numbers
# do not depend on it.
_MAY_CHANGE = frozenset({"command", "argv", "layout", "d2l.seeds", "d2l.variants", "d2l.device"})


def _claim_folder(
    run: RunDir,
    settings: dict[str, Any],
    *,
    resume: bool,
    environment: Mapping[str, Any] | None,
) -> None:
    """Refuse a folder that holds other runs; then record the settings and environment."""
    runs_dir = run.path / "runs"
    if runs_dir.exists() and any(runs_dir.iterdir()) and not resume:
        raise FileExistsError(
            f"{run.path} already holds d2l runs; pass --resume to continue them, or choose "
            "another --out"
        )
    if resume and run.config.exists():
        # Folders from before bnlab 0.2 did not record the sample counts: take them as
        # this run's (the settings that change numbers are still compared).
        legacy = {"data": settings["data"]} if "data" in settings else None
        changes = run.settings_changes(settings, may_change=_MAY_CHANGE, defaults=legacy)
        if changes:
            raise ValueError(
                f"{run.path} holds d2l runs of other settings "
                f"({'; '.join(str(c) for c in changes)}); resume with the saved settings "
                f"(see {run.config}), or choose another --out"
            )
    run.write_config(settings)
    if environment is not None:
        run.write_environment(environment)


def run_d2l(
    data: dict[str, Tensor],
    config: D2LConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    argv: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    on_run_start: Callable[[str, int], None] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_run_step: Callable[[str, int, StepInfo], None] | None = None,
    workers: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run every (variant, seed) and write the summary.

    Args:
        data: ``train_images`` (uint8 ``(N, 28, 28)``), ``train_labels`` (int64 ``(N,)``),
            ``test_images``, ``test_labels``.
        config: the experiment's settings.
        out_dir: results folder (a ``RunDir``): ``config.json`` (``command``, ``argv``,
            ``d2l``: the settings, ``data``: the sample counts), ``environment.json``,
            ``runs/<variant>/seed<k>/`` (fit's metrics and checkpoint, ``result.json``)
            and ``summary.json``.
        resume: reuse finished runs (their ``result.json``) and resume interrupted ones
            from their checkpoint; without it, an ``out_dir`` holding runs is refused.
        argv: the command's options, saved in ``config.json`` (the report rebuilds the
            command from them).
        environment: saved as ``environment.json``.
        on_run_start: called with (variant, seed) before each run.
        on_step: forwarded to ``fit`` (progress bars); with ``workers > 1`` it is called
            in this process for each step of any run (``on_run_step`` says which).
        on_run_step: called with (variant, seed, step info) after each optimizer step.
        workers: run the (variant, seed) runs in this many spawned processes
            (``bnlab.lab.pool``); 1 runs them here, one after the other. A worker's numbers
            equal those of a serial run at the same thread count.
        threads: torch threads of each worker (default 1); the serial path leaves
            torch's setting alone. Workers and threads are recorded in ``config.json``
            (``layout``); a resume may change them.

    Returns:
        The summary (also written to ``out_dir/summary.json``), with the per-run
        records under ``"runs"``.

    Raises:
        FileExistsError: ``out_dir`` holds runs and ``resume`` is False.
        ValueError: ``resume`` with other settings or data than the saved ones (more or
            fewer seeds and variants are fine).
    """
    out = Path(out_dir)
    runs_dir = out / "runs"
    settings: dict[str, Any] = {"command": "d2l"}
    if argv is not None:
        settings["argv"] = dict(argv)
    settings["d2l"] = asdict(config)
    settings["data"] = {
        "train_samples": len(data["train_labels"]),
        "test_samples": len(data["test_labels"]),
    }
    if workers < 1 or (threads is not None and threads < 1):
        raise ValueError(f"run_d2l: workers and threads must be >= 1, got {workers}, {threads}")
    settings["layout"] = {"workers": workers, "threads_per_worker": threads}
    _claim_folder(RunDir(out), settings, resume=resume, environment=environment)
    runs = [(name, seed) for name in config.variants for seed in config.seeds]
    found: dict[tuple[str, int], dict[str, Any]] = {}
    todo: list[tuple[str, int]] = []
    for name, seed in runs:
        result_path = runs_dir / name / f"seed{seed}" / "result.json"
        if resume and result_path.exists():
            found[(name, seed)] = read_json(result_path)
        else:
            todo.append((name, seed))

    # When each run started and ended, in seconds from here (how the workers were used).
    clock = time.perf_counter()
    schedule: dict[tuple[str, int], dict[str, Any]] = {}

    def started(name: str, seed: int) -> None:
        schedule[(name, seed)] = {"variant": name, "seed": seed}
        schedule[(name, seed)]["start_s"] = round(time.perf_counter() - clock, 2)
        if on_run_start is not None:
            on_run_start(name, seed)

    def store(name: str, seed: int, record: dict[str, Any]) -> None:
        write_json(runs_dir / name / f"seed{seed}" / "result.json", record)
        found[(name, seed)] = record
        schedule[(name, seed)]["end_s"] = round(time.perf_counter() - clock, 2)

    if workers > 1 and len(todo) > 1:
        _run_parallel(
            todo,
            data,
            config,
            runs_dir,
            resume=resume,
            workers=workers,
            threads=threads or 1,
            store=store,
            on_run_start=started,
            on_step=on_step,
            on_run_step=on_run_step,
        )
    else:
        for name, seed in todo:
            run_dir = runs_dir / name / f"seed{seed}"
            started(name, seed)
            run_dir.mkdir(parents=True, exist_ok=True)
            step_callback = on_step
            if on_run_step is not None:
                step_callback = functools.partial(_forward_step, on_run_step, on_step, name, seed)
            record = _run_one(
                VARIANTS[name], seed, data, config, run_dir, resume=resume, on_step=step_callback
            )
            store(name, seed, record)
    records = [found[run] for run in runs]
    summary = summarize(records, config)
    summary["runs"] = [{k: v for k, v in r.items() if k != "history"} for r in records]
    summary["schedule"] = list(schedule.values())
    write_json(out / "summary.json", summary)
    return summary
