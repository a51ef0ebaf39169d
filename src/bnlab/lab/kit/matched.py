"""Reading a measure at matched training loss (issue 17): a moving average of the
mini-batch losses, the first step it reaches a level, the mean of a measure over the
steps from there; and a learning-rate schedule held, then decayed linearly to 0.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

__all__ = ["LossAverage", "first_reach", "hold_then_decay", "window_mean"]


class LossAverage:
    """The moving average of the last ``window`` mini-batch losses (fewer at the start),
    after every step: ``add(loss)`` appends the new average to ``values``."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"LossAverage: window must be >= 1, got {window!r}")
        self._recent: deque[float] = deque(maxlen=window)
        self.values: list[float] = []

    def add(self, loss: float) -> float:
        self._recent.append(float(loss))
        self.values.append(sum(self._recent) / len(self._recent))
        return self.values[-1]


def first_reach(values: Sequence[float | None], level: float) -> int | None:
    """The first step (1-based: ``values[i]`` is the average after step ``i + 1``) whose
    value is finite and ``<= level``; None if none is."""
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v) and v <= level:
            return i + 1
    return None


def window_mean(
    steps: Sequence[int], values: Sequence[float | None], start: int | None, length: int
) -> float | None:
    """The mean of the finite ``values`` whose step lies in ``[start, start + length)``;
    None when ``start`` is None or no such value exists."""
    if start is None:
        return None
    kept = [
        float(v)
        for s, v in zip(steps, values, strict=True)
        if start <= s < start + length and v is not None and math.isfinite(v)
    ]
    return sum(kept) / len(kept) if kept else None


def hold_then_decay(steps: int, hold: float) -> Callable[[int], float]:
    """The lr factor of ``torch.optim.lr_scheduler.LambdaLR``: 1 for the first ``hold``
    fraction of ``steps``, then linear to 0 at ``steps``."""
    held = round(hold * steps)

    def factor(step: int) -> float:
        if step < held:
            return 1.0
        return max(0.0, (steps - step) / max(1, steps - held))

    return factor
