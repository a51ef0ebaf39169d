"""Pure maths: moments, normalization, and batch norm forward/backward.

Nothing here mutates its inputs or keeps state; ``bnlab.nn`` builds modules on it.
"""

from bnlab.functional.batch_norm import (
    BatchNormOutput,
    BatchStats,
    batch_norm,
    batch_norm_backward,
    batch_norm_eval,
    batch_norm_forward,
    running_stats_update,
)
from bnlab.functional.moments import batch_moments, centered_moments, reduction_dims

__all__ = [
    "BatchNormOutput",
    "BatchStats",
    "batch_moments",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_eval",
    "batch_norm_forward",
    "centered_moments",
    "reduction_dims",
    "running_stats_update",
]
