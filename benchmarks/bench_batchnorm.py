"""Benchmark BatchNorm on the CPU: bnlab.nn (ours, fast path off and on), torch.nn
(native), bnlab.textbook.

Float32, training forward+backward and eval forward, on LeNet and ResNet shapes. Prints
a table of median times (IQR in brackets) and the ratios to native, then per case the
fraction of the memory-bandwidth bound each variant reaches (byte model in
``bnlab.bench.batchnorm``; bandwidth measured at the start of this run), page faults
per step, the peak resident-set growth of a training step, and the estimated share of
native's time spent on fresh outputs. Writes the numbers with the config and the
environment to ``OUT/bench_batchnorm_<UTC time>.json``.

    .venv/bin/python benchmarks/bench_batchnorm.py --out runs/bench
    .venv/bin/python benchmarks/bench_batchnorm.py --shapes 256x120 8x3x5x5 --repeats 5

Memory note: large tensors are allocated fresh at every step (outputs, gradients,
textbook intermediates); with glibc's default malloc, blocks above the mmap threshold
(at most 32 MiB by default) are mapped fresh and page-fault on first touch, a cost that
dominates the big shapes on some machines. The allocator settings of the run
(``MALLOC_*``, ``GLIBC_TUNABLES``, ``LD_PRELOAD``) are printed and saved; this script
does not change them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from bnlab import kernels
from bnlab.bench.batchnorm import (
    DEFAULT_SHAPES,
    MODES,
    VARIANTS,
    fraction_of_bound,
    fresh_output_ms,
    measure_bandwidth,
    ratio,
    run_suite,
    step_bytes,
)
from bnlab.bench.timing import environment_record, load_average

SCHEMA_VERSION = 2
BYTE_MODEL = (
    "compulsory bytes: train = 5 full-size float32 tensors (forward reads x, writes y; "
    "backward reads grad_y and x, writes grad_x), eval = 2 (reads x, writes y); bound = "
    "bytes / copy bandwidth (dst.copy_(src) of two pre-touched buffers of --bandwidth-mib, "
    "read + write "
    "bytes, same threads, measured at the start of the run); fraction = bound / median. "
    "ours-fast makes 8 tensor passes in training (forward: x, x, y; backward: grad_y+x "
    "twice, grad_x) and 2 in eval."
)
FRESH_OUTPUTS = {"train": 2, "eval": 1}  # full-size outputs native allocates per step
MEMORY_NOTE = (
    "Each step allocates its outputs, gradients and (textbook) intermediates afresh. "
    "With glibc malloc defaults, blocks above the mmap threshold (dynamic, at most "
    "32 MiB) are mapped fresh and page-fault on first touch, which dominates the big "
    "shapes. Allocator settings are recorded in environment.allocator_and_thread_env "
    "and were not changed."
)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"256x6x24x24"`` -> ``(256, 6, 24, 24)``; 2 or 4 positive sizes."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 4) or min(shape) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a shape NxC or NxCxHxW of positive sizes, e.g. 256x6x24x24, got {text!r}"
        )
    if math.prod(shape) // shape[1] < 2:
        raise argparse.ArgumentTypeError(
            f"training needs more than 1 value per channel, got {text!r}"
        )
    return shape


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Time BatchNorm1d/2d on the CPU in float32: bnlab.nn (ours), torch.nn "
            "(native) and bnlab.textbook, training forward+backward and eval forward."
        )
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="directory for the JSON results"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=15, help="timed rounds per case (default 15)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed rounds per case first (default 2)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="torch intra-op threads (default 2)"
    )
    parser.add_argument(
        "--shapes",
        type=parse_shape,
        nargs="+",
        default=None,
        metavar="NxC[xHxW]",
        help="input shapes (default: "
        + " ".join("x".join(map(str, s)) for s in DEFAULT_SHAPES)
        + ")",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="default: train eval"
    )
    parser.add_argument(
        "--target-ms",
        type=float,
        default=20.0,
        help="minimum duration of one timed sample; short calls are repeated (default 20)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    parser.add_argument(
        "--bandwidth-mib",
        type=positive_int,
        default=256,
        help="size of each buffer of the bandwidth copy; far above the caches (default 256)",
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak resident-set measurement of the training steps",
    )
    return parser


def _cell(timings: dict[str, Any], name: str) -> str:
    t = timings[name]
    return f"{t.median_ms:.3f} ({t.iqr_ms:.3f})"


def results_table(results: list[dict[str, Any]], threads: int) -> Table:
    table = Table(
        title=f"BatchNorm, float32, CPU, {threads} threads: median ms per call (IQR)",
        title_justify="left",
    )
    for column in ("shape", "mode", *VARIANTS):
        table.add_column(column, justify="left" if column in ("shape", "mode") else "right")
    others = [name for name in VARIANTS if name != "native"]
    for name in others:
        table.add_column(f"{name}/native", justify="right")
    for result in results:
        timings = result["timings"]
        table.add_row(
            "x".join(map(str, result["shape"])),
            result["mode"],
            *(_cell(timings, name) for name in VARIANTS),
            *(f"{ratio(timings, name):.2f}" for name in others),
        )
    return table


def bound_rows(
    results: list[dict[str, Any]], bandwidth: dict[str, float], fresh: dict[tuple, Any]
) -> list[dict[str, Any]]:
    """Per case: the bandwidth bound, each variant's fraction of it, faults, memory."""
    rows = []
    for result in results:
        shape, mode = tuple(result["shape"]), result["mode"]
        nbytes = step_bytes(shape, mode)
        timings = result["timings"]
        native_ms = timings["native"].median_ms
        fresh_ms = fresh[shape]["fresh_extra_ms"] * FRESH_OUTPUTS[mode]
        rows.append(
            {
                "shape": list(shape),
                "mode": mode,
                "compulsory_bytes": nbytes,
                "bound_ms": nbytes / (bandwidth["copy_gb_per_s"] * 1e6),
                "fraction_of_bound": {
                    name: fraction_of_bound(nbytes, bandwidth["copy_gb_per_s"], t.median_ms)
                    for name, t in timings.items()
                },
                "minor_faults_per_call": result["minor_faults_per_call"],
                "peak_rss_growth_bytes": result.get("peak_rss_growth_bytes"),
                "native_fresh_outputs_est_ms": fresh_ms,
                "native_fresh_outputs_share": fresh_ms / native_ms if native_ms > 0 else None,
            }
        )
    return rows


def bound_table(rows: list[dict[str, Any]], bandwidth: dict[str, float]) -> Table:
    table = Table(
        title=(
            f"Fraction of the bandwidth bound (copy {bandwidth['copy_gb_per_s']:.1f} GB/s), "
            "minor page faults per step, peak RSS growth of a training step (MB), "
            "native's estimated share spent on fresh outputs"
        ),
        title_justify="left",
    )
    table.add_column("shape")
    table.add_column("mode")
    table.add_column("bound ms", justify="right")
    for name in VARIANTS:
        table.add_column(f"{name} frac", justify="right")
    for name in ("ours-fast", "native"):
        table.add_column(f"{name} faults", justify="right")
    for name in ("ours-fast", "native"):
        table.add_column(f"{name} MB", justify="right")
    table.add_column("native fresh", justify="right")
    for row in rows:
        peak = row["peak_rss_growth_bytes"] or {}
        share = row["native_fresh_outputs_share"]
        table.add_row(
            "x".join(map(str, row["shape"])),
            row["mode"],
            f"{row['bound_ms']:.3f}",
            *(f"{row['fraction_of_bound'][name]:.2f}" for name in VARIANTS),
            *(f"{row['minor_faults_per_call'][name]:.0f}" for name in ("ours-fast", "native")),
            *(
                "-" if peak.get(name) is None else f"{peak[name] / 1e6:.1f}"
                for name in ("ours-fast", "native")
            ),
            "-" if share is None else f"{share:.0%}",
        )
    return table


def to_json(
    results: list[dict[str, Any]],
    config: dict[str, Any],
    environment: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rows = []
    ratios = []
    for result in results:
        shape = list(result["shape"])
        for name, timing in result["timings"].items():
            row = {"shape": shape, "mode": result["mode"], "variant": name}
            row.update(timing.as_dict())
            row["max_abs_diff_vs_native"] = result["max_abs_diff_vs_native"].get(name, 0.0)
            rows.append(row)
        ratios.append(
            {
                "shape": shape,
                "mode": result["mode"],
                "ours_over_native": ratio(result["timings"], "ours"),
                "ours_fast_over_native": ratio(result["timings"], "ours-fast"),
                "ours_function_over_native": ratio(result["timings"], "ours-function"),
                "textbook_over_native": ratio(result["timings"], "textbook"),
            }
        )
    return {
        "benchmark": "batchnorm",
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "environment": environment,
        "results": rows,
        "ratios_of_medians": ratios,
        **(extra or {}),
    }


# One training run in a fresh process: the resident-set high-water mark above the level
# after building the inputs, i.e. what the steps (outputs, saved tensors, gradients, and
# the fast path's output pool) add at their peak.
_PEAK_CHILD = """
import sys, torch, bnlab.nn
from bnlab import kernels
def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
torch.set_num_threads(int(sys.argv[3]))
shape = tuple(int(v) for v in sys.argv[1].split("x"))
variant = sys.argv[2]
x = torch.randn(shape).requires_grad_()
g = torch.randn(shape)
nn_mod = bnlab.nn if variant == "ours-fast" else torch.nn
module = (nn_mod.BatchNorm1d if len(shape) == 2 else nn_mod.BatchNorm2d)(shape[1])
kernels.available()
open("/proc/self/clear_refs", "w").write("5")
base = kib("VmRSS")
for _ in range(4):
    x.grad = None
    module.zero_grad(set_to_none=True)
    module(x).backward(g)
print((kib("VmHWM") - base) * 1024)
"""


def peak_rss_fresh_process(shape: tuple[int, ...], variant: str, threads: int) -> int | None:
    """Peak resident-set growth of 4 training steps of ``variant`` in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, "x".join(map(str, shape)), variant, str(threads)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        return int(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # a log file: keep table rows on one line
    script = Path(__file__).resolve()
    shapes = args.shapes if args.shapes is not None else list(DEFAULT_SHAPES)
    started = dt.datetime.now(dt.UTC)
    config = {
        "shapes": [list(s) for s in shapes],
        "modes": list(args.modes),
        "variants": {
            "ours": "bnlab.nn.BatchNorm1d/2d, fast path off",
            "ours-fast": "bnlab.nn.BatchNorm1d/2d, fast path on (bnlab.kernels; C++ "
            "autograd node for training inputs below kernels.POOL_MIN_BYTES)",
            "ours-function": "bnlab.nn.BatchNorm1d/2d, fast path on, C++ autograd node off "
            "(the kernels inside a Python autograd.Function)",
            "native": "torch.nn.BatchNorm1d/2d",
            "textbook": "bnlab.textbook.BatchNorm",
        },
        "dtype": "float32",
        "device": "cpu",
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup_rounds": args.warmup,
        "target_sample_time_ms": args.target_ms,
        "seed": args.seed,
        "timing": "round-robin over variants, rotated each round; median and IQR per call",
        "train_step": "grads set to None, forward, backward of a fixed random grad_y",
        "eval_step": "forward under torch.no_grad()",
        "memory_note": MEMORY_NOTE,
        "byte_model": BYTE_MODEL,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "script": script.name,
        "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "started_utc": started.isoformat(timespec="seconds"),
    }
    environment = environment_record(environ=os.environ, repo_dir=script.parent)
    malloc = environment["allocator_and_thread_env"]
    console.print(
        f"torch {environment['torch']}, {environment['torch_num_threads']} threads, "
        f"CPU {environment['cpu_model']} ({environment['logical_cpus']} logical), "
        f"git {str(environment['git_revision'])[:12]}{' (dirty)' if environment['git_dirty'] else ''}"
    )
    console.print(
        "allocator settings: "
        + (", ".join(f"{k}={v}" for k, v in malloc.items()) if malloc else "none set (defaults)")
    )
    console.print(f"[dim]{MEMORY_NOTE}[/dim]")
    load = environment["load_average_1_5_15_min"]
    if load is not None and load[0] > 0.5 * (environment["logical_cpus"] or 1):
        console.print(
            f"[yellow]warning: load average {load[0]} on {environment['logical_cpus']} "
            "CPUs; other processes will distort the timings[/yellow]"
        )

    # First use of the fast path: compiles the kernels (or loads them from the cache).
    start = time.perf_counter()
    fast_ready = kernels.available()
    # Batch norm's C++ autograd node too (the training steps below 8 MiB take it).
    kernels.train_node(torch.empty(kernels.MIN_NUMEL))
    fast_info = {
        "available": fast_ready,
        "status": kernels.status(),
        "node_status": kernels.node_status(),
        "first_use_s": round(time.perf_counter() - start, 3),
        "pool_min_bytes": kernels.POOL_MIN_BYTES,
        "pool_max_free_bytes": kernels.POOL_MAX_FREE_BYTES,
    }
    console.print(
        f"fast path: {fast_info['status']}; autograd node: {fast_info['node_status']} "
        f"(first use {fast_info['first_use_s']} s)"
    )
    bandwidth = measure_bandwidth(args.bandwidth_mib << 20)
    console.print(
        f"bandwidth, {bandwidth['threads']} threads: copy {bandwidth['copy_gb_per_s']:.1f} "
        f"GB/s (read + write bytes), read {bandwidth['read_gb_per_s']:.1f} GB/s"
    )
    fresh = {tuple(shape): fresh_output_ms(shape) for shape in shapes}

    def on_case(result: dict[str, Any]) -> None:
        shape = "x".join(map(str, result["shape"]))
        medians = ", ".join(f"{k} {t.median_ms:.3f}" for k, t in result["timings"].items())
        console.print(f"[dim]{shape} {result['mode']}: {medians} ms[/dim]")

    results = run_suite(
        shapes,
        repeats=args.repeats,
        warmup=args.warmup,
        target_ms=args.target_ms,
        modes=args.modes,
        seed=args.seed,
        on_case=on_case,
        measure_memory=not args.no_memory,
    )
    bandwidth_end = measure_bandwidth(args.bandwidth_mib << 20)
    config["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    # At the end the load includes this run's own threads; the start value shows other load.
    environment["load_average_1_5_15_min_at_end_incl_this_run"] = load_average()
    console.print(results_table(results, args.threads))
    bounds = bound_rows(results, bandwidth, fresh)
    console.print(bound_table(bounds, bandwidth))
    console.print(
        f"[dim]{BYTE_MODEL} Bandwidth at the end: copy {bandwidth_end['copy_gb_per_s']:.1f} "
        "GB/s.[/dim]"
    )
    fast_info["pool_mapped_bytes_at_end"] = kernels._pool.mapped_bytes()
    peaks = []
    if not args.no_memory and "train" in args.modes:
        for shape in shapes:
            peak = {
                v: peak_rss_fresh_process(shape, v, args.threads) for v in ("ours-fast", "native")
            }
            peaks.append({"shape": list(shape), "peak_rss_growth_bytes": peak})
            console.print(
                f"peak RSS growth of 4 training steps in a fresh process, "
                f"{'x'.join(map(str, shape))}: "
                + ", ".join(
                    f"{v} {'-' if b is None else f'{b / 1e6:.1f} MB'}" for v, b in peak.items()
                )
            )
    extra = {
        "fast_path": fast_info,
        "peak_rss_fresh_process": peaks,
        "bandwidth": {"start": bandwidth, "end": bandwidth_end},
        "fresh_output_ms": [{"shape": list(k), **v} for k, v in fresh.items()],
        "bandwidth_bound": bounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_batchnorm_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(to_json(results, config, environment, extra), indent=2) + "\n")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
