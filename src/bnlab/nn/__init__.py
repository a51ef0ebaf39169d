"""Normalization layers: drop-in twins of their ``torch.nn`` counterparts."""

from bnlab.nn.batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
)
from bnlab.nn.fold import FoldResult, fold_batchnorm
from bnlab.nn.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, freeze_batchnorm
from bnlab.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from bnlab.nn.groupnorm import GroupNorm
from bnlab.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from bnlab.nn.interop import FUSER_METHOD_MAPPING, as_torch_batchnorm
from bnlab.nn.layernorm import LayerNorm
from bnlab.nn.pool import AvgPool2d
from bnlab.nn.precise_bn import RecalibrationReport, recalibrate_batchnorm
from bnlab.nn.registry import (
    available_norm_layers,
    available_norms,
    convert_norm,
    create_norm,
    get_norm_layer,
    norm_implementations,
    resolve_norm,
)
from bnlab.nn.renorm import (
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    renorm_clipping,
    set_renorm_clipping,
)
from bnlab.nn.sync import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "FUSER_METHOD_MAPPING",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "FoldResult",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "RecalibrationReport",
    "SyncBatchNorm",
    "as_torch_batchnorm",
    "available_norm_layers",
    "available_norms",
    "convert_norm",
    "convert_sync_batchnorm",
    "create_norm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "get_norm_layer",
    "norm_implementations",
    "recalibrate_batchnorm",
    "renorm_clipping",
    "resolve_norm",
    "set_renorm_clipping",
]
