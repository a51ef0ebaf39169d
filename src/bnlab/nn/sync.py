"""``SyncBatchNorm`` over ``torch.distributed`` (gloo on CPU, nccl on GPU), and
``convert_sync_batchnorm``.

Papers: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167; synchronized
("cross-GPU") batch norm as in Zhang et al., "Context Encoding for Semantic
Segmentation", arXiv 1803.08904. A twin of ``torch.nn.SyncBatchNorm`` (same
signature and ``state_dict``) that also runs on CPU tensors: torch's refuses them
("expected input tensor to be on GPU"). The maths is ``bnlab.functional.sync`` and the
collective protocol is documented in ``bnlab.autograd.sync_batch_norm``: one
all-gather of ``2 * C + 1`` float64 values per rank in forward, one all-reduce of
``2 * C`` values in backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from bnlab.autograd.sync_batch_norm import ProcessGroupCollectives, sync_batch_norm
from bnlab.functional.batch_norm import BatchNormOutput
from bnlab.nn import batchnorm
from bnlab.nn.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]

# bnlab's plain batch norms, the classes bnlab.nn.batchnorm exports (a lazy one only
# after its first input); their subclasses (other maths) are not converted.
_BNLAB_BATCHNORMS = tuple(getattr(batchnorm, name) for name in batchnorm.__all__)


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch over all ranks.

    In training mode, with an initialized process group of more than one rank, each
    rank normalizes its slice with the mean and (biased) variance of the concatenation
    of every rank's slice, and its backward gives the slice of BN's gradient over the
    concatenated batch. Ranks may hold different batch sizes, including 0: a rank with
    an empty batch still takes part in the collectives (every rank of the group must
    call forward and backward, or the others wait; the group's timeout ends the wait).
    The running statistics move with the global mean and the unbiased global variance
    and are identical on every rank. ``grad_weight`` and ``grad_bias`` are this rank's
    sums (their sum over ranks is BN's); DistributedDataParallel averages them as for
    any parameter, as with ``torch.nn.SyncBatchNorm``.

    A subclass of torch's ``_BatchNorm`` (what torch's utilities look for: torch's
    constructor and buffers, bnlab's forward, :func:`convert_sync_batchnorm` as its
    ``convert_sync_batchnorm``), but deliberately not of ``torch.nn.SyncBatchNorm``:
    ``DistributedDataParallel`` refuses every ``torch.nn.SyncBatchNorm`` in a CPU
    module ("SyncBatchNorm layers only work with GPU modules"), and this one runs on
    CPU (gloo) as well.

    Without synchronization (``torch.distributed`` unavailable or not initialized, a
    group of one rank, or eval mode) it is exactly bnlab's BatchNorm. Conventions
    (momentum, ``momentum=None``, ``track_running_stats``) are those of
    ``bnlab.functional.batch_norm``.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance, > 0.
        momentum: weight of the new batch in the running statistics, or None for a
            cumulative average.
        affine: learn ``weight`` and ``bias``.
        track_running_stats: keep running statistics (see ``_NormBase``).
        process_group: the ``torch.distributed`` group to synchronize over; None for
            the default (world) group.
        device, dtype: of the parameters and buffers.
        bias: with ``affine``, also learn the shift (keyword-only, as torch).

    Raises:
        ValueError: in training, on every rank of the group, when the global batch has
            a single value per channel; bad constructor values and input shapes.

    Shape:
        input: ``(N, C, *)`` with at least 2 dims; output: the same.
    """

    _layout = "(N, C, *)"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )
        self.process_group = process_group

    # TorchScript would compile torch's unsynchronized batch norm: refused.
    _scriptable_as_torch = False

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(
                f"{type(self).__name__}: expected at least 2D input (N, C, *), "
                f"got {x.dim()}D input of shape {tuple(x.shape)}"
            )

    def _sync_world_size(self) -> int:
        """Ranks to synchronize over now: 1 when there is nothing to synchronize."""
        if not self.training or not dist.is_available() or not dist.is_initialized():
            return 1
        return dist.get_world_size(self.process_group)

    def _variant(
        self, *, training: bool, name: str
    ) -> tuple[Callable[..., BatchNormOutput], dict[str, Any]] | None:
        # BatchNorm's forward (checks, buffers, copying the new statistics back); with
        # more than one rank, the statistics of the global batch.
        if self._sync_world_size() <= 1:
            return None
        return _sync_batch_norm_with, {"collectives": ProcessGroupCollectives(self.process_group)}

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """:func:`convert_sync_batchnorm` (as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``)."""
        return convert_sync_batchnorm(module, process_group)


def _sync_batch_norm_with(
    _train_forward: Any, x: Tensor, *args: Any, training: bool, eval_forward: Any, **kwargs: Any
) -> BatchNormOutput:
    """``sync_batch_norm`` in the ``norm_with(train_forward, x, ...)`` form that
    ``_BatchNorm._variant`` returns: SyncBN has its own training forward, and it is called
    in training only (``_sync_world_size``)."""
    return sync_batch_norm(x, *args, **kwargs)


def _is_convertible(module: nn.Module) -> bool:
    if isinstance(module, SyncBatchNorm) or not isinstance(module, _TorchBatchNorm):
        return False
    # bnlab's batch norms are torch's too; of bnlab's, only the plain ones (exact types)
    # are converted: subclasses (ghost, renorm) compute other maths.
    return not isinstance(module, _BatchNorm) or type(module) in _BNLAB_BATCHNORMS


def _to_sync(module: nn.Module, process_group: Any) -> SyncBatchNorm:
    name = type(module).__name__
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"convert_sync_batchnorm: {name} has uninitialized parameters (a lazy module); "
            f"run one forward pass first so that num_features is known"
        )
    ref = module.weight if module.weight is not None else module.running_mean
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    out = SyncBatchNorm(
        module.num_features,
        module.eps,
        module.momentum,
        module.affine,
        module.track_running_stats,
        process_group,
        bias=module.bias is not None,
        **factory,
    )
    # Share the very tensors, as torch does: an optimizer built on the old model keeps
    # updating the new one, and requires_grad, device and dtype come along.
    if module.affine:
        out.weight = module.weight
        out.bias = module.bias
    out.running_mean = module.running_mean
    out.running_var = module.running_var
    out.num_batches_tracked = module.num_batches_tracked
    out.train(module.training)
    if hasattr(module, "qconfig"):
        out.qconfig = module.qconfig
    return out


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every batch norm in ``module`` by :class:`SyncBatchNorm`.

    Converts ``torch.nn``'s ``BatchNorm1d/2d/3d`` (any ``torch.nn.modules.batchnorm.
    _BatchNorm``, including ``torch.nn.SyncBatchNorm``) and bnlab's ``BatchNorm1d/2d/3d``;
    subclasses of bnlab's (other maths, such as ghost or renormalized batch norm) and
    every other layer are left alone. Each new layer *shares* the old one's parameters
    and buffers (as torch's conversion does), so values, ``requires_grad``, device,
    dtype and optimizer references carry over; its training mode is copied. Works on a
    bare batch-norm module (the new module is returned) and on nested containers
    (converted in place of their children and returned).

    Args:
        module: the model, or a single batch-norm layer.
        process_group: the group each new layer synchronizes over (None: world).

    Returns:
        The module with its batch norms replaced (a new object when ``module`` itself
        is a batch norm).

    Raises:
        ValueError: a lazy batch norm that has not seen an input yet.
    """
    if _is_convertible(module):
        return _to_sync(module, process_group)
    for child_name, child in module.named_children():
        new = convert_sync_batchnorm(child, process_group)
        if new is not child:
            module.add_module(child_name, new)
    return module
