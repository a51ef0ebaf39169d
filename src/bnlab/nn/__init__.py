"""Normalization layers: drop-in twins of their ``torch.nn`` counterparts."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.precise_bn import RecalibrationReport, recalibrate_batchnorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "RecalibrationReport",
    "recalibrate_batchnorm",
]
