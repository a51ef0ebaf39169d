"""Benchmark every normalization layer of bnlab against its torch twin (training step).

Float32 on the CPU, forward + backward, interleaved in one process with warm-up (see
``bnlab.bench.family`` for the pairs). Prints median ms per call (IQR) and the ratio
ours / torch, and writes the numbers with the config and environment to
``OUT/bench_family_<UTC time>.json``.

    .venv/bin/python benchmarks/bench_family.py --out runs/bench
    .venv/bin/python benchmarks/bench_family.py --layers groupnorm ghost --repeats 5
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
from rich.console import Console
from rich.table import Table

from bnlab.bench.family import CASES, DEFAULT_SHAPES, ratio, run_family_suite
from bnlab.bench.timing import environment_record, load_average

SCHEMA_VERSION = 1


def parse_shape(text: str) -> tuple[int, ...]:
    """``"64x64x28x28"`` -> ``(64, 64, 28, 28)``; 2 or 4 positive sizes."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 4) or min(shape) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a shape NxC or NxCxHxW of positive sizes, e.g. 64x64x28x28, got {text!r}"
        )
    return shape


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
            "Time a training step (forward + backward, float32, CPU) of every bnlab "
            "normalization layer against its torch twin, interleaved in one process."
        )
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="JSON folder")
    parser.add_argument("--layers", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument(
        "--shapes",
        type=parse_shape,
        nargs="+",
        default=None,
        metavar="NxC[xHxW]",
        help="default: " + " ".join("x".join(map(str, s)) for s in DEFAULT_SHAPES),
    )
    parser.add_argument("--repeats", type=positive_int, default=11, help="timed rounds (11)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (2)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads (2)")
    parser.add_argument(
        "--target-ms", type=float, default=20.0, help="minimum duration of one timed sample"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    script = Path(__file__).resolve()
    shapes = args.shapes if args.shapes is not None else list(DEFAULT_SHAPES)
    started = dt.datetime.now(dt.UTC)
    environment = environment_record(environ=os.environ, repo_dir=script.parent)
    load = environment["load_average_1_5_15_min"]
    if load is not None and load[0] > 0.5 * (environment["logical_cpus"] or 1):
        console.print(
            f"[yellow]warning: load average {load[0]} on {environment['logical_cpus']} CPUs; "
            "other processes will distort the timings[/yellow]"
        )

    def on_case(result: dict[str, Any]) -> None:
        shape = "x".join(map(str, result["shape"]))
        console.print(
            f"[dim]{result['layer']} {shape}: ours/torch {ratio(result['timings']):.2f}[/dim]"
        )

    results = run_family_suite(
        args.layers,
        shapes,
        repeats=args.repeats,
        warmup=args.warmup,
        target_ms=args.target_ms,
        on_case=on_case,
    )
    table = Table(
        title=f"Training step, float32, CPU, {args.threads} threads: median ms (IQR)",
        title_justify="left",
    )
    for column in ("layer", "shape", "ours", "torch", "ours/torch", "max |diff|"):
        table.add_column(column, justify="left" if column in ("layer", "shape") else "right")
    rows = []
    for r in results:
        t = r["timings"]
        table.add_row(
            r["layer"],
            "x".join(map(str, r["shape"])),
            f"{t['ours'].median_ms:.3f} ({t['ours'].iqr_ms:.3f})",
            f"{t['torch'].median_ms:.3f} ({t['torch'].iqr_ms:.3f})",
            f"{ratio(t):.2f}",
            f"{r['max_abs_diff']:.1e}",
        )
        rows.append(
            {
                "layer": r["layer"],
                "shape": list(r["shape"]),
                "max_abs_diff": r["max_abs_diff"],
                "ours": t["ours"].as_dict(),
                "torch": t["torch"].as_dict(),
                "ours_over_torch": ratio(t),
            }
        )
    console.print(table)
    environment["load_average_1_5_15_min_at_end_incl_this_run"] = load_average()
    record = {
        "benchmark": "family",
        "schema_version": SCHEMA_VERSION,
        "config": {
            "layers": list(args.layers),
            "shapes": [list(s) for s in shapes],
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup_rounds": args.warmup,
            "target_sample_time_ms": args.target_ms,
            "dtype": "float32",
            "device": "cpu",
            "step": "grads set to None, forward, backward of a fixed random grad_y",
            "argv": sys.argv[1:] if argv is None else list(argv),
            "script": script.name,
            "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        "environment": environment,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_family_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
