"""Fuser methods for ``torch.ao.quantization.fuse_modules`` with bnlab's batch norms.

``fuse_modules`` looks fuser methods up by the *exact* types of the modules it fuses,
so it knows torch's ``BatchNorm*d`` and not their subclasses, bnlab's included. bnlab
does not write into torch's private default table at import (no import-time side
effects); pass :data:`FUSER_METHOD_MAPPING` instead::

    fuse_modules(model, [["conv", "bn", "relu"]],
                 fuse_custom_config_dict={"additional_fuser_method_mapping":
                                          bnlab.nn.FUSER_METHOD_MAPPING})

Each method hands torch's own fuser a ``torch.nn.BatchNorm*d`` that shares bnlab's
parameters and buffers, so eval-mode fusion folds the statistics and QAT fusion
(``fuse_modules_qat``) builds torch's ``ConvBn*d`` modules, exactly as for torch's layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.ao.quantization.fuser_method_mappings import (
    fuse_conv_bn,
    fuse_conv_bn_relu,
    fuse_linear_bn,
)

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm

__all__ = ["FUSER_METHOD_MAPPING", "as_torch_batchnorm"]

_TORCH_TWIN = {
    BatchNorm1d: nn.BatchNorm1d,
    BatchNorm2d: nn.BatchNorm2d,
    BatchNorm3d: nn.BatchNorm3d,
}


def as_torch_batchnorm(bn: _BatchNorm) -> nn.Module:
    """A ``torch.nn.BatchNorm*d`` sharing ``bn``'s parameters, buffers and mode.

    Raises:
        TypeError: ``bn`` is not bnlab's ``BatchNorm1d/2d/3d`` (exact type).
    """
    twin = _TORCH_TWIN.get(type(bn))
    if twin is None:
        raise TypeError(
            f"as_torch_batchnorm: expected bnlab's BatchNorm1d, BatchNorm2d or BatchNorm3d, "
            f"got {type(bn).__name__}"
        )
    out = twin(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        device="meta",
        bias=bn.bias is not None,
    )
    # The very tensors (as convert_sync_batchnorm does): nothing is copied.
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        setattr(out, name, getattr(bn, name))
    return out.train(bn.training)


def _with_torch_batchnorm(fuser: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def fuse(is_qat: bool, *modules: Any) -> nn.Module:
        return fuser(
            is_qat, *(as_torch_batchnorm(m) if type(m) in _TORCH_TWIN else m for m in modules)
        )

    fuse.__name__ = f"bnlab_{fuser.__name__}"
    return fuse


_CONVS = ((nn.Conv1d, BatchNorm1d), (nn.Conv2d, BatchNorm2d), (nn.Conv3d, BatchNorm3d))

#: ``(producer, bnlab BN[, ReLU]) -> fuser method``, for ``fuse_modules``'
#: ``additional_fuser_method_mapping``: the pairs and triples torch fuses for its own layers.
FUSER_METHOD_MAPPING: dict[tuple[type[nn.Module], ...], Callable[..., nn.Module]] = {
    **{(conv, bn): _with_torch_batchnorm(fuse_conv_bn) for conv, bn in _CONVS},
    **{(conv, bn, nn.ReLU): _with_torch_batchnorm(fuse_conv_bn_relu) for conv, bn in _CONVS},
    (nn.Linear, BatchNorm1d): _with_torch_batchnorm(fuse_linear_bn),
}
