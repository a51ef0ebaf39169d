"""``bnlab train``: train one model on Fashion-MNIST and keep everything about the run.

Trains ``--model`` with the normalization ``--norm`` by plain SGD on cross-entropy (the
d2l recipe: Xavier-uniform initialisation, test accuracy after every epoch), with a
progress bar, then prints a summary table. ``--preset NAME`` fills model, norm, learning
rate, epochs, batch size and input resize from a named recipe (d2l's settings); flags
given explicitly override it. The results folder (``--out``) holds:

  config.json       model, norm, training settings and data selection of the run
  environment.json  python/torch versions, device, threads, git revision of bnlab
  metrics.jsonl     one JSON record per epoch (and every --log-every-steps steps)
  checkpoint.pt     model, optimizer and RNG states after the last full epoch
  results.json      final train loss/accuracy and test accuracy, timings, config,
                    history, the first norm layer's gamma and beta
  curves.png        loss and accuracy per epoch

An interrupted run continues with the same command plus ``--resume`` and ends with
exactly the numbers and weights of an uninterrupted one.

Across processes: ``--nproc N`` (or ``torchrun --nproc-per-node N -m bnlab train ...``)
trains with DistributedDataParallel, gloo on CPU, nccl on GPU (one GPU per process).
``--batch-size`` is the global batch: each of the N processes takes 1/N of every batch
(the same shuffled order on every process), so the same command trains the same model
for the same number of steps; with ``--sync-bn`` (BN statistics over the global batch)
it equals the single-process run up to float rounding. Evaluation is sharded (each
process its part of the test set, correct counts and losses summed over processes), so
test accuracy is over the whole test set. Only process 0 writes the files and prints;
config.json records the distribution. A process that fails stops all of them at once
(exit status 1, a line naming the rank); a process whose collective fails because another
one died or hung past ``--dist-timeout`` says it lost contact and exits with status 3. images/s counts the training
steps only (fetching the batch from the device-resident loader, forward, backward and
the SGD update); evaluation, logging and checkpoints are excluded.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bnlab import models
from bnlab.cli._args import (
    add_command,
    add_run_arguments,
    non_negative_int,
    positive_float,
    positive_int,
    unit_float,
)
from bnlab.cli._cores import pick
from bnlab.cli._run_files import run_environment
from bnlab.cli.data import add_data_dir_argument, load_splits
from bnlab.cli.launch import LOST_CONTACT_STATUS, launch, threads_per_worker, worker_argv
from bnlab.data.iterators import split_loaders
from bnlab.models.mlp import ACTIVATIONS, NORM_POSITIONS
from bnlab.models.norm_options import NormOptions
from bnlab.plots.training import plot_training_curves
from bnlab.train import FitResult, StepInfo, TrainConfig, fit, reaches
from bnlab.train.config import INITS, LR_SCHEDULES
from bnlab.train.distributed import (
    DEFAULT_TIMEOUT_S,
    DistributedRun,
    init_distributed,
    shutdown_distributed,
    torchrun_env,
)
from bnlab.train.precision import PRECISIONS
from bnlab.train.presets import PRESETS, available_presets, get_preset
from bnlab.train.run_dir import CHECKPOINT_NAME, RESULTS_NAME, RunDir
from bnlab.train.run_dir import RUN_FILES as _LAYOUT_FILES

__all__ = ["add_parser", "run"]

HELP = "train a model (LeNet, MLP, ResNet, DenseNet, ...) with a chosen normalization"
EXAMPLES = """examples:
  bnlab train --model lenet --norm bnlab --out runs/lenet-bn      d2l's LeNet-BN, 10 epochs
  bnlab train --norm none --lr 0.9 --out runs/lenet               LeNet without BN (d2l's lr)
  bnlab train --model mlp --norm torch --hidden 100 --norm-position before --lr 0.1 --out runs/mlp
  bnlab train --out runs/quick --epochs 1 --limit-train 512 --limit-test 256
  bnlab train --out runs/lenet-bn --resume                        continue an interrupted run
  bnlab train --preset d2l-resnet18 --out runs/resnet18           d2l's ResNet-18 recipe
  bnlab train --preset d2l-resnet18 --norm groupnorm --out runs/resnet18-gn
  bnlab train --model resnet18 --norm groupnorm --resize 96 --lr 0.05 --out runs/r18-gn
  bnlab train --model resnet20 --norm bnlab --lr 0.1 --out runs/resnet20   (28x28 inputs)
  bnlab train --activation relu --lr 0.05 --momentum 0.9 --lr-schedule cosine --batch-size 128 \
      --out runs/lenet-relu      ReLU LeNet-BN: ~90% test accuracy in 10 epochs
  bnlab train --norm batchrenorm --r-max 3 --d-max 5 --renorm-warmup 0.5 --out runs/renorm
  bnlab train --norm ghost --virtual-batch-size 16 --bn-momentum 0.05 --out runs/ghost
  bnlab train --nproc 2 --sync-bn --out runs/lenet-ddp            2 processes, SyncBN
  torchrun --nproc-per-node 2 -m bnlab train --sync-bn --out runs/lenet-ddp   the same
"""

# Settings a preset fills, with the defaults used without one.
_DEFAULTS: dict[str, Any] = {
    "model": "lenet",
    "norm": "bnlab",
    "lr": 1.0,
    "epochs": 10,
    "batch_size": 256,
    "resize": None,
}


def _warmup_steps(warmup: Callable[[int], None] | None) -> Callable[[StepInfo], None] | None:
    """The ``on_step`` of a rank that shows no progress: the warm-up alone."""
    if warmup is None:
        return None
    return lambda info: warmup(info.step)


def _epilog() -> str:
    lines = [EXAMPLES, "presets (--preset NAME; explicit flags override them):"]
    for preset in PRESETS.values():
        resize = f", resize {preset.resize}" if preset.resize else ""
        lines.append(
            f"  {preset.name:<14} {preset.model} + {preset.norm}, lr {preset.lr:g}, "
            f"{preset.epochs} epochs, batch {preset.batch_size}{resize}"
        )
    lines.append("")
    lines.append(f"models (--model): {', '.join(models.available())}")
    lines.append(f"norms (--norm): {', '.join(models.available_norms())}")
    return "\n".join(lines) + "\n"


# Files of a run folder that --overwrite removes (and nothing else): the layout's and
# the curves.
CURVES_NAME = "curves.png"
RUN_FILES = (*_LAYOUT_FILES, CURVES_NAME)
# Settings of config.json that may differ when a run is resumed.
_RESUMABLE = {"train.epochs", "train.device", "data.data_dir", "target_acc"}
# The number of processes may change on resume (checkpoints hold the plain model; with
# --sync-bn the run continues the same optimisation).
_RESUMABLE |= {
    f"distributed.{key}" for key in ("world_size", "backend", "sync_bn", "batch_size_per_process")
}


def _hidden_sizes(text: str) -> tuple[int, ...]:
    """Comma-separated positive ints, e.g. ``100`` or ``256,128``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        return tuple(positive_int(p) for p in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers >= 1 such as 100 or 256,128, got {text!r}"
        ) from None


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "train", run, HELP, __doc__, _epilog(), as_written=True)
    p.add_argument(
        "--preset",
        choices=available_presets(),
        default=None,
        help="a named recipe that fills model, norm, lr, epochs, batch size and resize",
    )
    p.add_argument(
        "--model",
        choices=models.available(),
        default=None,
        help="the network (default lenet, or the preset's)",
    )
    p.add_argument(
        "--norm",
        choices=models.available_norms(),
        default=None,
        help="normalization layer in the norm slots (default bnlab, or the preset's)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="results folder")
    add_data_dir_argument(p)
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 10)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="global batch size (default 256); with N processes each takes 1/N of every batch",
    )
    p.add_argument(
        "--lr", type=positive_float, default=None, help="SGD learning rate (default 1.0)"
    )
    p.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        metavar="S",
        help="resize the images to SxS, e.g. 96 as d2l for ResNet/DenseNet (default: 28x28)",
    )
    p.add_argument(
        "--momentum", type=float, default=0.0, help="SGD momentum in [0, 1) (default 0, plain SGD)"
    )
    p.add_argument(
        "--weight-decay", type=float, default=0.0, help="SGD weight decay >= 0 (default 0)"
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--init",
        choices=INITS,
        default="xavier_uniform",
        help="weight initialisation on a fresh start (default xavier_uniform, as d2l)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="constant",
        help="constant (d2l's) or cosine: lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2 "
        "per epoch (default constant)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32",
        help="32: float32; bf16: bfloat16 autocast; fp16: float16 autocast with loss "
        "scaling (default 32)",
    )
    p.add_argument(
        "--target-acc",
        type=unit_float,
        default=None,
        metavar="A",
        help="stop after the first epoch whose test accuracy is at least A (e.g. 0.9); "
        "the summary and results.json say when it was reached (default: run every epoch)",
    )
    p.add_argument(
        "--detect-anomaly",
        action="store_true",
        help="check every batch and layer output for NaN/inf and name the layer where they "
        "first appear (slower)",
    )
    p.add_argument(
        "--hidden",
        type=_hidden_sizes,
        default=None,
        metavar="N[,N...]",
        help="MLP hidden sizes (default 100)",
    )
    p.add_argument(
        "--norm-position",
        choices=NORM_POSITIONS,
        default=None,
        help="MLP: norm after (default) or before the activation",
    )
    p.add_argument(
        "--activation",
        choices=tuple(ACTIVATIONS),
        default=None,
        help="lenet and mlp: the hidden activation (default: lenet sigmoid as d2l, mlp relu)",
    )
    norms = p.add_argument_group(
        "norm layer options", "change the norm layers' defaults (exit 2 when no layer takes one)"
    )
    norms.add_argument(
        "--bn-momentum",
        type=unit_float,
        default=None,
        metavar="M",
        help="weight of the new batch in the running statistics, in [0, 1] (PyTorch's "
        "convention; default 0.1, 0.01 for batchrenorm)",
    )
    norms.add_argument(
        "--bn-eps", type=positive_float, default=None, metavar="EPS", help="eps (default 1e-5)"
    )
    norms.add_argument(
        "--r-max",
        type=float,
        default=None,
        help="batchrenorm: bound on r, >= 1 (default 3; with --renorm-warmup, the final one)",
    )
    norms.add_argument(
        "--d-max",
        type=float,
        default=None,
        help="batchrenorm: bound on d, >= 0 (default 5; with --renorm-warmup, the final one)",
    )
    norms.add_argument(
        "--renorm-warmup",
        type=unit_float,
        default=None,
        metavar="FRACTION",
        help="batchrenorm: the paper's warm-up of r_max/d_max (batch norm first, then a "
        "linear ramp), r_max reached at this fraction of the run (default: no warm-up)",
    )
    norms.add_argument(
        "--virtual-batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="ghost: samples per virtual batch (default 32)",
    )
    add_run_arguments(p)
    p.add_argument(
        "--log-every-steps",
        type=non_negative_int,
        default=0,
        help="also log train loss/accuracy every K steps (default 0: per epoch only)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --out (its files only)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        metavar="N",
        help="train with N processes on this machine (DistributedDataParallel; gloo on CPU, "
        "nccl on GPU: one GPU each), as torchrun --nproc-per-node N -m bnlab train (default 1)",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="across processes: every batch norm becomes bnlab's SyncBatchNorm (statistics of "
        "the global batch; works on CPU too)",
    )
    p.add_argument(
        "--dist-timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="across processes: seconds a process waits for the others before it gives up "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )


def _apply_preset(args: argparse.Namespace) -> None:
    """Fill every setting not given on the command line from ``--preset`` or the defaults."""
    preset = get_preset(args.preset) if args.preset else None
    for key, default in _DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, getattr(preset, key) if preset is not None else default)


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors argparse cannot see: exit 2 with the fix."""
    error = args.parser.error
    if not 0.0 <= args.momentum < 1.0:
        error(f"argument --momentum: expected a number in [0, 1), got {args.momentum:g}")
    if not (args.weight_decay >= 0.0 and math.isfinite(args.weight_decay)):
        error(f"argument --weight-decay: expected a finite number >= 0, got {args.weight_decay:g}")
    if args.model != "mlp":
        for flag, value in (("--hidden", args.hidden), ("--norm-position", args.norm_position)):
            if value is not None:
                error(f"argument {flag}: applies to --model mlp only, not --model {args.model}")
    if args.activation is not None and args.model not in _ACTIVATION_MODELS:
        error(
            f"argument --activation: applies to --model {' or '.join(_ACTIVATION_MODELS)} "
            f"only, not --model {args.model}"
        )
    _check_norm_options(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        error("argument --device: cuda was asked for but CUDA is not available; use --device cpu")
    if args.resume and args.overwrite:
        error("--resume and --overwrite exclude each other")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        error(f"argument --out: {out} exists and is not a folder")
    run = RunDir(out)
    if args.resume and not run.checkpoint.is_file():
        error(f"--resume: no {CHECKPOINT_NAME} in {out}; run without --resume to start it")
    # A folder without a checkpoint or results holds at most a run stopped in its first
    # epoch: nothing to keep, so it is simply started again.
    existing = run.existing((CHECKPOINT_NAME, RESULTS_NAME))
    if existing and not (args.resume or args.overwrite):
        error(
            f"argument --out: {out} already holds a run ({', '.join(existing)}); add --resume "
            "to continue it, --overwrite to start it again, or choose another folder"
        )


# Models that take an ``activation`` option.
_ACTIVATION_MODELS = ("lenet", "mlp")


def norm_options(args: argparse.Namespace) -> NormOptions:
    """The norm layer options of the command line (``--bn-momentum`` ...)."""
    return NormOptions(
        momentum=args.bn_momentum,
        eps=args.bn_eps,
        r_max=args.r_max,
        d_max=args.d_max,
        renorm_warmup=args.renorm_warmup,
        virtual_batch_size=args.virtual_batch_size,
    )


def _check_norm_options(args: argparse.Namespace) -> None:
    """Exit 2 for a bad norm option or one that no layer of the model takes."""
    try:
        options = norm_options(args)
        if options.to_dict():
            # The model is built on the meta device: no memory, no random numbers.
            with torch.device("meta"):
                model = models.create(args.model, norm=args.norm, **_model_kwargs(args))
            options.apply(model, args.norm)
    except (TypeError, ValueError) as exc:
        # The messages name the option: momentum is --bn-momentum, eps --bn-eps, the
        # others their flag with dashes.
        args.parser.error(f"norm layer options: {exc}")


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.model != "mlp":
        preset = get_preset(args.preset) if args.preset else None
        # The preset's model options apply only to the preset's own model.
        kwargs = (
            dict(preset.model_kwargs) if preset is not None and preset.model == args.model else {}
        )
        if args.activation is not None:
            kwargs["activation"] = args.activation
        return kwargs
    kwargs = {
        "hidden": list(args.hidden or (100,)),
        "norm_position": args.norm_position or "after",
    }
    if args.activation is not None:
        kwargs["activation"] = args.activation
    return kwargs


def _run_config(
    args: argparse.Namespace, train: TrainConfig, data: dict[str, Any]
) -> dict[str, Any]:
    config = {
        "command": "train",
        "preset": args.preset,
        "model": args.model,
        "norm": args.norm,
        "model_kwargs": _model_kwargs(args),
        "train": train.to_dict(),
        "data": data,
    }
    options = norm_options(args).to_dict()
    if options:
        # Only when set: a run saved before these options existed resumes unchanged.
        config["norm_options"] = options
    if args.target_acc is not None:
        config["target_acc"] = args.target_acc
    return config


def _check_resume(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """Refuse to resume with settings other than the saved run's (exit 2)."""
    run = RunDir(args.out)
    try:
        # Settings added to TrainConfig since the run was saved count as their defaults.
        changes = run.settings_changes(
            config, may_change=_RESUMABLE, defaults={"train": TrainConfig().to_dict()}
        )
    except (OSError, ValueError) as exc:
        args.parser.error(
            f"--resume: cannot read {run.config} ({exc}); start the run again with --overwrite"
        )
    if changes:
        args.parser.error(
            f"--resume: {args.out} was run with other settings "
            f"({'; '.join(str(c) for c in changes)}); pass the saved ones (see its "
            "config.json), or --overwrite to start again"
        )


def _first_norm(model: torch.nn.Module) -> dict[str, Any] | None:
    try:
        layer = models.first_norm(model)
        gamma, beta = models.first_norm_affine(model)
    except ValueError:
        return None
    name = next(n for n, m in model.named_modules() if m is layer)
    return {
        "layer": name,
        "type": type(layer).__name__,
        "gamma": gamma.cpu().tolist(),
        "beta": beta.cpu().tolist(),
    }


def _summary_table(run_config: dict[str, Any], result: FitResult, out: Path) -> Table:
    train = run_config["train"]
    table = Table(
        title=f"bnlab train: {run_config['model']} with norm {run_config['norm']}",
        caption="images/s: training steps only (batch fetch, forward, backward, update)",
    )
    table.add_column("quantity")
    # fold: a long results path wraps instead of being cut at 80 columns.
    table.add_column("value", justify="right", overflow="fold")
    rows = [
        ("epochs", str(len(result.history))),
        ("batch size / lr / seed", f"{train['batch_size']} / {train['lr']:g} / {train['seed']}"),
        (
            "training / test images",
            f"{run_config['data']['train_samples']} / {run_config['data']['test_samples']}",
        ),
        ("final train loss", f"{result.final['train_loss']:.4f}"),
        ("final train accuracy", f"{result.final['train_acc']:.4f}"),
        ("final test accuracy", f"{result.final['test_acc']:.4f}"),
        ("wall time (s)", f"{result.wall_time_s:.1f}"),
        ("training time (s)", f"{result.train_time_s:.1f}"),
        ("images/s", f"{result.images_per_s:,.0f}"),
        ("results", str(out)),
    ]
    spread = run_config.get("distributed")
    if spread is not None:
        sync = ", SyncBN" if spread["sync_bn"] else ""
        rows.insert(2, ("processes", f"{spread['world_size']} ({spread['backend']}{sync})"))
    if result.resumed_from_epoch is not None:
        rows.insert(1, ("resumed after epoch", str(result.resumed_from_epoch)))
    if run_config.get("target_acc") is not None:
        target = result.target(run_config["target_acc"])
        reached = (
            f"epoch {target['epoch']}, {target['time_s']:.1f} s"
            if target["reached"]
            else f"not in {len(result.history)} epochs"
        )
        rows.insert(-1, (f"test accuracy >= {target['test_acc']:g}", reached))
    for row in rows:
        table.add_row(*row)
    return table


def _resume_hint(out: Path) -> str:
    return f"; the same command with --resume continues {out} from its last full epoch"


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: the same command in N processes under torchrun's agent."""
    if args.device == "cuda" and args.nproc > torch.cuda.device_count():
        args.parser.error(
            f"argument --nproc: {args.nproc} processes need one GPU each but "
            f"{torch.cuda.device_count()} are visible; use --nproc {torch.cuda.device_count()}"
        )
    argv = worker_argv(args.parser, args, "train")
    if args.threads is None:
        argv += ["--threads", str(threads_per_worker(args.nproc))]
    try:
        launch(argv, args.nproc, resume_hint=_resume_hint(args.out))
    except KeyboardInterrupt:
        print(f"interrupted{_resume_hint(args.out)}", file=sys.stderr)
        raise
    return 0


def run(args: argparse.Namespace) -> int:
    _apply_preset(args)
    _check_args(args)
    try:
        env = torchrun_env(os.environ)
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.nproc > 1:
        if env is not None:
            args.parser.error(
                f"argument --nproc: this process already runs under torchrun (WORLD_SIZE="
                f"{env.world_size}); drop --nproc, or run bnlab train --nproc without torchrun"
            )
        return _launch(args)
    if env is None or env.world_size == 1:
        # One process: a thread per free core unless --threads (or OMP_NUM_THREADS) says.
        layout = pick(threads=args.threads)
        Console().print(layout.line())  # beside the summary, on stdout (stderr: errors)
        torch.set_num_threads(layout.threads)
        return _train(args, None)
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = init_distributed(
        env, device=args.device, sync_bn=args.sync_bn, timeout_s=args.dist_timeout
    )
    try:
        return _train(args, distributed)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        where = f"rank {env.rank} of {env.world_size}"
        if _lost_contact(exc):
            # Not the cause: another process failed first (its error is printed too).
            # Exiting a moment later lets the agent see that one fail first and name it.
            time.sleep(_LOST_CONTACT_GRACE_S)
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            _end_rank(
                f"bnlab train: error: {where}: lost contact with the other processes "
                f"({first_line}); another process failed or was stopped",
                LOST_CONTACT_STATUS,
            )
        # One line per failing rank that says which one it was.
        _end_rank(f"bnlab train: error: {where}: {exc}", 1)
    finally:
        shutdown_distributed()  # a run that ends or raises otherwise (os._exit skips it)


def _end_rank(message: str, status: int) -> NoReturn:
    """A failed rank's last line, then the end of its process, at once (``os._exit``).

    Not by unwinding: freeing the ``DistributedDataParallel`` model holds the GIL while the
    gloo process group joins its worker thread, and that thread may still need the GIL to
    drop a finished collective (seen here: the rank never exited, and the others waited
    out --dist-timeout). The process holds nothing to save: rank 0 writes each file
    atomically, and the run resumes from its last full epoch.
    """
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# Seconds a rank that lost contact waits before it exits (see run).
_LOST_CONTACT_GRACE_S = 2.0


def _lost_contact(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank is gone or stuck."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    # gloo raises plain RuntimeErrors for a closed peer or a collective past the timeout.
    text = str(exc).lower()
    return any(s in text for s in ("connection closed by peer", "connection reset", "timed out"))


def _train(args: argparse.Namespace, distributed: DistributedRun | None) -> int:
    """The run itself; with ``distributed``, this rank's part (rank 0 writes and prints)."""
    main_rank = distributed is None or distributed.is_main
    device = distributed.device if distributed is not None else args.device
    out: Path = args.out
    console = Console()
    progress_console = Console(stderr=True)

    # Each TrainConfig field is the option of the same name; the device is this rank's.
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{**options, "device": device})
    splits = load_splits(args)
    tensors = splits.tensors
    data = {
        "dataset": "fashion-mnist",
        "data_dir": str(splits.data_dir),
        "limit_train": args.limit_train,
        "limit_test": args.limit_test,
        "resize": args.resize,
        "train_samples": len(tensors["train_labels"]),
        "test_samples": len(tensors["test_labels"]),
        "test_batch_size": args.batch_size,
    }
    run_config = _run_config(args, train_config, data)
    environment = run_environment(device)
    if distributed is not None:
        run_config["distributed"] = {
            "world_size": distributed.world_size,
            "backend": distributed.backend,
            "sync_bn": distributed.sync_bn,
            "batch_size_per_process": args.batch_size / distributed.world_size,
        }
        environment["world_size"] = distributed.world_size
        environment["backend"] = distributed.backend
    if args.resume:
        _check_resume(args, run_config)
    run = RunDir(out)
    if main_rank:
        run.ensure()
        if args.overwrite:
            run.remove(RUN_FILES)
        run.write_config(run_config)
        run.write_environment(environment)
    if distributed is not None:
        distributed.barrier()  # --overwrite's removals are done before any rank reads

    train_loader, test_loader = split_loaders(
        tensors,
        args.batch_size,
        seed=args.seed,
        device=device,
        resize=args.resize,
        rank=distributed.rank if distributed is not None else 0,
        world_size=distributed.world_size if distributed is not None else 1,
    )
    torch.manual_seed(args.seed)  # construction-time init (replaced unless --init default)
    model = models.create(args.model, norm=args.norm, **run_config["model_kwargs"])
    options = norm_options(args)
    options.apply(model, args.norm)
    warmup = options.warmup(model, len(train_loader) * args.epochs)
    if distributed is not None:
        model = distributed.prepare(model)  # SyncBatchNorm with --sync-bn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=progress_console,
        disable=args.no_progress or not main_rank,
    )
    num_batches = len(train_loader)
    task = progress.add_task("epoch", total=num_batches, loss=math.nan)

    def on_step(info: StepInfo) -> None:
        if warmup is not None:
            warmup(info.step)
        progress.update(
            task,
            description=f"epoch {info.epoch}/{args.epochs}",
            completed=info.batch,
            loss=info.loss,
        )

    def on_epoch(record: dict[str, Any]) -> None:
        progress.console.print(
            f"epoch {record['epoch']}/{args.epochs}: train loss {record['train_loss']:.4f}, "
            f"train acc {record['train_acc']:.4f}, test acc {record['test_acc']:.4f}, "
            f"{record['images_per_s']:,.0f} images/s"
        )
        if record["epoch"] < args.epochs:
            progress.reset(task, total=num_batches, loss=math.nan)

    try:
        with progress:
            result = fit(
                model,
                train_loader,
                test_loader,
                train_config,
                run_dir=out,
                resume=args.resume,
                on_step=on_step if main_rank else _warmup_steps(warmup),
                on_start=warmup,
                on_epoch=on_epoch if main_rank else None,
                distributed=distributed,
                detect_anomaly=args.detect_anomaly,
                stop_when=None if args.target_acc is None else reaches(args.target_acc),
                # What the run is, kept in its checkpoints: a resume that differs is refused.
                identity={
                    **{k: run_config[k] for k in ("model", "norm", "model_kwargs")},
                    "data": {k: v for k, v in run_config["data"].items() if k != "data_dir"},
                },
            )
    except KeyboardInterrupt:
        if main_rank:
            progress_console.print(f"interrupted{_resume_hint(out)}")
        raise
    if not main_rank:
        return 0

    results = {
        **result.to_dict(),
        "config": run_config,
        "model": {
            "name": args.model,
            "norm": args.norm,
            "num_parameters": sum(p.numel() for p in model.parameters()),
        },
        "first_norm": _first_norm(model),
    }
    if args.target_acc is not None:
        results["target"] = result.target(args.target_acc)
    run.write_results(results)
    title = f"{args.model} + {args.norm} on Fashion-MNIST (batch {args.batch_size}, lr {args.lr:g})"
    plot_training_curves(result.history, title, out / CURVES_NAME)

    console.print(_summary_table(run_config, result, out))
    if results["first_norm"] is not None:
        first = results["first_norm"]
        console.print(f"first norm layer ({first['layer']}, {first['type']}):")
        console.print("  gamma = [" + ", ".join(f"{v:.3f}" for v in first["gamma"]) + "]")
        console.print("  beta  = [" + ", ".join(f"{v:.3f}" for v in first["beta"]) + "]")
    return 0
