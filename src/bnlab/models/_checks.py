"""Argument checks shared by the model constructors."""

from __future__ import annotations

__all__ = ["check_positive_int"]


def check_positive_int(owner: str, label: str, value: object) -> int:
    """Return ``value`` if it is a positive int.

    Raises:
        TypeError: not an int (bools are refused too).
        ValueError: zero or negative.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"{owner}: {label} must be an int, got {value!r} of type {type(value).__name__}"
        )
    if value <= 0:
        raise ValueError(f"{owner}: {label} must be positive, got {value}")
    return value
