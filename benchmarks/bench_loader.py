"""Benchmark one epoch of Fashion-MNIST batches: DeviceLoader vs the d2l-style DataLoader.

Variants (batch 256, shuffled, the whole training split by default):

* ``device``: :class:`bnlab.data.loader.DeviceLoader`, the split held as one float32
  tensor, each batch one ``index_select`` (plus the resize, if any);
* ``dataloader-wK``: ``torch.utils.data.DataLoader`` over the per-sample
  :class:`bnlab.data.dataset.FashionMNISTDataset` (what the d2l book does with
  torchvision: ``Resize`` on the PIL image, then ``ToTensor``), with K worker processes.
  d2l uses 4 workers; this script also runs 0 and 2 (the 2-core machine's core count).
  Workers are started at each epoch, as in the book (no ``persistent_workers``), so
  their start-up is part of the epoch time.

Epochs are timed round-robin over the variants (rotated each round) after warm-up
rounds, with ``bnlab.bench.timing``; the table shows the median epoch time, its IQR,
images per second and how many times slower than ``device`` each variant is. The
numbers, config and environment go to ``OUT/bench_loader_<UTC time>.json``.

    .venv/bin/python benchmarks/bench_loader.py --out runs/bench
    .venv/bin/python benchmarks/bench_loader.py --resize 96 --workers 0 2 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from bnlab.bench.timing import Timing, environment_record, load_average, time_interleaved
from bnlab.cli.data import DATA_DIR_HELP, data_dir_from_env
from bnlab.data.dataset import FashionMNISTDataset
from bnlab.data.fashion_mnist import load_fashion_mnist
from bnlab.data.loader import DeviceLoader

SCHEMA_VERSION = 1


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Time one epoch of Fashion-MNIST batches through bnlab's DeviceLoader and "
            "through a torch DataLoader over the per-sample Dataset (the d2l way) with "
            "several worker counts; print medians and ratios, write JSON."
        )
    )
    parser.add_argument("--data-dir", metavar="DIR", default=None, help=DATA_DIR_HELP)
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="directory for the JSON results"
    )
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="default 256")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        nargs="+",
        default=[0, 2, 4],
        help="DataLoader worker counts (default: 0 2 4; d2l uses 4)",
    )
    parser.add_argument(
        "--resize", type=positive_int, default=None, help="resize to SIZE x SIZE (d2l: 96)"
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed epochs (default 5)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed rounds (1)")
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="torch intra-op threads (default 2)"
    )
    parser.add_argument(
        "--device", default="cpu", help="where batches must end up: cpu or cuda (default cpu)"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    return parser


def _epoch_fn(
    batches: Callable[[], Any], device: torch.device, expected: int
) -> Callable[[], None]:
    """One epoch: iterate, move each batch to ``device``, check the sample count."""

    def run() -> None:
        seen = 0
        for x, y in batches():
            if x.device != device:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
            seen += y.shape[0]
        if seen != expected:
            raise RuntimeError(f"an epoch yielded {seen} samples, expected {expected}")

    return run


def results_table(
    timings: dict[str, Timing], samples: int, title: str
) -> tuple[Table, dict[str, float]]:
    base = timings["device"].median_ms
    ratios = {name: t.median_ms / base for name, t in timings.items()}
    table = Table(title=title, title_justify="left")
    for column in ("variant", "median s/epoch", "IQR s", "images/s", "x device"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, t in timings.items():
        table.add_row(
            name,
            f"{t.median_ms / 1e3:.3f}",
            f"{t.iqr_ms / 1e3:.3f}",
            f"{samples / (t.median_ms / 1e3):,.0f}",
            f"{ratios[name]:.1f}",
        )
    return table, ratios


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    script = Path(__file__).resolve()
    started = dt.datetime.now(dt.UTC)

    data_dir = data_dir_from_env(args.data_dir)
    images, labels = load_fashion_mnist(args.split, data_dir)
    samples = images.shape[0]
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    setup_start = time.perf_counter()
    device_loader = DeviceLoader(
        images, labels, args.batch_size, seed=args.seed, device=device, resize=args.resize
    )
    if sync is not None:
        sync()
    setup_s = time.perf_counter() - setup_start
    dataset = FashionMNISTDataset(images, labels, resize=args.resize)
    generator = torch.Generator().manual_seed(args.seed)
    fns: dict[str, Callable[[], None]] = {
        "device": _epoch_fn(lambda: device_loader, device, samples)
    }
    for workers in args.workers:
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=workers,
            generator=generator,
            pin_memory=device.type == "cuda",
        )
        fns[f"dataloader-w{workers}"] = _epoch_fn(lambda loader=loader: loader, device, samples)

    environment = environment_record(environ=os.environ, repo_dir=script.parent)
    if device.type == "cuda":
        environment["cuda_device"] = torch.cuda.get_device_name(device)
    console.print(
        f"torch {environment['torch']}, {environment['torch_num_threads']} threads, CPU "
        f"{environment['cpu_model']} ({environment['logical_cpus']} logical), device {device}, "
        f"git {str(environment['git_revision'])[:12]}"
        f"{' (dirty)' if environment['git_dirty'] else ''}"
    )
    load = environment["load_average_1_5_15_min"]
    if load is not None and load[0] > 0.5 * (environment["logical_cpus"] or 1):
        console.print(
            f"[yellow]warning: load average {load[0]} on {environment['logical_cpus']} CPUs; "
            "other processes will distort the timings[/yellow]"
        )
    console.print(
        f"{args.split}: {samples} images, batch {args.batch_size}, resize {args.resize}; "
        f"{args.warmup} warm-up + {args.repeats} timed rounds over {len(fns)} variants"
    )
    timings = time_interleaved(fns, repeats=args.repeats, warmup=args.warmup, sync=sync)
    finished = dt.datetime.now(dt.UTC)
    size = f"{args.resize}x{args.resize}" if args.resize else "28x28"
    table, ratios = results_table(
        timings,
        samples,
        f"One epoch of {samples} {size} images, batch {args.batch_size}, {device}: "
        "median of epochs (ratio = time / device time)",
    )
    console.print(table)
    console.print(f"DeviceLoader setup (uint8 -> float32 on {device}, once): {setup_s:.3f} s")

    config = {
        "split": args.split,
        "samples": samples,
        "batch_size": args.batch_size,
        "resize": args.resize,
        "workers": args.workers,
        "device": str(device),
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup_rounds": args.warmup,
        "seed": args.seed,
        "data_dir": str(data_dir),
        "variants": {
            "device": "bnlab.data.loader.DeviceLoader (whole split on the device)",
            **{
                f"dataloader-w{w}": (
                    f"torch DataLoader(FashionMNISTDataset, shuffle=True, num_workers={w}), "
                    "workers started each epoch"
                )
                for w in args.workers
            },
        },
        "timing": "round-robin over variants, rotated each round; one epoch per sample",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "script": script.name,
        "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": finished.isoformat(timespec="seconds"),
    }
    environment["load_average_1_5_15_min_at_end"] = load_average()
    record = {
        "benchmark": "loader",
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "environment": environment,
        "device_loader_setup_time_s": setup_s,
        "results": [
            {
                "variant": name,
                **t.as_dict(),
                "median_epoch_time_s": t.median_ms / 1e3,
                "images_per_s": samples / (t.median_ms / 1e3),
            }
            for name, t in timings.items()
        ],
        "ratios_of_medians_over_device": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_loader_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
