"""Benchmark batch-norm folding: eval inference of LeNet-BN before and after folding.

LeNet-BN (``bnlab.models.create("lenet", norm=...)``, four BN layers) in eval mode under
``torch.no_grad()``, float32 on the CPU, batch 256 of 1x28x28 inputs, 2 threads by
default. ``original`` runs the model as built (BN layers with running statistics taken
from a few train-mode batches); ``folded`` runs ``bnlab.nn.fold_batchnorm(model).model``,
where each BN is folded into the Conv2d/Linear before it. The two are timed round-robin
(rotated each round) after warm-up rounds; medians and IQR per call, the ratio of the
medians folded/original, and the largest output difference are printed and written with
the config and the environment to ``OUT/bench_fold_<UTC time>.json``.

    .venv/bin/python benchmarks/bench_fold.py --out runs/bench
    .venv/bin/python benchmarks/bench_fold.py --norm torch --repeats 50 --threads 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from bnlab.bench.timing import (
    calibrate_number,
    environment_record,
    load_average,
    time_interleaved,
)
from bnlab.models import create
from bnlab.nn import fold_batchnorm

SCHEMA_VERSION = 1


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Eval inference time of LeNet-BN before and after folding its batch norms "
            "into the preceding Conv2d/Linear (bnlab.nn.fold_batchnorm). Interleaved "
            "timing, warm-up, medians; writes OUT/bench_fold_<UTC time>.json."
        )
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder")
    parser.add_argument("--norm", choices=["bnlab", "torch"], default="bnlab", help="BN kind")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="default 256")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads (2)")
    parser.add_argument("--repeats", type=positive_int, default=30, help="timed rounds (30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up rounds (5)")
    parser.add_argument(
        "--target-ms", type=float, default=50.0, help="approximate time per sample (50 ms)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    return parser


def build_models(norm: str, batch_size: int, seed: int) -> tuple[Any, Any, torch.Tensor, Any]:
    """LeNet-BN with non-trivial running statistics, its folded copy, an input, the report."""
    torch.manual_seed(seed)
    model = create("lenet", norm=norm).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(batch_size, 1, 28, 28) * 2 + 0.5)
    model.eval()
    result = fold_batchnorm(model)
    x = torch.randn(batch_size, 1, 28, 28)
    return model, result.model, x, result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    script = Path(__file__).resolve()
    started = dt.datetime.now(dt.UTC)
    model, folded, x, report = build_models(args.norm, args.batch_size, args.seed)

    def run_original() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def run_folded() -> torch.Tensor:
        with torch.no_grad():
            return folded(x)

    max_abs_diff = (run_original() - run_folded()).abs().max().item()
    number = calibrate_number(run_original, target_ms=args.target_ms)
    timings = time_interleaved(
        {"original": run_original, "folded": run_folded},
        repeats=args.repeats,
        warmup=args.warmup,
        number=number,
    )
    ratio = timings["folded"].median_ms / timings["original"].median_ms
    config = {
        "model": f'bnlab.models.create("lenet", norm="{args.norm}")',
        "batch_size": args.batch_size,
        "input_shape": [args.batch_size, 1, 28, 28],
        "dtype": "float32",
        "device": "cpu",
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup_rounds": args.warmup,
        "calls_per_sample": number,
        "seed": args.seed,
        "timing": "round-robin over variants, rotated each round; median and IQR per call",
        "step": "eval forward under torch.no_grad()",
        "folded_layers": report.folded,
        "fed_by": report.fed_by,
        "skipped": report.skipped,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "script": script.name,
        "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    environment = environment_record(environ=os.environ, repo_dir=script.parent)
    environment["load_average_1_5_15_min_at_end_incl_this_run"] = load_average()
    results = {name: t.as_dict() for name, t in timings.items()}
    payload = {
        "benchmark": "fold",
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "environment": environment,
        "results": results,
        "folded_over_original_median_ratio": ratio,
        "max_abs_diff": max_abs_diff,
    }
    print(
        f"torch {environment['torch']}, {args.threads} threads, batch {args.batch_size}, "
        f"LeNet-BN norm={args.norm}, folded {len(report.folded)} BN layers"
    )
    for name, timing in timings.items():
        print(
            f"{name:>8}: median {timing.median_ms:.3f} ms "
            f"(IQR {timing.q1_ms:.3f}-{timing.q3_ms:.3f}), {len(timing.samples_ms)} samples "
            f"of {number} calls"
        )
    print(f"folded/original ratio of medians: {ratio:.3f}; max |diff| {max_abs_diff:.2e}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_fold_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
