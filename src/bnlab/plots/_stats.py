"""The summaries over seeds that the figures draw: the finite values, their mean, spread
and 95% t interval, per position of a curve."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as st

__all__ = ["band", "finite", "mean_ci", "mean_min_max", "mean_std", "seed_mean"]


def finite(values: Sequence[float | None]) -> list[float]:
    """The values as floats, None, NaN and infinities left out."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def seed_mean(values: Sequence[float | None]) -> float:
    """The mean of the finite values (None and NaN left out); NaN if there are none."""
    vals = finite(values)
    return sum(vals) / len(vals) if vals else math.nan


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for one value)."""
    n = len(values)
    mean, sd = mean_std(values)
    if n < 2:
        return mean, 0.0
    return mean, float(st.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def mean_min_max(values: Sequence[float | None]) -> tuple[float, float, float]:
    """Mean, minimum and maximum of the finite values; NaN three times if there are none."""
    vals = finite(values)
    if not vals:
        return math.nan, math.nan, math.nan
    return sum(vals) / len(vals), min(vals), max(vals)


def band(runs: Sequence[Sequence[float | None]]) -> tuple[list[float], list[float], list[float]]:
    """Mean, min and max over runs at each position (None/NaN left out), as three lists."""
    length = max((len(r) for r in runs), default=0)
    rows = [mean_min_max([r[i] for r in runs if i < len(r)]) for i in range(length)]
    return [m for m, _, _ in rows], [lo for _, lo, _ in rows], [hi for _, _, hi in rows]
