"""Benchmark BatchNorm on a CUDA GPU: bnlab's Triton kernels against cuDNN and ATen.

Variants, each a training step (forward + backward) or an eval forward:

* ``ours``: ``bnlab.nn.BatchNorm1d/2d`` (the Triton kernels of
  ``bnlab.kernels.triton_bn``, behind the module and the autograd Function);
* ``ours-ref``: the same module with the fast path off (torch ops, closed-form backward);
* ``native``: ``torch.nn.BatchNorm1d/2d`` (cuDNN where torch picks it);
* ``textbook``: the d2l chapter's scratch layer (``bnlab.textbook``), float32 only;
* ``ours-kernels`` / ``aten-kernels``: the bare kernels without module or autograd
  (``triton_bn.train_forward`` + ``train_backward``; ``torch.ops.aten.native_batch_norm``
  + ``native_batch_norm_backward``): what the kernels reach, launch costs included.

Byte model (compulsory traffic): training = 5 full-size tensors (forward reads x and
writes y; backward reads grad_y and x, writes grad_x), eval = 2 (reads x, writes y), in
the input's dtype; per-channel vectors ignored. The bound is bytes / the device-to-device
copy bandwidth measured at the start of this run (``dst.copy_(src)``, 1 GiB, read + write
bytes). Inputs rotate over enough copies to exceed the L2 cache twice over, so the big
shapes are timed from device memory; the LeNet shapes are launch-bound (tens of
microseconds), where the fraction says little.

Memory: the peak CUDA memory one step allocates beyond the memory in use before it
(``torch.cuda.max_memory_allocated``), per variant.

Timing: variants interleaved round-robin in one process after warm-up (which also
compiles the Triton kernels); each sample is ``--number`` steps between two
``torch.cuda.synchronize`` calls; the median of ``--repeats`` samples is reported.

    python benchmarks/bench_gpu.py --out runs/bench
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import bnlab.nn
from bnlab import kernels
from bnlab.bench.batchnorm import DEFAULT_SHAPES, fraction_of_bound, step_bytes
from bnlab.bench.timing import environment_record, time_interleaved
from bnlab.textbook import BatchNorm as TextbookBatchNorm
from bnlab.train.io import write_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def measure_copy_bandwidth(device: str, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Copy bandwidth in GB/s (``dst.copy_(src)``), counting bytes read plus bytes written."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    timing = time_interleaved(
        {"copy": lambda: dst.copy_(src)}, repeats=repeats, warmup=1, sync=_sync(device)
    )["copy"]
    return 2 * nbytes / (timing.median_ms * 1e6)


def _sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def _modules(c: int, ndim: int, dtype: torch.dtype, device: str) -> dict[str, torch.nn.Module]:
    ours_cls = bnlab.nn.BatchNorm1d if ndim == 2 else bnlab.nn.BatchNorm2d
    native_cls = torch.nn.BatchNorm1d if ndim == 2 else torch.nn.BatchNorm2d
    mods: dict[str, torch.nn.Module] = {
        "ours": ours_cls(c),
        "ours-ref": ours_cls(c),
        "native": native_cls(c),
    }
    if dtype == torch.float32:
        mods["textbook"] = TextbookBatchNorm(c, ndim)
    return {k: m.to(device, dtype) for k, m in mods.items()}


def _cycle(tensors: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    it = itertools.cycle(tensors)
    return lambda: next(it)


def make_steps(
    shape: tuple[int, ...], mode: str, dtype: torch.dtype, copies: int, device: str
) -> dict[str, Callable[[], None]]:
    """Variant name -> one step on the next input copy."""
    c = shape[1]
    xs = [torch.randn(shape, device=device, dtype=dtype) * 2 + 1 for _ in range(copies)]
    gs = [torch.randn(shape, device=device, dtype=dtype) for _ in range(copies)]
    next_x, next_g = _cycle(xs), _cycle(gs)
    steps: dict[str, Callable[[], None]] = {}
    for name, module in _modules(c, len(shape), dtype, device).items():
        fast = {"ours": True, "ours-ref": False}.get(name)
        if mode == "train":
            module.train()
            for x in xs:
                x.requires_grad_(True)

            def step(module=module, fast=fast) -> None:
                x = next_x()
                x.grad = None
                module.zero_grad(set_to_none=True)
                with kernels.enabled(True if fast is None else fast):
                    module(x).backward(next_g())

        else:
            module.eval()

            def step(module=module, fast=fast) -> None:
                with torch.no_grad(), kernels.enabled(True if fast is None else fast):
                    module(next_x())

        steps[name] = step
    if mode == "train":
        steps.update(_kernel_steps(shape, dtype, next_x, next_g, device))
    return steps


def _kernel_steps(shape, dtype, next_x, next_g, device) -> dict[str, Callable[[], None]]:
    """The bare kernels: forward then backward, no module, no autograd."""
    c = shape[1]
    w = torch.rand(c, device=device, dtype=dtype) + 0.5
    b = torch.randn(c, device=device, dtype=dtype)
    rm = torch.zeros(c, device=device)
    rv = torch.ones_like(rm)
    tb = kernels._cuda_kernels() if device.startswith("cuda") else None
    steps: dict[str, Callable[[], None]] = {}
    if tb is not None:

        def ours_kernels() -> None:
            x = next_x().detach()
            _, stats = tb.train_forward(x, w, b, 1e-5)
            tb.train_backward(next_g(), x, w, stats[2], stats[3], stats[4], (True, True, True))

        steps["ours-kernels"] = ours_kernels

    def aten_kernels() -> None:
        x = next_x().detach()
        wt, bt = (w.float(), b.float()) if dtype != torch.float32 else (w, b)
        _, mean, invstd = torch.ops.aten.native_batch_norm(x, wt, bt, rm, rv, True, 0.1, 1e-5)
        torch.ops.aten.native_batch_norm_backward(
            next_g(), x, wt, rm, rv, mean, invstd, True, 1e-5, [True, True, True]
        )

    steps["aten-kernels"] = aten_kernels
    return steps


def peak_step_bytes(step: Callable[[], None]) -> int:
    """CUDA memory a step allocates beyond what was allocated before it, at its peak
    (outputs, saved tensors and workspaces; the inputs exist already)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _max_diff(shape, mode, dtype, device) -> float:
    """|ours - native| of one forward from the same state (a sanity check of each case)."""
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype) * 2 + 1
    mods = _modules(shape[1], len(shape), dtype, device)
    for m in mods.values():
        m.train(mode == "train")
    with torch.no_grad():
        return (mods["ours"](x).float() - mods["native"](x).float()).abs().max().item()


NAMES = ("ours", "ours-ref", "native", "textbook", "ours-kernels", "aten-kernels")


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per case: microseconds per variant, ratios, fractions of the bound."""
    out = []
    for row in rows:
        v = row["variants"]
        ours = v["ours"]["median_time_ms"]
        flat: dict[str, Any] = {
            "dtype": row["dtype"],
            "mode": row["mode"],
            "shape": "x".join(map(str, row["shape"])),
        }
        for name in NAMES:
            flat[f"{name} us"] = v[name]["median_time_ms"] * 1e3 if name in v else None
        flat["ours/native"] = v["ours"]["ratio_to_native"]
        flat["ours/textbook"] = ours / v["textbook"]["median_time_ms"] if "textbook" in v else None
        peaks = row.get("peak_step_bytes") or {}
        flat["ours peak MB"] = peaks["ours"] / 1e6 if "ours" in peaks else None
        flat["native peak MB"] = peaks["native"] / 1e6 if "native" in peaks else None
        flat["ours: fraction of bound"] = v["ours"]["fraction_of_bound"]
        flat["ours-kernels: fraction of bound"] = (
            v["ours-kernels"]["fraction_of_bound"] if "ours-kernels" in v else None
        )
        out.append(flat)
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON")
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["x".join(map(str, s)) for s in DEFAULT_SHAPES],
        help="shapes as NxC or NxCxHxW (default: the CPU benchmark's)",
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"]
    )
    parser.add_argument("--modes", nargs="+", choices=("train", "eval"), default=["train", "eval"])
    parser.add_argument("--repeats", type=int, default=15, help="timed samples per variant")
    parser.add_argument("--number", type=int, default=20, help="steps per sample")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument(
        "--device",
        default="cuda",
        help="cuda (default); cpu only checks this script's code paths, it measures nothing "
        "of the GPU (the CPU benchmark is bench_batchnorm.py)",
    )
    parser.add_argument(
        "--bandwidth-mib", type=int, default=1024, help="buffer size of the copy bandwidth"
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("needs a CUDA device (torch.cuda.is_available() is False)")
    console = Console(width=200)  # the table has 13 columns; logs are read in files
    if cuda:
        props = torch.cuda.get_device_properties(args.device)
        gpu, sms, l2 = props.name, props.multi_processor_count, props.L2_cache_size
    else:
        gpu, sms, l2 = "cpu (dry run)", 0, 0
    bandwidth = measure_copy_bandwidth(args.device, args.bandwidth_mib << 20)
    console.print(
        f"{gpu}: {sms} SMs, L2 {l2 >> 20} MiB; copy bandwidth {bandwidth:.0f} GB/s "
        f"(read + write); triton path: {kernels.cuda_status()}"
    )
    rows: list[dict[str, Any]] = []
    for dtype_name, mode, shape_text in itertools.product(args.dtypes, args.modes, args.shapes):
        shape = tuple(int(v) for v in shape_text.split("x"))
        dtype = DTYPES[dtype_name]
        nbytes = step_bytes(shape, mode, itemsize=torch.finfo(dtype).bits // 8)
        tensor_bytes = math.prod(shape) * torch.finfo(dtype).bits // 8
        copies = max(1, min(16, math.ceil(2 * l2 / tensor_bytes)))  # inputs beyond L2
        started = time.perf_counter()
        steps = make_steps(shape, mode, dtype, copies, args.device)
        timings = time_interleaved(
            steps,
            repeats=args.repeats,
            warmup=args.warmup,
            number=args.number,
            sync=_sync(args.device),
        )
        diff = _max_diff(shape, mode, dtype, args.device)
        peaks = {name: peak_step_bytes(step) for name, step in steps.items()} if cuda else {}
        native = timings["native"].median_ms
        row = {
            "shape": list(shape),
            "mode": mode,
            "dtype": dtype_name,
            "bytes": nbytes,
            "input_copies": copies,
            "max_abs_diff_ours_vs_native": diff,
            "peak_step_bytes": peaks,
            "variants": {
                name: {
                    **t.as_dict(),
                    "ratio_to_native": t.median_ms / native,
                    "fraction_of_bound": fraction_of_bound(nbytes, bandwidth, t.median_ms),
                }
                for name, t in timings.items()
            },
        }
        rows.append(row)
        summary = ", ".join(f"{k} {t.median_ms * 1e3:.0f} us" for k, t in timings.items())
        console.print(
            f"{dtype_name} {mode} {shape_text}: {summary} "
            f"(|ours-native| {diff:.2g}; {time.perf_counter() - started:.1f} s)"
        )

    table_rows = summary_rows(rows)
    table = Table(title=f"BatchNorm on {gpu}: median us per step, ratio to native")
    for col in table_rows[0]:
        table.add_column(col, justify="right")
    for flat in table_rows:
        table.add_row(*["-" if v is None else _cell(v) for v in flat.values()])
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    env = environment_record(environ=os.environ, repo_dir=Path(__file__).resolve().parent)
    env.update(
        gpu=gpu,
        multiprocessors=sms,
        l2_bytes=l2,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        triton=kernels.cuda_status(),
        # The device machine gets a copy of the tree without .git: the sender names it.
        git_revision_sent=os.environ.get("BNLAB_GIT_REVISION"),
    )
    path = write_json(
        args.out / f"bench_gpu_{stamp}.json",
        {
            "benchmark": "batchnorm_gpu",
            "byte_model": (
                "train = 5 full-size tensors (x, y, grad_y, x, grad_x), eval = 2 (x, y), "
                "in the input dtype; bound = bytes / device-to-device copy bandwidth"
            ),
            "copy_bandwidth_gb_per_s": bandwidth,
            "timed": "median of repeats, each the mean of `number` steps between syncs",
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "environment": env,
            "summary": table_rows,
            "runs": rows,
        },
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
