"""The d2l chapter's recipe end to end: bnlab's pipeline against a d2l-style one.

Both train the chapter's LeNet-BN with the book's recipe (SGD lr 1.0, batch 256,
Xavier init, test accuracy after every epoch) through the same ``bnlab.train.fit``;
they differ in what the book does differently:

* ``d2l_style``: a per-sample ``Dataset`` (ToTensor per image) behind a
  ``torch.utils.data.DataLoader`` with the book's worker count (4), feeding the
  textbook BN (``bnlab.textbook``, the chapter's scratch layer).
* ``bnlab``: the whole split as one tensor (``DeviceLoader``), bnlab's BatchNorm.
* ``bnlab_torchbn`` (reference): DeviceLoader with torch's native BatchNorm.

Runs are interleaved (variant order rotates each repeat) in one process. Timed:
wall time of the whole ``fit`` call, from building the loaders to the last
evaluation. Prints a table with seconds per run, the ratio d2l_style / variant, and
the final accuracies (the speed-up counts only at the same accuracy), and writes JSON.

Time to a target accuracy (``--target-acc 0.90``): one run per variant, each
evaluated on the test set after every epoch in eval mode, i.e. with the model's moving
averages (the accuracy that counts; nothing is recalibrated). Recorded per variant: the
wall time to all ``--epochs`` epochs and the wall time and epoch at which test accuracy
first reaches the target (or "not reached in E epochs"). Clocks start before the
loaders are built and include every evaluation up to that epoch. Variants:

* ``d2l_style``: the book's pipeline and recipe (as above: sigmoid LeNet-BN, textbook
  BN, SGD lr 1.0, batch 256, DataLoader with 4 workers).
* ``bnlab``: the book's recipe on bnlab's pipeline (DeviceLoader, bnlab BN).
* ``bnlab_fast``: bnlab's fastest LeNet-sized recipe (``--fast-*`` options; default
  LeNet-BN with ReLU instead of sigmoid, bnlab BN, SGD lr 0.05 momentum 0.9 with a
  cosine schedule over ``--epochs``, batch 128, DeviceLoader). The recipe is stated in the output and the JSON.

Writes ``bench_d2l_recipe_target.json`` (the plain mode's ``bench_d2l_recipe.json`` is
left alone).

Usage: python benchmarks/bench_d2l_recipe.py [--epochs 10] [--repeats 1] [--out runs/bench]
       python benchmarks/bench_d2l_recipe.py --target-acc 0.90 [--epochs 10] [--seeds 0 1 2]
       python benchmarks/bench_d2l_recipe.py --device cuda  (data and model on the GPU)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from bnlab.bench.timing import environment_record
from bnlab.cli.data import data_dir_from_env
from bnlab.data.dataset import FashionMNISTDataset
from bnlab.data.fashion_mnist import load_fashion_mnist
from bnlab.data.loader import DeviceLoader
from bnlab.models import create
from bnlab.train import TrainConfig, fit
from bnlab.train.io import write_json

VARIANTS = ("d2l_style", "bnlab", "bnlab_torchbn")
TARGET_VARIANTS = ("d2l_style", "bnlab", "bnlab_fast")


def _loaders(
    variant: str,
    data: dict[str, torch.Tensor],
    batch_size: int,
    workers: int,
    seed: int,
    device: str = "cpu",
):
    if variant == "d2l_style":
        train = DataLoader(
            FashionMNISTDataset(data["train_x"], data["train_y"]),
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
        )
        test = DataLoader(
            FashionMNISTDataset(data["test_x"], data["test_y"]),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
        )
        return train, test
    train = DeviceLoader(
        data["train_x"], data["train_y"], batch_size, shuffle=True, seed=seed, device=device
    )
    test = DeviceLoader(data["test_x"], data["test_y"], batch_size, shuffle=False, device=device)
    return train, test


def _where(args: argparse.Namespace) -> str:
    if args.device == "cpu":
        return f"{args.threads} threads"
    name = torch.cuda.get_device_name(args.device) if torch.cuda.is_available() else "?"
    return f"{args.device} ({name})"


def _run(
    variant: str, data: dict[str, torch.Tensor], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    norm = {"d2l_style": "textbook", "bnlab": "bnlab", "bnlab_torchbn": "torch"}[variant]
    started = time.perf_counter()
    train, test = _loaders(variant, data, args.batch_size, args.workers, seed, args.device)
    model = create("lenet", norm=norm)
    config = TrainConfig(
        lr=1.0, epochs=args.epochs, batch_size=args.batch_size, seed=seed, device=args.device
    )
    result = fit(model, train, test, config)
    total = time.perf_counter() - started
    return {
        "variant": variant,
        "norm": norm,
        "seed": seed,
        "total_time_s": total,
        "fit_wall_time_s": result.wall_time_s,
        "train_time_s": result.train_time_s,
        "images_per_s": result.images_per_s,
        "train_loss": result.final["train_loss"],
        "train_acc": result.final["train_acc"],
        "test_acc": result.final["test_acc"],
    }


def _recipe(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Model and SGD settings of a target-mode variant (the book's unless ``bnlab_fast``)."""
    if variant == "bnlab_fast":
        return {
            "model": "lenet",
            "activation": args.fast_activation,
            "norm": "bnlab",
            "loader": "DeviceLoader",
            "lr": args.fast_lr,
            "momentum": args.fast_momentum,
            "weight_decay": 0.0,
            "lr_schedule": args.fast_schedule,
            "batch_size": args.fast_batch_size,
            "init": "xavier_uniform",
        }
    return {
        "model": "lenet",
        "activation": "sigmoid",
        "norm": "textbook" if variant == "d2l_style" else "bnlab",
        "loader": (
            f"DataLoader(num_workers={args.workers})" if variant == "d2l_style" else "DeviceLoader"
        ),
        "lr": 1.0,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "lr_schedule": "constant",
        "batch_size": args.batch_size,
        "init": "xavier_uniform",
    }


def _describe(recipe: dict[str, Any]) -> str:
    sgd = f"SGD lr {recipe['lr']:g}" + (
        f" momentum {recipe['momentum']:g}" if recipe["momentum"] else ""
    )
    if recipe["lr_schedule"] != "constant":
        sgd += f", {recipe['lr_schedule']} schedule"
    return (
        f"LeNet-BN ({recipe['activation']}, {recipe['norm']} BN), {sgd}, "
        f"batch {recipe['batch_size']}, {recipe['loader']}"
    )


def _run_to_target(
    variant: str, data: dict[str, torch.Tensor], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    recipe = _recipe(variant, args)
    curve: list[dict[str, Any]] = []
    started = time.perf_counter()

    def on_epoch(record: dict[str, Any]) -> None:
        # Wall time since before the loaders were built, read after this epoch's evaluation.
        curve.append(
            {
                "epoch": record["epoch"],
                "wall_time_s": time.perf_counter() - started,
                "test_acc": record["test_acc"],
                "train_acc": record["train_acc"],
                "train_loss": record["train_loss"],
            }
        )

    loader_variant = "d2l_style" if variant == "d2l_style" else "bnlab"
    train, test = _loaders(
        loader_variant, data, recipe["batch_size"], args.workers, seed, args.device
    )
    model = create("lenet", norm=recipe["norm"], activation=recipe["activation"])
    config = TrainConfig(
        lr=recipe["lr"],
        momentum=recipe["momentum"],
        weight_decay=recipe["weight_decay"],
        lr_schedule=recipe["lr_schedule"],
        epochs=args.epochs,
        batch_size=recipe["batch_size"],
        seed=seed,
        init=recipe["init"],
        device=args.device,
    )
    result = fit(model, train, test, config, on_epoch=on_epoch)
    total = time.perf_counter() - started
    hit = next((c for c in curve if c["test_acc"] >= args.target_acc), None)
    return {
        "variant": variant,
        "recipe": recipe,
        "recipe_text": _describe(recipe),
        "seed": seed,
        "target_acc": args.target_acc,
        "total_time_s": total,
        "epochs": args.epochs,
        "reached": hit is not None,
        "epoch_to_target": hit["epoch"] if hit else None,
        "time_to_target_s": hit["wall_time_s"] if hit else None,
        "best_test_acc": max(c["test_acc"] for c in curve),
        "final_test_acc": result.final["test_acc"],
        "images_per_s": result.images_per_s,
        "curve": curve,
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: list[float], digits: int = 1) -> str:
    mean, sd = _mean_sd(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _main_target(args: argparse.Namespace, data: dict[str, torch.Tensor], console: Console) -> None:
    runs: list[dict[str, Any]] = []
    order = list(args.target_variants)
    for seed in args.seeds:
        for variant in order:
            console.print(f"seed {seed}, {variant}: {_describe(_recipe(variant, args))} ...")
            record = _run_to_target(variant, data, args, seed=seed)
            accs = ", ".join(f"{c['test_acc']:.3f}" for c in record["curve"])
            console.print(f"  {record['total_time_s']:.1f} s; test acc per epoch: {accs}")
            runs.append(record)
        order = order[1:] + order[:1]  # rotate so no variant always runs first

    seeds = len(args.seeds)
    table = Table(
        title=(
            f"d2l recipe to {args.target_acc:.0%} test accuracy (moving averages), "
            f"{args.epochs} epochs, {_where(args)}, "
            + (f"mean ± sd over {seeds} seeds" if seeds > 1 else f"seed {args.seeds[0]}")
        )
    )
    for col in (
        "variant",
        f"s to {args.epochs} ep",
        "reached",
        "s to target",
        "epoch",
        "best acc",
        f"acc @ {args.epochs}",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    summary: dict[str, Any] = {}
    for variant in args.target_variants:
        mine = [r for r in runs if r["variant"] == variant]
        hits = [r for r in mine if r["reached"]]
        total = [r["total_time_s"] for r in mine]
        best = [r["best_test_acc"] for r in mine]
        final = [r["final_test_acc"] for r in mine]
        to_target = [r["time_to_target_s"] for r in hits]
        epochs = [float(r["epoch_to_target"]) for r in hits]
        summary[variant] = {
            "recipe": mine[0]["recipe_text"],
            "seeds": [r["seed"] for r in mine],
            "runs_reaching_target": len(hits),
            "time_to_epochs_s_mean_sd": _mean_sd(total),
            # Over the runs that reached the target only (see runs_reaching_target).
            "time_to_target_s_mean_sd": _mean_sd(to_target) if hits else None,
            "epoch_to_target_mean_sd": _mean_sd(epochs) if hits else None,
            "time_to_target_s": [r["time_to_target_s"] for r in mine],
            "epoch_to_target": [r["epoch_to_target"] for r in mine],
            "best_test_acc_mean_sd": _mean_sd(best),
            "final_test_acc_mean_sd": _mean_sd(final),
            "target": f"reached in {len(hits)} of {len(mine)} runs of {args.epochs} epochs",
        }
        table.add_row(
            variant,
            _pm(total),
            f"{len(hits)}/{len(mine)}",
            _pm(to_target) if hits else "-",
            _pm(epochs) if hits else "-",
            _pm(best, 3),
            _pm(final, 3),
        )
    console.print(table)
    for variant in args.target_variants:
        console.print(f"{variant}: {summary[variant]['recipe']}")
    console.print("test accuracy: eval mode with the BN moving averages, after every epoch")
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_json(
        args.out / "bench_d2l_recipe_target.json",
        {
            "benchmark": "d2l_recipe_target",
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "environment": environment_record(
                environ=os.environ, repo_dir=Path(__file__).resolve().parent
            ),
            "timed": (
                "wall time from before building the loaders to the end of the epoch "
                "(training + that epoch's test evaluation); time to target is read at the "
                "first epoch whose test accuracy >= target_acc; its mean and sd are over "
                "the runs that reached the target"
            ),
            "accuracy": (
                "test accuracy in eval mode with the model's BN moving averages, after "
                "every epoch (no recalibration)"
            ),
            "summary": summary,
            "runs": runs,
        },
    )
    console.print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=None, help="Fashion-MNIST folder (default: $BNLAB_DATA_DIR, cache)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON")
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs per run (default 10, the book's)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant (default 1)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--workers", type=int, default=4, help="DataLoader workers of d2l_style (book: 4)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the model trains: cpu (default) or cuda; bnlab's loaders keep the whole "
        "split on that device, d2l_style's DataLoader copies each batch there as the book does",
    )
    parser.add_argument(
        "--limit-train", type=int, default=None, help="first N training images only"
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--target-acc",
        type=float,
        default=None,
        help="time-to-accuracy mode: record when test accuracy first reaches this (e.g. 0.90)",
    )
    parser.add_argument(
        "--target-variants",
        nargs="+",
        choices=TARGET_VARIANTS,
        default=list(TARGET_VARIANTS),
        help="variants of the --target-acc mode",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of the --target-acc runs (one run per variant and seed; mean ± sd)",
    )
    parser.add_argument("--fast-lr", type=float, default=0.05, help="bnlab_fast: SGD lr")
    parser.add_argument("--fast-momentum", type=float, default=0.9, help="bnlab_fast: momentum")
    parser.add_argument("--fast-batch-size", type=int, default=128, help="bnlab_fast: batch")
    parser.add_argument(
        "--fast-schedule",
        choices=("constant", "cosine"),
        default="cosine",
        help="bnlab_fast: lr schedule over --epochs",
    )
    parser.add_argument(
        "--fast-activation",
        choices=("relu", "sigmoid", "tanh"),
        default="relu",
        help="bnlab_fast: LeNet activation",
    )
    args = parser.parse_args()
    if args.target_acc is not None and not 0.0 < args.target_acc <= 1.0:
        parser.error(f"--target-acc must be in (0, 1], got {args.target_acc}")
    torch.set_num_threads(args.threads)
    console = Console(width=120)  # tables stay whole in logs and pipes

    data_dir = data_dir_from_env(args.data_dir)
    train_x, train_y = load_fashion_mnist("train", data_dir)
    test_x, test_y = load_fashion_mnist("test", data_dir)
    if args.limit_train:
        train_x, train_y = train_x[: args.limit_train], train_y[: args.limit_train]
    data = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    if args.target_acc is not None:
        _main_target(args, data, console)
        return

    runs: list[dict[str, Any]] = []
    order = list(args.variants)
    for repeat in range(args.repeats):
        for variant in order:
            console.print(f"repeat {repeat + 1}/{args.repeats}: {variant} ...")
            record = _run(variant, data, args, seed=repeat)
            console.print(
                f"  {record['total_time_s']:.1f} s, test acc {record['test_acc']:.3f}, "
                f"{record['images_per_s']:.0f} img/s in training steps"
            )
            runs.append(record)
        order = order[1:] + order[:1]  # rotate so no variant always runs first

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["variant"] == variant)

    table = Table(
        title=f"d2l recipe, LeNet-BN, {args.epochs} epochs, batch {args.batch_size}, {_where(args)}"
    )
    for col in (
        "variant",
        "total s",
        "s/epoch",
        "img/s (train)",
        "test acc",
        "train acc",
        "d2l_style / this",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    summary: dict[str, Any] = {}
    for variant in args.variants:
        total = med(variant, "total_time_s")
        # No d2l-style run to compare with: null in the JSON (NaN is not JSON).
        ratio = med("d2l_style", "total_time_s") / total if "d2l_style" in args.variants else None
        summary[variant] = {
            "total_time_s": total,
            "time_per_epoch_s": total / args.epochs,
            "images_per_s": med(variant, "images_per_s"),
            "test_acc": med(variant, "test_acc"),
            "train_acc": med(variant, "train_acc"),
            "speedup_vs_d2l_style": ratio,
        }
        table.add_row(
            variant,
            f"{total:.1f}",
            f"{total / args.epochs:.2f}",
            f"{summary[variant]['images_per_s']:.0f}",
            f"{summary[variant]['test_acc']:.3f}",
            f"{summary[variant]['train_acc']:.3f}",
            "-" if ratio is None else f"{ratio:.2f}",
        )
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_json(
        args.out / "bench_d2l_recipe.json",
        {
            "benchmark": "d2l_recipe",
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "environment": environment_record(
                environ=os.environ, repo_dir=Path(__file__).resolve().parent
            ),
            "timed": "wall time of loader construction + fit (all epochs, evaluation after each)",
            "summary": summary,
            "runs": runs,
        },
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
