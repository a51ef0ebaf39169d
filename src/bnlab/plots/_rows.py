"""The layout of the per-network figures (one row of panels per network) and the mean
over seeds of their checkpoint curves."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

__all__ = ["network_rows", "seed_mean", "variant_runs"]

#: Per-seed lists of checkpoint records, each with its ``"step"``.
Runs = Sequence[Sequence[Mapping[str, Any]]]


def seed_mean(values: Sequence[float | None]) -> float:
    """The mean of the finite values (None and NaN left out); NaN if there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def network_rows(
    networks: int, panels: int, *, width: float, row_height: float
) -> tuple[Figure, Any]:
    """A figure of one row of ``panels`` axes per network (at least one row).

    Returns:
        ``(figure, axes)``, ``axes[row][panel]``.
    """
    rows = max(networks, 1)
    fig = Figure(figsize=(width, row_height * rows))
    return fig, fig.subplots(rows, panels, squeeze=False)


def variant_runs(by_variant: Mapping[str, Runs]) -> Iterator[tuple[str, Runs, list[Any]]]:
    """``(variant, per-seed runs, checkpoint steps)`` of each variant that has runs (the
    steps of the first seed's records)."""
    for variant, runs in by_variant.items():
        if runs:
            yield variant, runs, [p["step"] for p in runs[0]]
