"""Thread settings for experiments that time or compare CPU work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["cpu_threads"]


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (0: leave as is), restored afterwards."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
