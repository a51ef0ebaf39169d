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

Usage: python benchmarks/bench_d2l_recipe.py [--epochs 10] [--repeats 1] [--out runs/bench]
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


def _loaders(variant: str, data: dict[str, torch.Tensor], batch_size: int, workers: int, seed: int):
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
    train = DeviceLoader(data["train_x"], data["train_y"], batch_size, shuffle=True, seed=seed)
    test = DeviceLoader(data["test_x"], data["test_y"], batch_size, shuffle=False)
    return train, test


def _run(
    variant: str, data: dict[str, torch.Tensor], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    norm = {"d2l_style": "textbook", "bnlab": "bnlab", "bnlab_torchbn": "torch"}[variant]
    started = time.perf_counter()
    train, test = _loaders(variant, data, args.batch_size, args.workers, seed)
    model = create("lenet", norm=norm)
    config = TrainConfig(lr=1.0, epochs=args.epochs, batch_size=args.batch_size, seed=seed)
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
        "--limit-train", type=int, default=None, help="first N training images only"
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()

    data_dir = data_dir_from_env(args.data_dir)
    train_x, train_y = load_fashion_mnist("train", data_dir)
    test_x, test_y = load_fashion_mnist("test", data_dir)
    if args.limit_train:
        train_x, train_y = train_x[: args.limit_train], train_y[: args.limit_train]
    data = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}

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
        title=f"d2l recipe, LeNet-BN, {args.epochs} epochs, batch {args.batch_size}, {args.threads} threads"
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
        ratio = (
            med("d2l_style", "total_time_s") / total
            if "d2l_style" in args.variants
            else float("nan")
        )
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
            f"{ratio:.2f}",
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
