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
from bnlab.functional.norms import (
    InstanceNormOutput,
    group_norm,
    instance_norm,
    layer_norm,
    moments_over,
    normalize_over,
)

__all__ = [
    "BatchNormOutput",
    "BatchStats",
    "InstanceNormOutput",
    "batch_moments",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_eval",
    "batch_norm_forward",
    "centered_moments",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments_over",
    "normalize_over",
    "reduction_dims",
    "running_stats_update",
]
