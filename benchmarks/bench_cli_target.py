"""Time to a test accuracy from the CLI: ``bnlab train ... --target-acc A`` per seed.

Runs the command once per seed, each a fresh process (so the clock includes starting
Python, importing torch and loading the data), and records the command's wall time, the
epoch and run time at which the target was reached (``results.json``'s ``target``), the
layout the command chose and the 1-minute load average and busy cores before each run.

    BNLAB_DATA_DIR=../shared/datasets/fashion-mnist python benchmarks/bench_cli_target.py \\
        --seeds 0 1 2 --out benchmarks/results/cli_target_90.json

The default recipe (every choice stated; ``--recipe`` takes another, as CLI options):
LeNet with ReLU and bnlab's BN, SGD lr 0.05 with momentum 0.9, batch 128, a cosine
schedule over 10 epochs, float32, the threads and processes the command picks, stop at
90% test accuracy (moving-average BN statistics, all 10,000 test images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bnlab.bench.timing import environment_record
from bnlab.cli._cores import busy_cores
from bnlab.train.io import write_json

RECIPE = (
    "--model lenet --activation relu --norm bnlab --batch-size 128 --lr 0.05 "
    "--momentum 0.9 --lr-schedule cosine --epochs 10"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--target-acc", type=float, default=0.9)
    p.add_argument("--recipe", default=RECIPE, help="bnlab train options, one string")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = Path(tmp) / f"seed{seed}"
            cmd = [sys.executable, "-m", "bnlab", "train", "--out", str(out), "--no-progress"]
            cmd += [*args.recipe.split(), "--seed", str(seed)]
            cmd += ["--target-acc", str(args.target_acc)]
            before = {"load": os.getloadavg()[0], "busy_cores": busy_cores()}
            start = time.perf_counter()
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - start
            results = json.loads((out / "results.json").read_text())
            environment = json.loads((out / "environment.json").read_text())
            layout = {"torch_num_threads": environment.get("torch_num_threads")}
            target = results["target"]
            row = {"seed": seed, "command_wall_s": wall, "target": target, "before": before}
            row |= {"layout": layout, "cores_line": done.stdout.splitlines()[0]}
            row["best_test_acc"] = max(r["test_acc"] for r in results["history"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    reached = [r for r in rows if r["target"]["reached"]]
    summary = {
        "recipe": args.recipe,
        "target_acc": args.target_acc,
        "reached": f"{len(reached)} of {len(rows)}",
        "command_wall_s": [r["command_wall_s"] for r in rows],
        "median_command_wall_s": statistics.median(r["command_wall_s"] for r in rows),
        "max_command_wall_s": max(r["command_wall_s"] for r in rows),
        "epochs": [r["target"]["epoch"] for r in rows],
        "rows": rows,
        "environment": environment_record(environ=os.environ),
    }
    print(
        f"reached {summary['reached']}; command wall time median "
        f"{summary['median_command_wall_s']:.1f} s, max {summary['max_command_wall_s']:.1f} s"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, summary)  # atomic: a temporary file, then os.replace


if __name__ == "__main__":
    main()
