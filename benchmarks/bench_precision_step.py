"""The time-to-90% recipe's training step (ReLU LeNet-BN, batch 128, momentum SGD) in
float32 vs bfloat16 autocast (``bnlab.train.precision``), interleaved in one process.

Per thread count: median ms per step of each precision, the per-round ratio bf16/fp32
(p10/median/p90), with the load average; writes JSON. The step includes the loss and the
optimizer update, as ``fit`` runs it; the data is one random batch (no loader).

    python benchmarks/bench_precision_step.py --threads 1 2 --out benchmarks/results/precision_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bnlab.bench.timing import spread
from bnlab.models import create
from bnlab.train.precision import Precision


def _step(precision: str, batch: int):
    torch.manual_seed(0)
    model = create("lenet", norm="bnlab", activation="relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    prec = Precision(precision, "cpu")
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        loss = loss_fn(prec.forward(model, x), y)
        opt.zero_grad(set_to_none=True)
        prec.backward(loss)
        prec.step(opt)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=10, help="steps per timed sample")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    steps = {name: _step(name, args.batch_size) for name in ("32", "bf16")}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for fn in steps.values():
            fn()
            fn()
        times: dict[str, list[float]] = {k: [] for k in steps}
        ratios = []
        load = os.getloadavg()[0]
        for r in range(args.rounds):
            this = {}
            for name in steps if r % 2 == 0 else reversed(list(steps)):
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps[name]()
                this[name] = (time.perf_counter() - start) * 1e3 / args.steps
                times[name].append(this[name])
            ratios.append(this["bf16"] / this["32"])
        row = {
            "threads": threads,
            "median_ms": {k: statistics.median(v) for k, v in times.items()},
            "ratio_bf16_over_fp32": spread(ratios),
            "load_before": load,
            "load_after": os.getloadavg()[0],
        }
        rows.append(row)
        q = row["ratio_bf16_over_fp32"]
        print(
            f"threads {threads}: fp32 {row['median_ms']['32']:.2f} ms, bf16 "
            f"{row['median_ms']['bf16']:.2f} ms, bf16/fp32 {q['p10']:.2f}/{q['median']:.2f}/"
            f"{q['p90']:.2f}, load {load:.1f}",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"batch_size": args.batch_size, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
