"""A tiny registered experiment for the runner and CLI tests (no data, milliseconds)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bnlab.lab.experiment import (
    LabContext,
    LabOutcome,
    LabSpec,
    Table,
    Verdict,
    compare,
    describe,
    seeded,
)

CALLS: list[str] = []


@dataclass(frozen=True)
class ToyConfig:
    seeds: int = 4
    size: int = 1000
    shift: float = 0.5
    label: str = "toy"
    flags: tuple[int, ...] = (1, 2)
    scale: float | None = None

    @classmethod
    def quick(cls) -> ToyConfig:
        return cls(seeds=3, size=50)


def run(config: ToyConfig, ctx: LabContext) -> LabOutcome:
    ctx.progress.start(config.seeds, "toy")
    a, b = [], []
    for seed in range(config.seeds):

        def unit(seed: int = seed) -> dict[str, float]:
            CALLS.append(f"seed{seed}")
            with seeded(seed) as gen:
                x = torch.randn(config.size, generator=gen)
            return {"a": float(x.mean()) + config.shift, "b": float(x.mean())}

        got = ctx.unit(f"seed{seed}", unit)
        a.append(got["a"])
        b.append(got["b"])
        ctx.progress.advance()
    c = compare(a, b)
    stats = describe(a)
    return LabOutcome(
        tables=[
            Table("toy", ["group", "mean"], [["a", stats["mean"]], ["b", describe(b)["mean"]]])
        ],
        verdicts=[Verdict("a exceeds b", c.direction == "greater", c.text())],
        raw={"a": a, "b": b},
    )


SPEC = LabSpec(
    name="toy-test",
    title="A toy experiment",
    summary="Draws numbers; a exceeds b by the shift.",
    config_type=ToyConfig,
    run=run,
    needs_data=False,
    full_time="instant",
)
