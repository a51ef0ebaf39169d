"""BatchNorm beside other work: bnlab vs torch's native BN with a competing process running.

The timed work, in this process (``--threads``, default torch's):

- ``bn``: one BN training step (forward + backward of the layer) on LeNet's shapes,
  ``(256, 6, 24, 24)``, ``(256, 16, 8, 8)``, ``(256, 120)``, ``(256, 84)``;
- ``lenet``: a short loop of LeNet-BN training steps (batch 256, SGD), ``--steps`` steps.

Each is timed bnlab vs torch, interleaved (alternating, many rounds), under each
competitor, started as a separate process before the timing and stopped after:

- ``none``: nothing (the machine as it is);
- ``spin``: one pure-Python busy loop (takes a core);
- ``matmul``: a torch process of 2 threads multiplying 512x512 matrices.

Reports per (competitor, work, variant) p10 / median / p90 in ms, and the ratio
bnlab/torch of the medians and per round (p10/median/p90 of the per-round ratios), with
the 1-minute load average before and after each block. Writes JSON.

    python benchmarks/bench_busy.py --out benchmarks/results/bench_busy.json
    python benchmarks/bench_busy.py --threads 1 --competitors none spin --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnlab.bench.timing import environment_record, spread
from bnlab.models import create
from bnlab.nn import BatchNorm1d, BatchNorm2d

SHAPES = ((256, 6, 24, 24), (256, 16, 8, 8), (256, 120), (256, 84))

COMPETITORS = {
    "none": None,
    "spin": "while True: pass",
    "matmul": (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "a = torch.randn(512, 512); b = torch.randn(512, 512)\n"
        "while True: a @ b\n"
    ),
}


def _bn_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        layer(x).backward(grad)

    return step


def _lenet_loop(norm: str, steps: int) -> Callable[[], None]:
    torch.manual_seed(0)
    model = create("lenet", norm=norm)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(256, 1, 28, 28)
    y = torch.randint(0, 10, (256,))
    loss_fn = nn.CrossEntropyLoss()

    def loop() -> None:
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return loop


def _work(steps: int) -> dict[str, dict[str, Callable[[], None]]]:
    work: dict[str, dict[str, Callable[[], None]]] = {}
    for shape in SHAPES:
        name = "bn " + "x".join(map(str, shape))
        x = torch.randn(shape, requires_grad=True)
        grad = torch.randn(shape)
        c = shape[1]
        ours = BatchNorm2d(c) if len(shape) == 4 else BatchNorm1d(c)
        native = nn.BatchNorm2d(c) if len(shape) == 4 else nn.BatchNorm1d(c)
        work[name] = {"bnlab": _bn_step(ours, x, grad), "torch": _bn_step(native, x, grad)}
    work[f"lenet {steps} steps"] = {
        "bnlab": _lenet_loop("bnlab", steps),
        "torch": _lenet_loop("torch", steps),
    }
    return work


def _time_block(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, Any]:
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    ratios = []
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        this: dict[str, float] = {}
        for name in order:
            start = time.perf_counter()
            fns[name]()
            this[name] = (time.perf_counter() - start) * 1e3
            times[name].append(this[name])
        ratios.append(this["bnlab"] / this["torch"])
    out: dict[str, Any] = {k: spread(v) for k, v in times.items()}
    out["ratio_of_medians"] = out["bnlab"]["median"] / out["torch"]["median"]
    out["ratio_per_round"] = spread(ratios)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--competitors", nargs="+", default=list(COMPETITORS), choices=COMPETITORS)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = _work(args.steps)
    results: dict[str, Any] = {}
    for competitor in args.competitors:
        code = COMPETITORS[competitor]
        proc = None
        if code is not None:
            proc = subprocess.Popen([sys.executable, "-c", code])
            time.sleep(2.0 if competitor == "matmul" else 0.5)  # let it start
        try:
            block: dict[str, Any] = {}
            for name, fns in work.items():
                load = os.getloadavg()[0]
                block[name] = _time_block(fns, args.rounds)
                block[name]["load_before"] = load
                block[name]["load_after"] = os.getloadavg()[0]
                r = block[name]["ratio_per_round"]
                print(
                    f"{competitor:7} {name:22} bnlab {block[name]['bnlab']['median']:8.3f} ms "
                    f"torch {block[name]['torch']['median']:8.3f} ms  ratio p10/med/p90 "
                    f"{r['p10']:.2f}/{r['median']:.2f}/{r['p90']:.2f}  load {load:.1f}",
                    flush=True,
                )
            results[competitor] = block
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait()
    record = {
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "lenet_steps": args.steps,
        "results": results,
        "environment": environment_record(environ=os.environ),
        "note": (
            "times in ms; ratio = bnlab / torch (below 1: bnlab faster), per round of one "
            "bnlab and one torch call back to back; the load average is the machine's, "
            "competitor included"
        ),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
