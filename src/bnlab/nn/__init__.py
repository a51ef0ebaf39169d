"""Normalization layers: drop-in twins of their ``torch.nn`` counterparts."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.fold import FoldResult, fold_batchnorm
from bnlab.nn.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, freeze_batchnorm
from bnlab.nn.groupnorm import GroupNorm
from bnlab.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from bnlab.nn.layernorm import LayerNorm
from bnlab.nn.precise_bn import RecalibrationReport, recalibrate_batchnorm
from bnlab.nn.registry import available_norm_layers, convert_norm, create_norm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FoldResult",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RecalibrationReport",
    "available_norm_layers",
    "convert_norm",
    "create_norm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "recalibrate_batchnorm",
]
