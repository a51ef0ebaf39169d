"""Where a d2l epoch's time goes: training steps, fit's test evaluation, the recalibrated
evaluation and the batch-statistics evaluation (``bnlab d2l``'s extra evaluations).

One process, one thread by default, the bnlab BN LeNet of the recipe (batch 256, lr 1.0);
each part timed ``--rounds`` times, interleaved. Writes JSON with the load average.

    python benchmarks/bench_d2l_evals.py --limit-train 20000 --out benchmarks/results/d2l_evals.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bnlab.data.iterators import load_splits
from bnlab.data.loader import DeviceLoader
from bnlab.lab.d2l import _recalibrated_accuracy
from bnlab.lab.kit.probes import batch_stats_accuracy
from bnlab.models import create
from bnlab.train import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--limit-train", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--recalibrate-batches", type=int, default=40)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_splits(os.environ["BNLAB_DATA_DIR"], limit_train=args.limit_train)
    xtr, ytr = data["train_images"], data["train_labels"]
    xte, yte = data["test_images"], data["test_labels"]
    train = DeviceLoader(xtr, ytr, 256, shuffle=True, seed=0)
    recal = DeviceLoader(xtr, ytr, 256, shuffle=True, seed=10_000)
    test = DeviceLoader(xte, yte, 256, shuffle=False)
    torch.manual_seed(0)
    model = create("lenet", norm="bnlab")
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_epoch() -> None:
        model.train()
        for x, y in train:
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    parts = {
        "train_epoch": train_epoch,
        "eval_test": lambda: evaluate(model, test),
        "eval_recalibrated": lambda: _recalibrated_accuracy(
            model, recal, test, args.recalibrate_batches
        ),
        "eval_batch_stats": lambda: batch_stats_accuracy(model, test),
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    loads = []
    for _ in range(args.rounds):
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    epoch = sum(med.values())
    extra = med["eval_recalibrated"] + med["eval_batch_stats"]
    result = {
        "threads": args.threads,
        "train_samples": len(ytr),
        "test_samples": len(yte),
        "time_s": times,
        "median_s": med,
        "extra_share_of_epoch": extra / epoch,
        "load_1min": loads,
        "note": "2-core machine shared with other jobs: compare shares and ratios, not seconds",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
