"""Config checks the experiments' ``__post_init__`` share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_positive"]


def check_positive(owner: str, config: Any, names: Sequence[str]) -> None:
    """Raise ValueError when a numeric setting of ``config`` is not > 0.

    Args:
        owner: the config's name, for the message (``"ICSConfig"``).
        config: the dataclass instance.
        names: the fields to check.
    """
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")
