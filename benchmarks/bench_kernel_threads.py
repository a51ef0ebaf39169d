"""Where a second thread starts to pay in bnlab's BN kernels: the training step (forward +
backward of ``bnlab.nn.BatchNorm1d/2d``) at 1 and at 2 threads, interleaved in one
process, over sizes around the kernels' parallel threshold (``threads_for`` in
``bnlab/kernels/bn_kernels.cpp``).

Reports per shape the median ms at each thread count, the per-round ratio 2 threads / 1
thread (p10/median/p90) and the load average; writes JSON. Below a ratio of 1 the second
thread pays.

    python benchmarks/bench_kernel_threads.py --out benchmarks/results/kernel_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bnlab.bench.timing import spread
from bnlab.nn import BatchNorm1d, BatchNorm2d

SHAPES = (
    (256, 64),  # 16 Ki elements
    (256, 128),  # 32 Ki
    (256, 192),  # 48 Ki
    (256, 256),  # 64 Ki
    (256, 512),  # 128 Ki
    (64, 16, 8, 8),  # 64 Ki
    (128, 16, 8, 8),  # 128 Ki
    (256, 16, 8, 8),  # 256 Ki (LeNet's second BN)
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=20, help="steps per timed sample")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = []
    for shape in SHAPES:
        layer = BatchNorm2d(shape[1]) if len(shape) == 4 else BatchNorm1d(shape[1])
        x = torch.randn(shape, requires_grad=True)
        grad = torch.randn(shape)
        times: dict[int, list[float]] = {1: [], 2: []}
        ratios = []
        load = os.getloadavg()[0]
        for r in range(args.rounds):
            this = {}
            for threads in (1, 2) if r % 2 == 0 else (2, 1):
                torch.set_num_threads(threads)
                layer(x).backward(grad)  # one call after the switch, untimed
                start = time.perf_counter()
                for _ in range(args.calls):
                    x.grad = None
                    layer(x).backward(grad)
                this[threads] = (time.perf_counter() - start) * 1e3 / args.calls
                times[threads].append(this[threads])
            ratios.append(this[2] / this[1])
        row = {
            "shape": list(shape),
            "numel": x.numel(),
            "median_ms": {str(t): statistics.median(v) for t, v in times.items()},
            "ratio_2_over_1": spread(ratios),
            "load_before": load,
            "load_after": os.getloadavg()[0],
        }
        rows.append(row)
        q = row["ratio_2_over_1"]
        print(
            f"{'x'.join(map(str, shape)):>12} {x.numel():>7}  1t {row['median_ms']['1']:.4f} ms"
            f"  2t {row['median_ms']['2']:.4f} ms  2t/1t {q['p10']:.2f}/{q['median']:.2f}/"
            f"{q['p90']:.2f}  load {load:.1f}",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
