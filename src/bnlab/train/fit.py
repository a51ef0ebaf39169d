"""``fit``: train a classifier with SGD on cross-entropy and return what happened.

The loop of d2l's ``train_ch6`` (Xavier-uniform initialisation, SGD, cross-entropy,
train loss and accuracy measured on the fly during each epoch, test accuracy in eval mode
after it) without its side effects: ``fit`` prints and plots nothing, takes the model
and loaders it is given, and returns a ``FitResult``. Callbacks (``on_step``,
``on_epoch``) let a caller draw progress. With a ``run_dir`` it also keeps a metrics log
and a checkpoint from which an interrupted run resumes to exactly the numbers and
weights of an uninterrupted one.

Loaders: any iterable of ``(x, y)`` batches (``x`` float inputs, ``y`` int64 class
indices) works; ``len(loader)`` is used for progress when defined. A loader with a
``set_epoch(epoch)`` method (``bnlab.data.loader.DeviceLoader``) is told the 0-based
epoch before each training epoch; resuming is exact only when a loader's order depends
on nothing else (its seed and that epoch).

Across processes: ``fit(..., distributed=run)`` with a ``bnlab.train.distributed.
DistributedRun`` trains with DistributedDataParallel, each rank on its part of every
global batch; what that means for the loss, the metrics, evaluation and the files is
spelled out in ``bnlab.train.distributed``.

Reading order: ``fit`` checks its arguments, then ``_start`` (seeds, initial weights, a
new optimizer and metrics log) or ``_resume`` (everything from the checkpoint), then
for each epoch ``_run_epoch`` (``_train_epoch``, a ``_train_step`` per batch, then the
evaluation and the epoch's record) and ``_save_checkpoint``. The files live in a
``bnlab.train.run_dir.RunDir``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.train.anomaly import AnomalyWhere, detect_anomalies
from bnlab.train.config import TrainConfig
from bnlab.train.distributed import DistributedRun
from bnlab.train.precision import Precision
from bnlab.train.run_dir import CHECKPOINT_NAME, RunDir, settings_changes

__all__ = [
    "CHECKPOINT_FORMAT",
    "TIMING_KEYS",
    "FitResult",
    "NonFiniteLossError",
    "StepInfo",
    "evaluate",
    "fit",
    "init_weights",
]

#: Version of the checkpoint layout written by ``fit``.
CHECKPOINT_FORMAT = 1
#: Record keys that hold times or rates: the only values that differ between two runs
#: with the same config (and between a resumed run and an uninterrupted one).
TIMING_KEYS: frozenset[str] = frozenset(
    {"time_s", "train_time_s", "eval_time_s", "epoch_time_s", "images_per_s"}
)
# Settings that may change when a run is resumed; any other change is refused.
_RESUMABLE_CHANGES = frozenset({"epochs", "device"})

IMAGES_PER_S_DEFINITION = (
    "training samples / train_time_s, where train_time_s sums, over the training steps, "
    "the time to fetch the batch from the loader (for DeviceLoader: gather, resize and "
    "normalize on the device), move it to the device, forward, loss, backward, read the "
    "loss back to the host (the NaN check) and the SGD update, synchronizing CUDA at the "
    "end of each step; evaluation, logging, checkpoints and callbacks are excluded"
)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before that update.

    Attributes:
        epoch: 1-based epoch of the bad batch.
        step: 1-based global optimizer step of the bad batch (the update was not made).
        loss: the loss value (nan, inf or -inf).
    """

    def __init__(self, message: str, *, epoch: int, step: int, loss: float) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.loss = loss


@dataclass(frozen=True)
class StepInfo:
    """What ``on_step`` is told after every optimizer step.

    Attributes:
        epoch: 1-based epoch.
        step: global optimizer steps done so far, this one included.
        batch: 1-based index of the batch within the epoch.
        num_batches: batches per epoch (``len(train_loader)``), or None when unknown.
        batch_size: samples in this batch.
        loss: mean cross-entropy of this batch (before the update).
    """

    epoch: int
    step: int
    batch: int
    num_batches: int | None
    batch_size: int
    loss: float


@dataclass
class FitResult:
    """The outcome of ``fit``.

    Attributes:
        history: one record per epoch (all epochs of the run, also those before a
            resume): ``kind="epoch"``, ``epoch`` (1-based), ``step`` (global steps at
            its end), ``train_loss``, ``train_acc`` (measured during the epoch on the
            batches as trained, in train mode, as d2l does), ``test_loss``, ``test_acc``
            (eval mode, after the epoch), ``train_samples``, ``train_time_s``,
            ``eval_time_s``, ``epoch_time_s``, ``images_per_s`` and ``time_s`` (run time
            at its end, the sum of ``epoch_time_s``); ``skipped_samples`` only in an
            epoch whose last batch, of one sample, batch norm could not normalize (it is
            skipped, see ``fit``).
        steps: the records logged every ``config.log_every_steps`` steps:
            ``kind="step"``, ``epoch``, ``step``, ``train_loss`` and ``train_acc`` (means
            over the epoch so far), ``time_s``.
        final: ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` of the last epoch.
        wall_time_s: wall-clock time of all epochs of the run, summed over sessions when
            resumed: the sum of ``epoch_time_s``, which covers training, evaluation,
            logging and ``on_step``; setup before the first epoch, checkpoint writes and
            ``on_epoch`` are not counted.
        train_time_s: summed ``train_time_s`` of all epochs (see ``images_per_s``).
        images_per_s: training samples per second of ``train_time_s``; what is timed is
            spelled out in ``images_per_s_definition``.
        resumed_from_epoch: the checkpoint's epoch when the run was resumed, else None.
        epochs_run: epochs trained by this call.
    """

    history: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    final: dict[str, float]
    wall_time_s: float
    train_time_s: float
    images_per_s: float
    resumed_from_epoch: int | None = None
    epochs_run: int = 0
    images_per_s_definition: str = field(default=IMAGES_PER_S_DEFINITION)

    def target(self, test_acc: float) -> dict[str, Any]:
        """When the run first reached ``test_acc`` (:func:`reaches`):
        ``{"test_acc", "reached", "epoch", "time_s"}``, ``time_s`` the run time then
        (training and evaluation of the epochs up to it); epoch and time None if never."""
        first = next(filter(reaches(test_acc), self.history), None)
        return {
            "test_acc": test_acc,
            "reached": first is not None,
            "epoch": None if first is None else first["epoch"],
            "time_s": None if first is None else first["time_s"],
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "final": dict(self.final),
            "wall_time_s": self.wall_time_s,
            "train_time_s": self.train_time_s,
            "images_per_s": self.images_per_s,
            "images_per_s_definition": self.images_per_s_definition,
            "resumed_from_epoch": self.resumed_from_epoch,
            "epochs_run": self.epochs_run,
            "history": [dict(r) for r in self.history],
            "steps": [dict(r) for r in self.steps],
        }


def reaches(test_acc: float) -> Callable[[Mapping[str, Any]], bool]:
    """Whether an epoch record's test accuracy is at least ``test_acc``: the rule of a
    target accuracy (``fit(stop_when=reaches(0.9))``, ``FitResult.target``)."""
    return lambda record: record["test_acc"] >= test_acc


def init_weights(model: nn.Module, seed: int) -> None:
    """d2l's initialisation, reproducible from ``seed`` alone.

    Every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` weight is drawn Xavier-uniform (as
    d2l's ``init_cnn``); their biases are redrawn from PyTorch's default
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the distribution d2l leaves them with), so
    that the initial model depends on ``seed`` only, not on the global RNG state at
    construction. Values are drawn on the CPU from a private generator, so the same
    seed gives the same model on every device; the global RNGs are not touched. Other
    parameters (normalization layers' gamma and beta) are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
                continue
            weight = torch.empty(module.weight.shape, dtype=module.weight.dtype)
            nn.init.xavier_uniform_(weight, generator=generator)
            module.weight.copy_(weight)
            if module.bias is not None:
                fan_in = module.weight[0].numel()  # in_features, or in_channels/groups * kernel
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                bias = torch.empty(module.bias.shape, dtype=module.bias.dtype)
                nn.init.uniform_(bias, -bound, bound, generator=generator)
                module.bias.copy_(bias)


def _batches(loader: Iterable[Any], device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    for batch in loader:
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise TypeError(
                f"a loader must yield (x, y) pairs, got a {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
            )
        x, y = batch
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate_sums(
    model: nn.Module, loader: Iterable[Any], device: torch.device
) -> tuple[Tensor, Tensor, int]:
    """Summed cross-entropy (float64), correct count (int64) and samples, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    samples = 0
    try:
        with torch.no_grad():
            for x, y in _batches(loader, device):
                logits = model(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                correct += (logits.argmax(dim=1) == y).sum()
                samples += y.shape[0]
    finally:
        model.train(was_training)
    return loss_sum, correct, samples


def _evaluate_distributed(
    model: nn.Module, loader: Iterable[Any], device: torch.device, run: DistributedRun
) -> dict[str, float]:
    """``evaluate`` over the ranks' parts of the test set, with rank 0's buffers."""
    run.broadcast_buffers(model)
    loss_sum, correct, samples = _evaluate_sums(model, loader, device)
    totals = torch.stack(
        [
            loss_sum,
            correct.double(),
            torch.tensor(float(samples), device=device, dtype=torch.float64),
        ]
    )
    loss_total, correct_total, samples_total = run.all_reduce_sum(totals).tolist()
    if samples_total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    n = int(samples_total)
    return {"loss": loss_total / n, "acc": int(correct_total) / n, "samples": n}


def evaluate(
    model: nn.Module, loader: Iterable[Any], device: str | torch.device | None = None
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``loader``, in eval mode.

    The model's train/eval mode is restored afterwards; gradients are not computed.

    Args:
        model: a classifier returning logits ``(N, num_classes)``.
        loader: yields ``(x, y)`` batches.
        device: where to run; default: the device of the model's first parameter.

    Returns:
        ``{"loss": ..., "acc": ..., "samples": ...}``.

    Raises:
        ValueError: the loader yielded no samples.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    loss_sum, correct, samples = _evaluate_sums(model, loader, device)
    if samples == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": loss_sum.item() / samples, "acc": correct.item() / samples, "samples": samples}


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


@contextlib.contextmanager
def _rng_scope(device: torch.device) -> Iterator[None]:
    """Run with the global RNGs forked: whatever fit seeds is restored afterwards."""
    python_state = random.getstate()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)


def _seed_rngs(seed: int, device: torch.device) -> None:
    random.seed(seed)
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# What a checkpoint of this format must hold, and of which type (``identity`` and
# ``scaler`` are optional: checkpoints written before them lack them).
_CHECKPOINT_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "optimizer": dict,
    "rng": dict,
    "config": dict,
    "epoch": int,
    "step": int,
    "metrics": list,
}


def _check_entries(state: dict[str, Any], path: Path) -> None:
    """One line naming the file and the entry a damaged checkpoint lacks (no KeyError)."""
    fix = "it is damaged or was not written by bnlab; start a new run in another directory"
    for key, kind in _CHECKPOINT_ENTRIES.items():
        if key not in state:
            raise RuntimeError(f"checkpoint {path} has no {key!r} entry: {fix}")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise RuntimeError(
                f"checkpoint {path}: {key!r} is a {type(state[key]).__name__}, expected a "
                f"{getattr(kind, '__name__', kind)}: {fix}"
            )
    for key in ("python", "torch"):
        if key not in state["rng"]:
            raise RuntimeError(f"checkpoint {path} has no 'rng.{key}' entry: {fix}")
    if not all(isinstance(r, dict) and "kind" in r for r in state["metrics"]):
        raise RuntimeError(f"checkpoint {path}: 'metrics' holds a record without 'kind': {fix}")


def _identity(model: nn.Module, identity: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the run is, beyond its ``TrainConfig``: the model's class and the caller's
    identity settings (``bnlab train``: model, norm, model options, data selection)."""
    kind = type(model)
    return {"model_class": f"{kind.__module__}.{kind.__qualname__}", **dict(identity or {})}


def _check_identity(state: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    saved = state.get("identity")
    if not isinstance(saved, dict):
        return  # written before checkpoints recorded it
    changes = settings_changes(saved, identity)
    if changes:
        details = "; ".join(str(c) for c in changes)
        raise ValueError(
            f"checkpoint {path} belongs to another run ({details}); resume with the settings "
            "it was trained with, or start a new run in another directory"
        )


def _check_resumable(
    state: dict[str, Any], config: TrainConfig, path: Path, identity: dict[str, Any]
) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(
            f"checkpoint {path} has format {state.get('format')!r}, this bnlab reads format "
            f"{CHECKPOINT_FORMAT}; start a new run in another directory"
        )
    _check_entries(state, path)
    _check_identity(state, identity, path)
    # Settings added since the checkpoint was written count as their defaults.
    changes = settings_changes(
        state["config"],
        config.to_dict(),
        may_change=_RESUMABLE_CHANGES,
        defaults=TrainConfig().to_dict(),
    )
    if changes:
        details = ", ".join(str(c) for c in sorted(changes, key=lambda c: c.key))
        raise ValueError(
            f"cannot resume {path} with a different config ({details}); only "
            f"{', '.join(sorted(_RESUMABLE_CHANGES))} may change. Use the saved settings "
            "or start a new run in another directory"
        )
    if state["epoch"] > config.epochs:
        raise ValueError(
            f"checkpoint {path} is at epoch {state['epoch']}, past epochs={config.epochs}; "
            f"pass epochs >= {state['epoch']}"
        )


def _load_resumable(run: RunDir, config: TrainConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint to resume from: the last one, or the previous one when it is damaged.

    A checkpoint that cannot be read (truncated, corrupted, not a checkpoint, or one that
    needs pickled code) falls back to ``checkpoint.prev.pt`` with a ``RuntimeWarning``
    that says so; without a readable previous one the first error is raised.
    """
    try:
        state = run.load_checkpoint()
    except RuntimeError as exc:
        if not run.previous_checkpoint.is_file():
            raise
        try:
            state = run.load_checkpoint(previous=True)
        except RuntimeError:
            raise exc from None
        _check_resumable(state, config, run.previous_checkpoint, identity)
        warnings.warn(
            f"{exc}; resuming from the previous checkpoint {run.previous_checkpoint} (epoch "
            f"{state['epoch']}) instead",
            RuntimeWarning,
            stacklevel=4,  # fit's caller
        )
        return state
    _check_resumable(state, config, run.checkpoint, identity)
    return state


def _load_model_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        # torch's message lists every key over many lines; one line names the problem.
        first = str(exc).strip().splitlines()[0]
        raise RuntimeError(
            f"checkpoint {path} holds the weights of another model ({first} "
            f"{type(model).__name__}); resume with the model it was trained with, or start "
            "a new run in another directory"
        ) from exc


def _summary(
    history: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    resumed_from: int | None,
    epochs_run: int,
) -> FitResult:
    last = history[-1]
    train_time = sum(r["train_time_s"] for r in history)
    samples = sum(r["train_samples"] for r in history)
    return FitResult(
        history=history,
        steps=steps,
        final={k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
        wall_time_s=last["time_s"],
        train_time_s=train_time,
        images_per_s=samples / max(train_time, 1e-12),
        resumed_from_epoch=resumed_from,
        epochs_run=epochs_run,
    )


def _global_loss(logits: Tensor, y: Tensor, run: DistributedRun) -> tuple[Tensor, float, int, int]:
    """The loss this rank differentiates, and the global batch's loss, size and correct count.

    DDP averages gradients over the ranks, so differentiating ``sum of this rank's
    cross-entropies * world_size / global batch size`` gives the gradient of the global
    batch's mean cross-entropy, whatever the parts' sizes. One all-reduce of three
    numbers; every rank gets the same loss value (the NaN check agrees everywhere).
    """
    local_sum = F.cross_entropy(logits, y, reduction="sum")
    local = torch.stack(
        [
            local_sum.detach().double(),
            torch.tensor(float(y.shape[0]), dtype=torch.float64, device=logits.device),
            (logits.detach().argmax(dim=1) == y).sum().double(),
        ]
    )
    loss_total, samples, correct = run.all_reduce_sum(local).tolist()
    n = int(samples)
    loss = local_sum * (run.world_size / max(n, 1))
    return loss, loss_total / max(n, 1), n, int(correct)


@dataclass
class _Session:
    """What the steps of one ``fit`` call share: the model, its optimizer, the records.

    ``out`` is the run folder for the process that writes the run's files (rank 0, or
    the only process); None for the other ranks and for a run without a folder.
    """

    config: TrainConfig
    device: torch.device
    model: nn.Module
    amp: Precision
    out: RunDir | None
    distributed: DistributedRun | None
    num_batches: int | None
    identity: dict[str, Any] = field(default_factory=dict)  # saved in every checkpoint
    optimizer: torch.optim.Optimizer = field(init=False)
    net: nn.Module = field(init=False)  # the model the steps run through (DDP-wrapped)
    where: AnomalyWhere | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0  # global optimizer steps done
    resumed_from: int | None = None
    run_time: float = 0.0  # summed epoch_time_s of the epochs done

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.out is not None:
            self.out.append_metrics(record)

    def epoch_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == "epoch"]


@dataclass
class _Totals:
    """Running sums of one training epoch, measured on the batches as trained."""

    correct: Tensor  # int64 scalar on the device: no host sync per step
    loss_sum: float = 0.0
    samples: int = 0
    skipped_samples: int = 0  # a last batch of one sample that BN cannot normalize
    train_time: float = 0.0

    def means(self) -> dict[str, float]:
        return {
            "train_loss": self.loss_sum / self.samples,
            "train_acc": self.correct.item() / self.samples,
        }


def _check_arguments(
    model: nn.Module,
    train_loader: Iterable[Any],
    config: TrainConfig,
    *,
    run_dir: str | Path | None,
    resume: bool,
    distributed: DistributedRun | None,
) -> torch.device:
    """Refuse what ``fit`` cannot run (see its Raises); returns the device."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"fit: config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}")
    if distributed is not None and not isinstance(distributed, DistributedRun):
        raise TypeError(
            f"fit: distributed must be a DistributedRun or None, got {type(distributed).__name__}"
        )
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"fit: config.device is {config.device!r} but CUDA is not available; use device='cpu'"
        )
    loader_batch = getattr(train_loader, "batch_size", None)
    if isinstance(loader_batch, int) and loader_batch != config.batch_size:
        raise ValueError(
            f"fit: train_loader.batch_size is {loader_batch} but config.batch_size is "
            f"{config.batch_size}; build the loader with the config's batch size"
        )
    if resume and run_dir is None:
        raise ValueError("fit: resume=True needs the run_dir of the run to continue")
    return device


def _open_run_dir(run_dir: str | Path | None, resume: bool) -> RunDir | None:
    """The run folder (created if missing); a fresh start must not find a checkpoint."""
    if run_dir is None:
        return None
    run = RunDir(run_dir).ensure()
    # A run stopped before its first checkpoint has nothing to resume: its
    # metrics.jsonl is simply started again.
    if not resume and run.checkpoint.exists():
        raise FileExistsError(
            f"fit: {run.path} already holds a run ({CHECKPOINT_NAME}); pass resume=True "
            "to continue it, or use another directory"
        )
    return run


def _start(s: _Session) -> None:
    """A fresh start: seeded RNGs, initial weights, a new optimizer, an empty metrics log."""
    _seed_rngs(s.config.seed, s.device)
    if s.config.init == "xavier_uniform":
        init_weights(s.model, s.config.seed)
    s.model.to(s.device)
    s.optimizer = _make_optimizer(s.model, s.config)
    if s.out is not None:
        s.out.start_metrics()


def _resume(s: _Session, run: RunDir) -> None:
    """Continue from the checkpoint: weights, optimizer, loss scale, RNGs and records."""
    if not run.checkpoint.is_file():
        raise FileNotFoundError(
            f"fit: no checkpoint at {run.checkpoint} to resume from; start without resume=True"
        )
    if s.out is not None:  # of a process killed mid-write; only the writer, or it races its writes
        s.out.remove_stale_temporaries()
    state = _load_resumable(run, s.config, s.identity)
    s.model.to(s.device)
    _load_model_state(s.model, state, run.checkpoint)
    s.optimizer = _make_optimizer(s.model, s.config)
    s.optimizer.load_state_dict(state["optimizer"])
    s.amp.load_state_dict(state.get("scaler", {}))
    _set_rng_state(state["rng"], s.device)
    s.records = [dict(r) for r in state["metrics"]]
    s.resumed_from, s.step = state["epoch"], state["step"]
    if s.out is not None:
        # Drop whatever was logged after the checkpoint (a crash mid-epoch).
        s.out.rewrite_metrics(s.records)


def _train_step(s: _Session, x: Tensor, y: Tensor) -> tuple[float, int, Tensor | int]:
    """Forward, loss and backward of one batch (no update yet): loss, samples, correct."""
    logits = s.amp.forward(s.net, x)
    if s.distributed is None:
        loss = F.cross_entropy(logits, y)
        s.optimizer.zero_grad(set_to_none=True)
        s.amp.backward(loss)
        return loss.item(), y.shape[0], (logits.detach().argmax(dim=1) == y).sum()
    loss, loss_value, n, correct = _global_loss(logits, y, s.distributed)
    s.optimizer.zero_grad(set_to_none=True)
    s.amp.backward(loss)
    return loss_value, n, correct


_SKIP_REASON = "batch norm cannot normalize one value per channel"


def _train_step_or_skip(
    s: _Session, x: Tensor, y: Tensor
) -> tuple[float, int, Tensor | int] | None:
    """``_train_step`` for a short last batch of one sample; None when batch norm refuses it.

    Batch norm in training cannot normalize a batch with one value per channel (one
    sample, no spatial dims: torch's and bnlab's BN raise ``ValueError``). Such a batch
    only arises as the remainder of a training set that is one more than a multiple of
    the batch size; like ``drop_last``, it is skipped: no update, and the running
    statistics the layers before the refusing one had already updated are put back.
    """
    buffers = {name: b.detach().clone() for name, b in s.model.named_buffers()}
    try:
        return _train_step(s, x, y)
    except ValueError as exc:
        if "more than 1 value per channel" not in str(exc).lower():
            raise
    with torch.no_grad():
        for name, b in s.model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
    return None


def _non_finite(s: _Session, loss: float, epoch: int, batch: int) -> NonFiniteLossError:
    of = f" of {s.num_batches}" if s.num_batches is not None else ""
    return NonFiniteLossError(
        f"training loss is {loss} at epoch {epoch}, step {s.step} (batch {batch}{of}); "
        f"stopped before that update. Lower the learning rate (lr={s.config.lr:g}), or "
        "check the inputs for NaN/inf",
        epoch=epoch,
        step=s.step,
        loss=loss,
    )


def _train_epoch(
    s: _Session,
    epoch: int,
    epoch_start: float,
    loader: Iterable[Any],
    on_step: Callable[[StepInfo], None] | None,
) -> _Totals:
    """One pass over ``loader`` in train mode, an SGD update per batch."""
    s.net.train()
    totals = _Totals(correct=torch.zeros((), dtype=torch.int64, device=s.device))
    tic = time.perf_counter()
    for batch, (x, y) in enumerate(_batches(loader, s.device), start=1):
        s.step += 1
        if s.where is not None:
            s.where.epoch, s.where.step = epoch, s.step
        if x.shape[0] == 1 < s.config.batch_size and s.distributed is None:
            stepped = _train_step_or_skip(s, x, y)
            if stepped is None:
                s.step -= 1
                totals.skipped_samples += 1
                tic = time.perf_counter()
                continue
            loss, n, correct = stepped
        else:
            loss, n, correct = _train_step(s, x, y)
        if not math.isfinite(loss):
            raise _non_finite(s, loss, epoch, batch)
        s.amp.step(s.optimizer)
        totals.loss_sum += loss * n
        totals.samples += n
        totals.correct += correct
        _sync(s.device)
        totals.train_time += time.perf_counter() - tic
        if s.config.log_every_steps and s.step % s.config.log_every_steps == 0:
            run_time = s.run_time + time.perf_counter() - epoch_start
            s.log(
                {
                    "kind": "step",
                    "epoch": epoch,
                    "step": s.step,
                    **totals.means(),
                    "time_s": run_time,
                }
            )
        if on_step is not None:
            on_step(StepInfo(epoch, s.step, batch, s.num_batches, n, loss))
        tic = time.perf_counter()
    if totals.samples == 0:
        skipped = (
            f" (its only batch, of one sample, was skipped: {_SKIP_REASON})"
            if totals.skipped_samples
            else ""
        )
        raise ValueError(f"fit: the training loader yielded no samples in epoch {epoch}{skipped}")
    return totals


def _run_epoch(
    s: _Session,
    epoch: int,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    on_step: Callable[[StepInfo], None] | None,
) -> dict[str, Any]:
    """Train one epoch, evaluate in eval mode, log the epoch's record and return it."""
    epoch_start = time.perf_counter()
    set_epoch = getattr(train_loader, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch - 1)
    # Set every epoch from the config alone (no scheduler state to checkpoint).
    for group in s.optimizer.param_groups:
        group["lr"] = s.config.lr_at(epoch)
    totals = _train_epoch(s, epoch, epoch_start, train_loader, on_step)
    eval_start = time.perf_counter()
    if s.distributed is None:
        test = evaluate(s.model, test_loader, s.device)
    else:
        test = _evaluate_distributed(s.model, test_loader, s.device, s.distributed)
    eval_time = time.perf_counter() - eval_start
    epoch_time = time.perf_counter() - epoch_start
    s.run_time += epoch_time
    record = {
        "kind": "epoch",
        "epoch": epoch,
        "step": s.step,
        **totals.means(),
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "train_samples": totals.samples,
        "test_samples": test["samples"],
        "train_time_s": totals.train_time,
        "eval_time_s": eval_time,
        "epoch_time_s": epoch_time,
        "images_per_s": totals.samples / max(totals.train_time, 1e-12),
        "time_s": s.run_time,
    }
    if totals.skipped_samples:
        # Only then, so that the records of every other run keep their keys.
        record["skipped_samples"] = totals.skipped_samples
    s.log(record)
    return record


def _save_checkpoint(s: _Session, epoch: int) -> None:
    """Replace the checkpoint atomically with the state after ``epoch`` (writer only)."""
    if s.out is None:
        return
    # The plain model's state_dict (no DDP prefix): a checkpoint resumes with any
    # number of processes, or loads into an unwrapped model.
    s.out.save_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scaler": s.amp.state_dict(),
            "rng": _rng_state(s.device),
            "config": s.config.to_dict(),
            "identity": s.identity,
            "epoch": epoch,
            "step": s.step,
            "metrics": s.records,
        }
    )


def _result(s: _Session) -> FitResult:
    history = s.epoch_records()
    if not history:
        # Only possible when resuming a checkpoint that has no epochs, which fit never writes.
        raise RuntimeError("fit: no epoch was trained")
    steps = [r for r in s.records if r["kind"] == "step"]
    epochs_run = history[-1]["epoch"] - (s.resumed_from or 0)
    return _summary(history, steps, s.resumed_from, epochs_run)


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    config: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    distributed: DistributedRun | None = None,
    detect_anomaly: bool = False,
    identity: Mapping[str, Any] | None = None,
    stop_when: Callable[[dict[str, Any]], bool] | None = None,
) -> FitResult:
    """Train ``model`` with SGD on cross-entropy for ``config.epochs`` epochs.

    A fresh start (``resume=False``) initialises the weights with ``init_weights(model,
    config.seed)`` when ``config.init == "xavier_uniform"`` (d2l's trainer does the
    same; ``"default"`` keeps the model's own initialisation), moves the model to
    ``config.device`` and builds ``torch.optim.SGD``. A resumed run loads the model,
    optimizer and RNG states from ``run_dir/checkpoint.pt`` instead and does not
    initialise anything, so it ends with exactly the metrics (timings aside, see
    ``TIMING_KEYS``) and the weights of an uninterrupted run. The global Python and
    torch RNGs are seeded with ``config.seed`` during training (for models that draw
    random numbers, such as dropout) and restored when ``fit`` returns.

    Each epoch: ``train_loader.set_epoch(epoch - 1)`` if the loader has it, then one
    pass in train mode (loss and accuracy measured on the fly), then ``evaluate`` on
    ``test_loader`` in eval mode. A last training batch of one sample that batch norm
    cannot normalize (one value per channel) is skipped, as ``drop_last`` would: no
    update, running statistics untouched, and the epoch's record gets
    ``skipped_samples`` (not across processes, where such a batch still raises). With a
    ``run_dir``, every record is appended to
    ``run_dir/metrics.jsonl`` and after every epoch ``run_dir/checkpoint.pt`` is
    replaced atomically (model and optimizer ``state_dict``, Python/torch RNG states,
    config, epoch, global step and the records so far). On resume, ``metrics.jsonl``
    is rewritten from the checkpoint's records first, so epochs are never duplicated.

    Args:
        model: a classifier returning logits ``(N, num_classes)``; moved to
            ``config.device`` and trained in place.
        train_loader: yields ``(x, y)`` training batches.
        test_loader: yields ``(x, y)`` test batches.
        config: the settings (``TrainConfig``).
        run_dir: folder for ``metrics.jsonl`` and ``checkpoint.pt`` (created if
            missing); None keeps nothing on disk.
        resume: continue the run saved in ``run_dir``.
        on_step: called with a ``StepInfo`` after every optimizer step.
        on_epoch: called with the epoch record after every epoch (after its checkpoint).
        on_start: called once, before the first training step, with the number of
            optimizer steps already done (0 on a fresh start; on resume, the step of the
            checkpoint actually resumed from, ``checkpoint.prev.pt`` when the last one
            is damaged): step-dependent settings such as a warm-up start there.
        stop_when: called with each epoch record after ``on_epoch``; True ends the run
            there (e.g. a test accuracy reached), with that epoch's checkpoint. A run
            resumed past such an epoch is not stopped again by it: only the epochs
            trained by this call are asked. Every rank must answer the same (give each
            the same records: ``test_acc`` is over the whole test set on every rank).
        distributed: this rank's ``DistributedRun`` to train data-parallel (the loaders
            must then yield this rank's part of every global batch, and every rank must
            call ``fit`` with the same arguments); None trains in this process alone.
            Only rank 0 writes to ``run_dir``; all ranks read it to resume. The model
            is trained through ``DistributedDataParallel``; the ``model`` passed in
            holds the trained weights afterwards, as without it.
        detect_anomaly: check every input batch and every layer's output for NaN/inf
            (``bnlab.train.anomaly``); the first one raises ``NonFiniteActivationError``
            naming the layer, the epoch and the step. Slower (a check per layer).
        identity: what else defines the run (JSON-ready settings, e.g. model and norm
            names, data selection); saved in every checkpoint with the model's class, and
            a resume with other values (or another model class) is refused.

    Returns:
        A ``FitResult`` with the per-epoch history, the final metrics and the timings.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (names the epoch and step,
            suggests a lower learning rate); the checkpoint of the last full epoch stays.
        NonFiniteActivationError: with ``detect_anomaly``, a non-finite input batch or
            layer output (names the layer, epoch and step).
        ValueError: empty loaders, a loader whose ``batch_size`` differs from
            ``config.batch_size``, ``resume`` without ``run_dir``, or a checkpoint made
            with another config or ``identity``.
        FileNotFoundError: ``resume`` but no checkpoint in ``run_dir``.
        FileExistsError: a fresh start in a ``run_dir`` that holds a checkpoint (a run
            stopped before its first checkpoint is started again).
        RuntimeError: ``config.device`` is a CUDA device but CUDA is not available, or
            the checkpoint cannot be read or lacks an entry (named in one line).
        ForeignFolderError: ``run_dir`` holds files and is not a bnlab run folder
            (``bnlab.train.run_dir``); nothing is written there.
        RunDirBusyError: another process trains in ``run_dir`` (names it).
        TypeError: ``config`` is not a ``TrainConfig`` or ``model`` not an ``nn.Module``.
    """
    device = _check_arguments(
        model, train_loader, config, run_dir=run_dir, resume=resume, distributed=distributed
    )
    run = _open_run_dir(run_dir, resume)
    # Only one process of a data-parallel run writes the run's files.
    writer = distributed is None or distributed.is_main
    try:
        num_batches: int | None = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        num_batches = None
    s = _Session(
        config=config,
        device=device,
        model=model,
        amp=Precision(config.precision, device),
        out=run if writer else None,
        distributed=distributed,
        num_batches=num_batches,
        identity=_identity(model, identity),
    )
    with _rng_scope(device), contextlib.ExitStack() as scopes:
        if s.out is not None:
            # Refuses a folder that is not bnlab's, or one another process trains in.
            scopes.enter_context(s.out.claimed())
        if resume and run is not None:  # _check_arguments: resume comes with a run_dir
            _resume(s, run)
        else:
            _start(s)
        if on_start is not None:
            on_start(s.step)
        # DDP averages the gradients over the ranks.
        s.net = distributed.wrap(model) if distributed is not None else model
        if detect_anomaly:
            s.where = scopes.enter_context(detect_anomalies(model))
        done = s.epoch_records()
        s.run_time = done[-1]["time_s"] if done else 0.0
        for epoch in range((s.resumed_from or 0) + 1, config.epochs + 1):
            record = _run_epoch(s, epoch, train_loader, test_loader, on_step)
            _save_checkpoint(s, epoch)
            if on_epoch is not None:
                on_epoch(dict(record))
            if stop_when is not None and stop_when(dict(record)):
                break
    return _result(s)
