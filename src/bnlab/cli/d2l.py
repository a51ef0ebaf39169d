"""``bnlab d2l``: the d2l batch-norm chapter's experiment, reproduced and explained.

Trains the chapter's LeNet without BN (lr 0.9), with the textbook BN, with bnlab's
BN and with torch's BN (lr 1.0), 10 epochs, batch 256, for each seed; prints one
table (mean +- std over seeds, the book's numbers beside) and the first BN layer's
learned gamma and beta; writes summary.json, per-run metrics and checkpoints, the
training curves (d2l_curves.png), config.json and environment.json. Runs in parallel
processes also keep each epoch's model (runs/VARIANT/seedS/epochs/), which another
process evaluates (recalibrated and batch-statistics accuracy) while training goes on.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bnlab.cli._args import add_command, add_run_arguments, add_workers_argument, positive_int
from bnlab.cli._cores import pick
from bnlab.cli._print import D2L_METRICS, budget_too_small, d2l_rows, stats_cell, verdict_lines
from bnlab.cli._run_files import run_environment
from bnlab.cli.data import add_data_dir_argument, load_splits
from bnlab.lab.d2l import VARIANTS, D2LConfig, run_d2l
from bnlab.plots.d2l import plot_d2l_curves
from bnlab.train.fit import StepInfo

#: Below this many training images per run (samples x epochs), starting a process (a few
#: seconds) costs more than running the runs side by side saves: one process.
PARALLEL_MIN_IMAGES = 50_000

HELP = "reproduce the d2l batch-norm chapter (LeNet, 4 variants) and explain its numbers"
EXAMPLES = """examples:
  bnlab d2l --out runs/d2l                      the chapter's experiment, one seed (~1.5 min on 2 cores)
  bnlab d2l --out runs/d2l5 --seeds 5           five seeds: mean and spread
  bnlab d2l --out runs/quick --epochs 2 --limit-train 6000 --variants none bnlab
  bnlab d2l --out runs/d2l --resume             continue an interrupted experiment
  bnlab d2l --out runs/d2l --workers 2 --threads 1
                                                two runs at a time, one thread each (same digits
                                                as --workers 1 --threads 1)
"""


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "d2l", run, HELP, __doc__, EXAMPLES, as_written=True)
    p.add_argument("--out", type=Path, required=True, help="results folder (created)")
    add_data_dir_argument(p)
    p.add_argument(
        "--epochs", type=positive_int, default=10, help="epochs per run (default 10, the book's)"
    )
    p.add_argument(
        "--seeds", type=positive_int, default=1, help="runs per variant, seeds 0..K-1 (default 1)"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANTS),
        default=list(VARIANTS),
        help="which variants to run (default: all four)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=256, help="batch size (default 256, the book's)"
    )
    p.add_argument(
        "--recalibrate-batches",
        type=positive_int,
        default=40,
        help="training batches used to recalibrate BN statistics after each epoch (default 40)",
    )
    add_run_arguments(p)
    add_workers_argument(
        p,
        "running variants and seeds",
        "when the runs are long enough to pay for starting them",
    )
    p.add_argument("--resume", action="store_true", help="continue the runs already in --out")


def _fmt(stats: dict[str, float], digits: int = 3) -> str:
    # The spread goes on a line of its own: nine columns of "0.902 ± 0.003" would not
    # fit 80 columns (pipes, CI logs, notebooks).
    return stats_cell(stats, digits, sep="\n±")


def _table(summary: dict[str, Any]) -> Table:
    seeds = max(len(e["seeds"]) for e in summary["variants"].values())
    table = Table(
        title=f"LeNet on Fashion-MNIST, d2l recipe ({seeds} seed{'s' if seeds > 1 else ''}"
        f"{', mean and ±std' if seeds > 1 else ''})",
        caption="test: eval with moving averages, as the book; recal: BN statistics "
        "recalibrated on training batches; batch: each test batch's own statistics; "
        "img/s: training steps only; s: wall time",
    )
    for col in ("variant", "lr", "train loss", "train acc", "test", "recal", "batch", "img/s", "s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in d2l_rows(summary, _fmt, (*D2L_METRICS, ("wall_time_s", 0))):
        table.add_row(*row)
    return table


def _book_table(summary: dict[str, Any]) -> Table:
    table = Table(
        title="The book's results (d2l-zh 2.0, PyTorch, GPU, one build)",
        caption="over ~86 rebuilds the BN LeNet's test accuracy ranged 0.57-0.89",
    )
    for col in ("variant", "lr", "train loss", "train acc", "test acc"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, entry in summary["variants"].items():
        book = entry.get("book")
        if book:
            table.add_row(
                name,
                f"{entry['lr']:g}",
                f"{book['train_loss']:.3f}",
                f"{book['train_acc']:.3f}",
                f"{book['test_acc']:.3f}",
            )
    return table


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.device == "cuda" and not torch.cuda.is_available():
        args.parser.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    config = D2LConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=tuple(range(args.seeds)),
        variants=tuple(args.variants),
        recalibrate_batches=args.recalibrate_batches,
        device=args.device,
    )
    splits = load_splits(args)
    console.print(splits.describe())
    data = splits.tensors
    out: Path = args.out

    steps_per_run = math.ceil(len(data["train_labels"]) / config.batch_size) * config.epochs
    layout = pick(
        runs=len(config.seeds) * len(config.variants),
        # A spawned process costs a few seconds (importing torch): not for short runs.
        parallel_pays=config.device == "cpu"
        and len(data["train_labels"]) * config.epochs >= PARALLEL_MIN_IMAGES,
        threads=args.threads,
        workers=args.workers if config.device == "cpu" else 1,
    )
    console.print(layout.line())
    if layout.workers == 1:
        torch.set_num_threads(layout.threads)
    environment = run_environment(args.device)
    environment["layout"] = layout.record()
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        # One bar per run in flight; a finished run's bar is reused by the next.
        bars: dict[tuple[str, int], TaskID] = {}
        idle: list[TaskID] = []

        def on_run_start(variant: str, seed: int) -> None:
            description = f"{variant:>8} seed {seed}"
            for run_key, task in list(bars.items()):
                if progress.tasks[task].finished:
                    idle.append(bars.pop(run_key))
            if idle:
                task = idle.pop()
                progress.reset(task, total=steps_per_run, description=description, loss=math.nan)
            else:
                task = progress.add_task(description, total=steps_per_run, loss=math.nan)
            bars[(variant, seed)] = task

        def on_run_step(variant: str, seed: int, info: StepInfo) -> None:
            progress.update(bars[(variant, seed)], completed=info.step, loss=info.loss)

        summary = run_d2l(
            data,
            config,
            out,
            resume=args.resume,
            argv=vars_json(args),
            environment=environment,
            on_run_start=on_run_start,
            on_run_step=on_run_step,
            workers=layout.workers,
            threads=layout.threads,
        )
    elapsed = time.perf_counter() - started
    figure = plot_d2l_curves(summary, out / "d2l_curves.png")

    console.print(_table(summary))
    console.print(_book_table(summary))
    for name, entry in summary["variants"].items():
        if "first_bn_gamma" in entry:
            gamma = ", ".join(f"{v:.3f}" for v in entry["first_bn_gamma"])
            beta = ", ".join(f"{v:.3f}" for v in entry["first_bn_beta"])
            console.print(f"{name}: first BN layer (seed {entry['seeds'][0]})")
            console.print(f"  gamma = [{gamma}]")
            console.print(f"  beta  = [{beta}]")
    too_small = budget_too_small(train_images=len(data["train_labels"]))
    for line in verdict_lines(summary["verdicts"], too_small):
        console.print(line)
    console.print(f"Results in {out} (summary.json, {figure.name}); {elapsed:.0f} s in all.")
    return 0


def vars_json(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as JSON-ready values."""
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("func", "parser")
    }
