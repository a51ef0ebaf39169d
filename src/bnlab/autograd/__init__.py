"""``torch.autograd.Function`` bindings of the functional core (closed-form backwards).

This is the one package that calls ``bnlab.kernels``: each entry point here
(:func:`batch_norm`, :func:`batch_norm_inplace`, :func:`batch_norm_eval`, :func:`group_norm`,
:func:`instance_norm`, :func:`layer_norm`) asks the op's dispatch function in
``bnlab.kernels`` whether a call runs on the fused kernels, and otherwise runs the torch
ops of ``bnlab.functional``, with the same results and errors. ``bnlab.nn`` calls these
entry points and never ``bnlab.kernels``.
"""

from bnlab import kernels as _kernels
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
    "fast_path_enabled",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "set_fast_path",
    "sync_batch_norm",
]


def fast_path_enabled() -> bool:
    """Whether the fused kernels are switched on in this process (``bnlab.kernels``)."""
    return _kernels.is_enabled()


def set_fast_path(flag: bool) -> None:
    """Switch the fused kernels on or off in this process (results are the same either
    way, up to rounding; worker processes of ``bnlab.lab.pool`` take the parent's switch)."""
    _kernels.set_enabled(flag)
