"""Normalization layers: drop-in twins of their ``torch.nn`` counterparts."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
