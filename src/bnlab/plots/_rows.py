"""The layout of the figures: one row of panels, or one row of panels per network, and
the variants' runs of a per-network figure."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

__all__ = ["network_rows", "panel_row", "variant_runs"]

#: Per-seed lists of checkpoint records, each with its ``"step"``.
Runs = Sequence[Sequence[Mapping[str, Any]]]


def panel_row(count: int, *, width: float, height: float, **subplots: Any) -> tuple[Figure, Any]:
    """A figure of one row of ``count`` panels (at least one), each ``width`` wide.

    Args:
        subplots: more keywords of ``Figure.subplots`` (``sharey=True``).

    Returns:
        ``(figure, axes)``, ``axes[panel]``.
    """
    panels = max(count, 1)
    fig = Figure(figsize=(width * panels, height))
    return fig, fig.subplots(1, panels, squeeze=False, **subplots)[0]


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
