"""``bnlab check``: compare bnlab's BatchNorm with torch.nn's on random data and print a table.

A quick self-test of an installation and a small demonstration of the layers: for
1d/2d/3d inputs it runs a few training steps and an eval step through both modules
from the same ``state_dict`` and reports the largest differences.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import bnlab.nn
from bnlab.cli._args import add_command

HELP = "compare bnlab's BatchNorm with torch.nn on random data"

CASES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("BatchNorm1d", (64, 16)),
    ("BatchNorm1d", (32, 8, 20)),
    ("BatchNorm2d", (32, 6, 24, 24)),
    ("BatchNorm3d", (8, 4, 6, 6, 6)),
)


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "check", run, HELP, __doc__)
    p.add_argument("--steps", type=int, default=5, help="training steps per case (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed relative difference (default 1e-4)",
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest reference value (sums grow with N)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def _compare(cls_name: str, shape: tuple[int, ...], steps: int) -> dict[str, float]:
    ours = getattr(bnlab.nn, cls_name)(shape[1])
    twin = getattr(torch.nn, cls_name)(shape[1])
    twin.load_state_dict(ours.state_dict())
    worst = {"output": 0.0, "grad_input": 0.0, "grad_params": 0.0, "buffers": 0.0, "eval": 0.0}
    for _ in range(steps):
        x = torch.randn(shape) * 3 + 2
        grad = torch.randn(shape)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), twin(xb)
        ya.backward(grad)
        yb.backward(grad)
        worst["output"] = max(worst["output"], _rel(ya, yb))
        worst["grad_input"] = max(worst["grad_input"], _rel(xa.grad, xb.grad))
        for pa, pb in zip(ours.parameters(), twin.parameters(), strict=True):
            worst["grad_params"] = max(worst["grad_params"], _rel(pa.grad, pb.grad))
        for ba, bb in zip(ours.buffers(), twin.buffers(), strict=True):
            worst["buffers"] = max(worst["buffers"], _rel(ba, bb))
    ours.eval()
    twin.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        worst["eval"] = _rel(ours(x), twin(x))
    return worst


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    table = Table(title="bnlab.nn vs torch.nn: largest difference / max(1, |torch|), float32")
    table.add_column("layer")
    table.add_column("input shape")
    columns = ("output", "grad_input", "grad_params", "buffers", "eval")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("verdict")
    failed = 0
    for cls_name, shape in CASES:
        worst = _compare(cls_name, shape, args.steps)
        ok = max(worst.values()) <= args.tolerance
        failed += not ok
        table.add_row(
            cls_name,
            "x".join(map(str, shape)),
            *(f"{worst[c]:.1e}" for c in columns),
            "[green]ok[/green]" if ok else "[red]differs[/red]",
        )
    console = Console()
    console.print(table)
    console.print(
        f"{len(CASES) - failed} of {len(CASES)} cases agree within {args.tolerance:g} "
        f"after {args.steps} training steps and one eval step."
    )
    return 1 if failed else 0
