"""``_NormBase``: the batch-norm family's constructor checks, on top of torch's own base.

bnlab's batch norms *are* torch's: ``_NormBase`` subclasses
``torch.nn.modules.batchnorm._NormBase``, so parameters, buffers (``None`` when
statistics are not tracked), ``reset_*`` methods, ``extra_repr``, the version-1
checkpoint upgrade and the ``state_dict`` format are torch's own code, and every
``isinstance`` test that torch, timm or fvcore make finds bnlab's layers. What bnlab
adds here is the constructor's checks (typed errors that show the received value);
the forward passes live in the subclasses. Conventions are documented once, in
``bnlab.functional.batch_norm``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _NormBase as _TorchNormBase
from torch.nn.modules.lazy import LazyModuleMixin

from bnlab.functional.batch_norm import check_eps, check_momentum

__all__ = ["_NormBase", "check_norm_arguments", "check_num_features", "non_tensor_call"]


def check_num_features(num_features: object, name: str) -> int:
    """Return ``num_features`` if it is an int > 0, else raise with the received value."""
    if not isinstance(num_features, int) or isinstance(num_features, bool):
        raise TypeError(
            f"{name}: num_features must be an int (the number of channels), "
            f"got {num_features!r} of type {type(num_features).__name__}"
        )
    if num_features <= 0:
        raise ValueError(
            f"{name}: num_features must be > 0 (the number of channels), got {num_features}"
        )
    return num_features


def check_norm_arguments(
    name: str, num_features: object, eps: object, momentum: object, *, lazy: bool = False
) -> None:
    """The constructor checks of every ``_NormBase``: channels (unless ``lazy``: torch's
    lazy modules pass 0 until their first input), ``eps``, ``momentum``."""
    if not lazy:
        check_num_features(num_features, name)
    check_eps(eps, name)
    check_momentum(momentum, name)


def torch_twin(module: nn.Module) -> nn.Module:
    """The same layer as an instance of its ``torch.nn`` class, sharing every parameter,
    buffer and setting (for ``torch.jit.script``, which cannot compile bnlab's forward:
    it compiles torch's, the same map without bnlab's kernels)."""
    name = type(module).__name__
    twin_class = next(
        c
        for c in type(module).__mro__
        if c.__module__.startswith("torch.nn") and c.__name__ == name
    )
    twin = twin_class.__new__(twin_class)
    twin.__dict__.update(module.__dict__)  # the same parameter and buffer dicts
    return twin


def non_tensor_call(module: nn.Module, x: object) -> Any:
    """``module(x)`` for an ``x`` that is not a tensor: a ``torch.fx`` node, or TypeError.

    ``torch.fx.symbolic_trace`` records ``torch.nn``'s layers as single ``call_module``
    nodes (leaves) but traces into every other module, and a bnlab forward (an
    ``autograd.Function``, shape checks) cannot be traced. Given an ``fx.Proxy``, this
    records the layer as one ``call_module`` node, as fx does for the torch twin, so
    traced graphs, fx-based fusion and quantization see the layer itself.

    Raises:
        TypeError: ``x`` is neither a tensor nor an ``fx.Proxy``.
    """
    if isinstance(x, fx.Proxy):
        tracer = x.tracer
        return tracer.create_proxy("call_module", tracer.path_of_module(module), (x,), {})
    raise TypeError(
        f"{type(module).__name__}: expected a torch.Tensor input, got {type(x).__name__}"
    )


class _NormBase(_TorchNormBase):
    """Common base of bnlab's batch norms: torch's ``_NormBase`` with checked arguments.

    Args:
        num_features: number of channels ``C`` (dim 1 of the input).
        eps: added to the variance, > 0.
        momentum: weight of the new batch in the running statistics, in [0, 1], or None
            for a cumulative average.
        affine: learn a per-channel scale (``weight``, gamma) and shift (``bias``, beta).
        track_running_stats: keep ``running_mean``/``running_var``/``num_batches_tracked``
            buffers and normalize with them in eval mode; when False the buffers are
            ``None`` and batch statistics are used in both modes.
        device, dtype: where and in which dtype to create parameters and buffers.
        bias: with ``affine``, also learn the shift (keyword-only, as in torch 2.13).

    Raises:
        TypeError, ValueError: a bad ``num_features``, ``eps`` or ``momentum``, with the
            received value.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        lazy = isinstance(self, LazyModuleMixin)
        check_norm_arguments(type(self).__name__, num_features, eps, momentum, lazy=lazy)
        # Keywords from device on: torch.nn.SyncBatchNorm, next in SyncBatchNorm's MRO,
        # takes process_group in that position.
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
