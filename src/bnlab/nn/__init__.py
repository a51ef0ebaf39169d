"""Normalization layers: drop-in twins of their ``torch.nn`` counterparts."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.fold import FoldResult, fold_batchnorm
from bnlab.nn.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, freeze_batchnorm
from bnlab.nn.precise_bn import RecalibrationReport, recalibrate_batchnorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FoldResult",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "RecalibrationReport",
    "fold_batchnorm",
    "freeze_batchnorm",
    "recalibrate_batchnorm",
]
