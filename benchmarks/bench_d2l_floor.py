"""``bnlab d2l`` against the eager-PyTorch floor: four minimal runs of the recipe.

The floor (issue 20): the d2l recipe (LeNet with ``nn.BatchNorm2d/1d``, sigmoid, SGD lr
1.0, batch 256, 10 epochs, test accuracy after every epoch) written as the shortest eager
loop there is: the data as one tensor, a permutation per epoch, slices as batches,
nothing else. ``bnlab d2l`` trains four variants (none, textbook, bnlab, torch) with two
extra evaluations per epoch, so its fair floor is four such runs, one after the other,
each a fresh process with torch's default thread count.

Each round runs ``bnlab d2l`` (its own choice of processes and threads, or the
``--d2l-args`` given) and the four minimal runs, in an order that alternates from round
to round, and records wall times with the 1-minute load average before and after. The
ratio of a round (``bnlab d2l`` / sum of the four minimal runs) is what to read on a
shared machine, not seconds across rounds.

    BNLAB_DATA_DIR=../shared/datasets/fashion-mnist \\
        python benchmarks/bench_d2l_floor.py --rounds 2 --out benchmarks/results/d2l_floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bnlab.train.io import write_json


def lenet_bn() -> nn.Sequential:
    """d2l's LeNet with torch's BN after every convolution and hidden linear layer."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5),
        nn.BatchNorm2d(6),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.BatchNorm2d(16),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(256, 120),
        nn.BatchNorm1d(120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.BatchNorm1d(84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )


def minimal_run(data_dir: str, epochs: int, batch: int, seed: int) -> dict:
    """One minimal eager run of the recipe; returns its wall time and accuracies."""
    from bnlab.data import load_fashion_mnist

    start = time.perf_counter()
    torch.manual_seed(seed)
    x, y = load_fashion_mnist("train", data_dir)
    xt, yt = load_fashion_mnist("test", data_dir)
    x = x.unsqueeze(1).float().div_(255)
    xt = xt.unsqueeze(1).float().div_(255)
    net = lenet_bn()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    loss_fn = nn.CrossEntropyLoss()
    accs = []
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            correct = sum(
                (net(xt[i : i + 1000]).argmax(1) == yt[i : i + 1000]).sum().item()
                for i in range(0, len(xt), 1000)
            )
        accs.append(correct / len(xt))
    return {"wall_s": time.perf_counter() - start, "test_acc": accs}


def _timed(cmd: list[str]) -> tuple[float, float, float, str]:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, load_before, os.getloadavg()[0], done.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--data-dir", default=os.environ.get("BNLAB_DATA_DIR"))
    p.add_argument("--d2l-args", default="", help="extra arguments for bnlab d2l, one string")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--minimal-run", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.data_dir:
        p.error("give --data-dir or set BNLAB_DATA_DIR to the Fashion-MNIST folder")
    if args.minimal_run is not None:
        print(json.dumps(minimal_run(args.data_dir, args.epochs, args.batch, args.minimal_run)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ["d2l", "minimal"] if r % 2 == 0 else ["minimal", "d2l"]
            for what in order:
                if what == "d2l":
                    out = Path(tmp) / f"d2l-{r}"
                    cmd = [sys.executable, "-m", "bnlab", "d2l", "--out", str(out)]
                    cmd += ["--data-dir", args.data_dir, "--epochs", str(args.epochs)]
                    cmd += ["--batch-size", str(args.batch), *args.d2l_args.split()]
                    wall, before, after, _ = _timed(cmd)
                    summary = json.loads((out / "summary.json").read_text())
                    config = json.loads((out / "config.json").read_text())
                    row = {"round": r, "what": "d2l", "wall_s": wall, "load_before": before}
                    row |= {"load_after": after, "layout": config.get("layout")}
                    row["test_acc"] = {x["variant"]: x.get("test_acc") for x in summary["runs"]}
                else:
                    walls, accs = [], []
                    before = os.getloadavg()[0]
                    for seed in range(4):
                        cmd = [sys.executable, __file__, "--minimal-run", str(seed)]
                        cmd += ["--data-dir", args.data_dir, "--epochs", str(args.epochs)]
                        cmd += ["--batch", str(args.batch)]
                        wall, _, _, stdout = _timed(cmd)
                        walls.append(wall)
                        accs.append(json.loads(stdout.strip().splitlines()[-1])["test_acc"][-1])
                    row = {"round": r, "what": "minimal x4", "wall_s": sum(walls)}
                    row |= {"runs_s": walls, "load_before": before}
                    row |= {"load_after": os.getloadavg()[0], "final_test_acc": accs}
                rows.append(row)
                print(json.dumps(row), flush=True)
    ratios = []
    for r in range(args.rounds):
        d2l = next(x["wall_s"] for x in rows if x["round"] == r and x["what"] == "d2l")
        floor = next(x["wall_s"] for x in rows if x["round"] == r and x["what"] != "d2l")
        ratios.append(d2l / floor)
    result = {
        "recipe": {"epochs": args.epochs, "batch": args.batch, "d2l_args": args.d2l_args},
        "ratio_d2l_over_four_minimal": ratios,
        "median_ratio": statistics.median(ratios),
        "target": 0.75,
        "rows": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads_default": torch.get_num_threads(),
        },
    }
    print("ratio bnlab d2l / four minimal eager runs, per round:", [f"{x:.2f}" for x in ratios])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)  # atomic: a temporary file, then os.replace


if __name__ == "__main__":
    main()
