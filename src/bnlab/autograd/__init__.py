"""``torch.autograd.Function`` bindings of the functional core (closed-form backwards).

This is the one package that calls ``bnlab.kernels``: each entry point here
(:func:`batch_norm`, :func:`batch_norm_inplace`, :func:`batch_norm_eval`, :func:`group_norm`,
:func:`instance_norm`, :func:`layer_norm`) asks the op's dispatch function in
``bnlab.kernels`` whether a call runs on the fused kernels, and otherwise runs the torch
ops of ``bnlab.functional``, with the same results and errors. ``bnlab.nn`` calls these
entry points and never ``bnlab.kernels``.
"""

from bnlab.autograd.batch_norm import (
    BatchNormFunction,
    batch_norm,
    batch_norm_eval,
    batch_norm_inplace,
)
from bnlab.autograd.group_norm import group_norm, instance_norm
from bnlab.autograd.layer_norm import layer_norm
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
    "batch_norm_eval",
    "batch_norm_inplace",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "sync_batch_norm",
]
