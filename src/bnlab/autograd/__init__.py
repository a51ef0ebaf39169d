"""``torch.autograd.Function`` bindings of the functional core (closed-form backwards)."""

from bnlab.autograd.batch_norm import BatchNormFunction, batch_norm
from bnlab.autograd.sync_batch_norm import (
    LocalCollectives,
    ProcessGroupCollectives,
    SyncBatchNormFunction,
    sync_batch_norm,
)

__all__ = [
    "BatchNormFunction",
    "LocalCollectives",
    "ProcessGroupCollectives",
    "SyncBatchNormFunction",
    "batch_norm",
    "sync_batch_norm",
]
