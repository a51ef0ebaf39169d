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
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.train.anomaly import detect_anomalies
from bnlab.train.config import TrainConfig
from bnlab.train.distributed import DistributedRun
from bnlab.train.io import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    append_jsonl,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_jsonl,
)
from bnlab.train.precision import Precision

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
            at its end, the sum of ``epoch_time_s``).
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


def _check_resumable(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(
            f"checkpoint {path} has format {state.get('format')!r}, this bnlab reads format "
            f"{CHECKPOINT_FORMAT}; start a new run in another directory"
        )
    # Settings added since the checkpoint was written count as their defaults.
    saved = {**TrainConfig().to_dict(), **state["config"]}
    current = config.to_dict()
    changed = sorted(k for k in current.keys() | saved.keys() if saved.get(k) != current.get(k))
    refused = [k for k in changed if k not in _RESUMABLE_CHANGES]
    if refused:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in refused)
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


def _load_resumable(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint to resume from: ``path``, or the previous one when ``path`` is damaged.

    A checkpoint that cannot be read (truncated, corrupted, not a checkpoint, or one that
    needs pickled code) falls back to ``checkpoint.prev.pt`` with a ``RuntimeWarning``
    that says so; without a readable previous one the first error is raised.
    """
    try:
        state = load_checkpoint(path)
    except RuntimeError as exc:
        previous = path.with_name(PREVIOUS_CHECKPOINT_NAME)
        if not previous.is_file():
            raise
        try:
            state = load_checkpoint(previous)
        except RuntimeError:
            raise exc from None
        _check_resumable(state, config, previous)
        warnings.warn(
            f"{exc}; resuming from the previous checkpoint {previous} (epoch "
            f"{state['epoch']}) instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return state
    _check_resumable(state, config, path)
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
    distributed: DistributedRun | None = None,
    detect_anomaly: bool = False,
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
    ``test_loader`` in eval mode. With a ``run_dir``, every record is appended to
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
        distributed: this rank's ``DistributedRun`` to train data-parallel (the loaders
            must then yield this rank's part of every global batch, and every rank must
            call ``fit`` with the same arguments); None trains in this process alone.
            Only rank 0 writes to ``run_dir``; all ranks read it to resume. The model
            is trained through ``DistributedDataParallel``; the ``model`` passed in
            holds the trained weights afterwards, as without it.
        detect_anomaly: check every input batch and every layer's output for NaN/inf
            (``bnlab.train.anomaly``); the first one raises ``NonFiniteActivationError``
            naming the layer, the epoch and the step. Slower (a check per layer).

    Returns:
        A ``FitResult`` with the per-epoch history, the final metrics and the timings.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (names the epoch and step,
            suggests a lower learning rate); the checkpoint of the last full epoch stays.
        NonFiniteActivationError: with ``detect_anomaly``, a non-finite input batch or
            layer output (names the layer, epoch and step).
        ValueError: empty loaders, a loader whose ``batch_size`` differs from
            ``config.batch_size``, ``resume`` without ``run_dir``, or a checkpoint made
            with another config.
        FileNotFoundError: ``resume`` but no checkpoint in ``run_dir``.
        FileExistsError: a fresh start in a ``run_dir`` that holds a checkpoint (a run
            stopped before its first checkpoint is started again).
        RuntimeError: ``config.device`` is a CUDA device but CUDA is not available, or
            the checkpoint cannot be read.
        TypeError: ``config`` is not a ``TrainConfig`` or ``model`` not an ``nn.Module``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"fit: config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}")
    if distributed is not None and not isinstance(distributed, DistributedRun):
        raise TypeError(
            f"fit: distributed must be a DistributedRun or None, got {type(distributed).__name__}"
        )
    # Only one process of a data-parallel run writes the run's files.
    writer = distributed is None or distributed.is_main
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

    checkpoint_path = metrics_path = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint_path, metrics_path = run_dir / CHECKPOINT_NAME, run_dir / METRICS_NAME
        # A run stopped before its first checkpoint has nothing to resume: its
        # metrics.jsonl is simply started again.
        if not resume and checkpoint_path.exists():
            raise FileExistsError(
                f"fit: {run_dir} already holds a run ({CHECKPOINT_NAME}); pass resume=True "
                "to continue it, or use another directory"
            )

    try:
        num_batches: int | None = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        num_batches = None
    set_epoch = getattr(train_loader, "set_epoch", None)

    amp = Precision(config.precision, device)
    with _rng_scope(device), contextlib.ExitStack() as scopes:
        records: list[dict[str, Any]]
        resumed_from: int | None
        if resume and checkpoint_path is not None and metrics_path is not None:
            if not checkpoint_path.is_file():
                raise FileNotFoundError(
                    f"fit: no checkpoint at {checkpoint_path} to resume from; start without "
                    "resume=True"
                )
            if writer:  # of a process killed mid-write; only the writer, or it races its writes
                remove_stale_temporaries(checkpoint_path.parent)
            state = _load_resumable(checkpoint_path, config)
            model.to(device)
            _load_model_state(model, state, checkpoint_path)
            optimizer = _make_optimizer(model, config)
            optimizer.load_state_dict(state["optimizer"])
            amp.load_state_dict(state.get("scaler", {}))
            _set_rng_state(state["rng"], device)
            records = [dict(r) for r in state["metrics"]]
            resumed_from, step = state["epoch"], state["step"]
            # Drop whatever was logged after the checkpoint (a crash mid-epoch).
            if writer:
                write_jsonl(metrics_path, records)
        else:
            _seed_rngs(config.seed, device)
            if config.init == "xavier_uniform":
                init_weights(model, config.seed)
            model.to(device)
            optimizer = _make_optimizer(model, config)
            records, resumed_from, step = [], None, 0
            if metrics_path is not None and writer:
                # A previous checkpoint without a checkpoint belongs to an earlier run
                # (removed by --overwrite): never a fallback for this one.
                metrics_path.with_name(PREVIOUS_CHECKPOINT_NAME).unlink(missing_ok=True)
                remove_stale_temporaries(metrics_path.parent)  # of a process killed mid-write
                write_jsonl(metrics_path, [])
        # The network the steps run through: DDP averages the gradients over the ranks.
        net = distributed.wrap(model) if distributed is not None else model
        where = scopes.enter_context(detect_anomalies(model)) if detect_anomaly else None

        def log(record: dict[str, Any]) -> None:
            records.append(record)
            if metrics_path is not None and writer:
                append_jsonl(metrics_path, record)

        def epoch_records() -> list[dict[str, Any]]:
            return [r for r in records if r["kind"] == "epoch"]

        done = epoch_records()
        run_time = done[-1]["time_s"] if done else 0.0
        first_epoch = (resumed_from or 0) + 1
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_start = time.perf_counter()
            if callable(set_epoch):
                set_epoch(epoch - 1)
            # Set every epoch from the config alone (no scheduler state to checkpoint).
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(epoch)
            net.train()
            loss_sum, samples, train_time = 0.0, 0, 0.0
            correct = torch.zeros((), dtype=torch.int64, device=device)
            tic = time.perf_counter()
            for batch, (x, y) in enumerate(_batches(train_loader, device), start=1):
                step += 1
                if where is not None:
                    where.epoch, where.step = epoch, step
                logits = amp.forward(net, x)
                if distributed is None:
                    loss = F.cross_entropy(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    amp.backward(loss)
                    loss_value = loss.item()
                    n = y.shape[0]
                    batch_correct = (logits.detach().argmax(dim=1) == y).sum()
                else:
                    loss, loss_value, n, batch_correct = _global_loss(logits, y, distributed)
                    optimizer.zero_grad(set_to_none=True)
                    amp.backward(loss)
                if not math.isfinite(loss_value):
                    of = f" of {num_batches}" if num_batches is not None else ""
                    raise NonFiniteLossError(
                        f"training loss is {loss_value} at epoch {epoch}, step {step} (batch "
                        f"{batch}{of}); stopped before that update. Lower the learning rate "
                        f"(lr={config.lr:g}), or check the inputs for NaN/inf",
                        epoch=epoch,
                        step=step,
                        loss=loss_value,
                    )
                amp.step(optimizer)
                loss_sum += loss_value * n
                samples += n
                correct += batch_correct
                _sync(device)
                train_time += time.perf_counter() - tic

                if config.log_every_steps and step % config.log_every_steps == 0:
                    log(
                        {
                            "kind": "step",
                            "epoch": epoch,
                            "step": step,
                            "train_loss": loss_sum / samples,
                            "train_acc": correct.item() / samples,
                            "time_s": run_time + time.perf_counter() - epoch_start,
                        }
                    )
                if on_step is not None:
                    on_step(StepInfo(epoch, step, batch, num_batches, n, loss_value))
                tic = time.perf_counter()
            if samples == 0:
                raise ValueError(f"fit: the training loader yielded no samples in epoch {epoch}")

            eval_start = time.perf_counter()
            if distributed is None:
                test = evaluate(model, test_loader, device)
            else:
                test = _evaluate_distributed(model, test_loader, device, distributed)
            eval_time = time.perf_counter() - eval_start
            epoch_time = time.perf_counter() - epoch_start
            run_time += epoch_time
            record = {
                "kind": "epoch",
                "epoch": epoch,
                "step": step,
                "train_loss": loss_sum / samples,
                "train_acc": correct.item() / samples,
                "test_loss": test["loss"],
                "test_acc": test["acc"],
                "train_samples": samples,
                "test_samples": test["samples"],
                "train_time_s": train_time,
                "eval_time_s": eval_time,
                "epoch_time_s": epoch_time,
                "images_per_s": samples / max(train_time, 1e-12),
                "time_s": run_time,
            }
            log(record)
            if checkpoint_path is not None and writer:
                # The plain model's state_dict (no DDP prefix): a checkpoint resumes with
                # any number of processes, or loads into an unwrapped model.
                save_checkpoint(
                    checkpoint_path,
                    keep_previous=checkpoint_path.with_name(PREVIOUS_CHECKPOINT_NAME),
                    state={
                        "format": CHECKPOINT_FORMAT,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": amp.state_dict(),
                        "rng": _rng_state(device),
                        "config": config.to_dict(),
                        "epoch": epoch,
                        "step": step,
                        "metrics": records,
                    },
                )
            if on_epoch is not None:
                on_epoch(dict(record))

    history = epoch_records()
    if not history:
        # Only possible when resuming a checkpoint that has no epochs, which fit never writes.
        raise RuntimeError("fit: no epoch was trained")
    steps = [r for r in records if r["kind"] == "step"]
    epochs_run = config.epochs - (resumed_from or 0)
    return _summary(history, steps, resumed_from, epochs_run)
