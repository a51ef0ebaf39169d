"""Pure maths: moments, normalization, and batch norm forward/backward.

Nothing here mutates its inputs or keeps state, and everything is torch ops: the fused
kernels live in ``bnlab.kernels``, and ``bnlab.autograd`` decides when a call takes them.
``bnlab.nn`` builds modules on ``bnlab.autograd``.
"""

from bnlab.functional.batch_norm import (
    BatchNormOutput,
    BatchStats,
    batch_norm,
    batch_norm_backward,
    batch_norm_eval,
    batch_norm_forward,
    running_stats_update,
    running_update_factor,
)
from bnlab.functional.batch_renorm import batch_renorm, renorm_clipping, renorm_correction
from bnlab.functional.ghost import ghost_batch_norm
from bnlab.functional.moments import batch_moments, centered_moments, reduction_dims
from bnlab.functional.norms import (
    InstanceNormOutput,
    group_norm,
    instance_norm,
    layer_norm,
    moments_over,
    normalize_over,
)
from bnlab.functional.sync import (
    MergedMoments,
    batch_norm_grad_input,
    local_grad_sums,
    local_moments,
    merge_moments,
    pack_moments,
    unpack_moments,
)

__all__ = [
    "BatchNormOutput",
    "BatchStats",
    "InstanceNormOutput",
    "MergedMoments",
    "batch_moments",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_eval",
    "batch_norm_forward",
    "batch_norm_grad_input",
    "batch_renorm",
    "centered_moments",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_grad_sums",
    "local_moments",
    "merge_moments",
    "moments_over",
    "normalize_over",
    "pack_moments",
    "reduction_dims",
    "renorm_clipping",
    "renorm_correction",
    "running_stats_update",
    "running_update_factor",
    "unpack_moments",
]
