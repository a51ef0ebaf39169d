"""``torch.autograd.Function`` bindings of the functional core (closed-form backwards)."""

from bnlab.autograd.batch_norm import BatchNormFunction, batch_norm

__all__ = ["BatchNormFunction", "batch_norm"]
