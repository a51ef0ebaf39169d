"""Find where NaN or inf first appears in a forward pass: hooks as a context manager.

``detect_anomalies(model)`` checks the input batch of ``model`` and the output of every
submodule as the forward pass runs; the first non-finite value raises
``NonFiniteActivationError`` naming the layer (its qualified name and class) and, when
the caller keeps ``where`` up to date, the epoch and step. A non-finite input batch is
named as such. The checks cost one ``isfinite().all()`` per module output and a host
sync each, so the mode is opt-in (``fit(..., detect_anomaly=True)``).

Forward hooks run when a module's forward returns, innermost first, so the first module
whose output holds a non-finite value is the one that produced it from finite inputs
(operations in a parent's own forward, a residual addition say, are blamed on the parent).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AnomalyWhere", "NonFiniteActivationError", "detect_anomalies"]


class NonFiniteActivationError(RuntimeError):
    """A forward pass produced NaN or inf.

    Attributes:
        layer: qualified name of the module (``""`` for the input batch).
        layer_type: class name of the module, or None for the input batch.
        epoch: 1-based epoch, or None when unknown.
        step: 1-based global step, or None when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        layer: str,
        layer_type: str | None,
        epoch: int | None,
        step: int | None,
    ) -> None:
        super().__init__(message)
        self.layer = layer
        self.layer_type = layer_type
        self.epoch = epoch
        self.step = step


@dataclass
class AnomalyWhere:
    """Where the run is; the caller updates ``epoch`` and ``step`` for the messages."""

    epoch: int | None = None
    step: int | None = None
    handles: list[Any] = field(default_factory=list, repr=False)

    def _at(self) -> str:
        parts = []
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.step is not None:
            parts.append(f"step {self.step}")
        return (" at " + " ".join(parts)) if parts else ""


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _non_finite(value: Any) -> str | None:
    """A description of the first non-finite tensor in ``value``, or None."""
    for t in _tensors(value):
        if (
            (t.is_floating_point() or t.is_complex())
            and t.numel()
            and not bool(torch.isfinite(t).all())
        ):
            nan = int(torch.isnan(t).sum())
            inf = int(torch.isinf(t).sum())
            return f"{nan} NaN and {inf} inf of {t.numel()} values, shape {tuple(t.shape)}"
    return None


@contextmanager
def detect_anomalies(model: nn.Module) -> Iterator[AnomalyWhere]:
    """Check ``model``'s input and every submodule's output for NaN/inf while inside.

    Args:
        model: the network; hooks go on it and on all its submodules, and are removed
            on exit (also when an error leaves the block).

    Yields:
        An ``AnomalyWhere`` whose ``epoch`` and ``step`` the caller may set, for the
        messages.

    Raises:
        NonFiniteActivationError: (from the forward pass) the input batch, or a layer's
            output, holds NaN or inf; the message names the layer and says where.
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"detect_anomalies: expected a torch.nn.Module, got {type(model).__name__}")
    where = AnomalyWhere()

    def check_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        found = _non_finite(args)
        if found is not None:
            raise NonFiniteActivationError(
                f"non-finite values in the input batch{where._at()} ({found}); check the "
                "data (a corrupted file, a division by zero in preprocessing)",
                layer="",
                layer_type=None,
                epoch=where.epoch,
                step=where.step,
            )

    def hook_for(name: str) -> Any:
        def check_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            found = _non_finite(output)
            if found is not None:
                kind = type(module).__name__
                raise NonFiniteActivationError(
                    f"non-finite values first appear in the output of layer {name!r} ({kind})"
                    f"{where._at()} ({found}); lower the learning rate, or check this "
                    "layer's weights and eps",
                    layer=name,
                    layer_type=kind,
                    epoch=where.epoch,
                    step=where.step,
                )

        return check_output

    where.handles.append(model.register_forward_pre_hook(check_input))
    for name, module in model.named_modules():
        where.handles.append(module.register_forward_hook(hook_for(name or type(model).__name__)))
    try:
        yield where
    finally:
        for handle in where.handles:
            handle.remove()
        where.handles.clear()
