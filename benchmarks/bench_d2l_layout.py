"""``bnlab d2l`` under several process x thread layouts, alternating processes.

Each round runs every layout once (a fresh ``bnlab d2l`` process into a fresh folder),
in a rotated order, and records the wall time with the 1-minute load average before and
after. On a shared machine compare the ratios within a round, not seconds across rounds.

    python benchmarks/bench_d2l_layout.py --rounds 2 --limit-train 10000 --limit-test 2000 \\
        --out benchmarks/results/d2l_layout.json
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

LAYOUTS = {
    "1x2": ["--workers", "1", "--threads", "2"],
    "1x1": ["--workers", "1", "--threads", "1"],
    "2x1": ["--workers", "2", "--threads", "1"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=15_000)
    p.add_argument("--limit-test", type=int, default=2_000)
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = args.layouts[r % len(args.layouts) :] + args.layouts[: r % len(args.layouts)]
            for name in order:
                out = Path(tmp) / f"{name}-{r}"
                cmd = [sys.executable, "-m", "bnlab", "d2l", "--out", str(out)]
                cmd += ["--epochs", str(args.epochs), "--limit-train", str(args.limit_train)]
                cmd += ["--limit-test", str(args.limit_test)]
                cmd += LAYOUTS[name]
                load_before = os.getloadavg()[0]
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                wall = time.perf_counter() - start
                summary = json.loads((out / "summary.json").read_text())
                rows.append(
                    {
                        "round": r,
                        "layout": name,
                        "wall_s": wall,
                        "load_before": load_before,
                        "load_after": os.getloadavg()[0],
                        "train_loss": [x["train_loss"] for x in summary["runs"]],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    # Ratios to the first layout named, round by round.
    reference = args.layouts[0]
    ratios = {}
    for name in args.layouts:
        per_round = [
            next(x["wall_s"] for x in rows if x["round"] == r and x["layout"] == name)
            / next(x["wall_s"] for x in rows if x["round"] == r and x["layout"] == reference)
            for r in range(args.rounds)
        ]
        ratios[f"{name}/{reference}"] = per_round
    result = {
        "recipe": {
            "epochs": args.epochs,
            "limit_train": args.limit_train,
            "limit_test": args.limit_test,
            "variants": 4,
        },
        "cpus": len(os.sched_getaffinity(0)),
        "runs": rows,
        "ratio_by_round": ratios,
        "median_ratio": {k: statistics.median(v) for k, v in ratios.items()},
        "note": "shared machine: ratios within a round; loads beside each run",
    }
    print(json.dumps(result["median_ratio"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
