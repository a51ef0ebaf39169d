"""Options of a model's normalization layers, set after the model is built.

The models take a norm by name (``models.create("lenet", norm="batchrenorm")``) and build
their layers with the registry's defaults. ``NormOptions`` changes those defaults on a
built model, the way ``bnlab train`` (``--bn-momentum``, ``--bn-eps``, ``--r-max``,
``--d-max``, ``--renorm-warmup``, ``--virtual-batch-size``) and ``bnlab.api.train`` do:

* ``momentum``: PyTorch's weight of the new batch in the running statistics, on every
  norm layer that keeps them (batch norm of every implementation, renorm, ghost);
* ``eps``: on every norm layer;
* ``r_max`` / ``d_max``: Batch Renorm's clipping bounds (Ioffe 2017, arXiv 1702.03275);
  with ``renorm_warmup`` they are the bounds the paper's warm-up reaches
  (``bnlab.nn.renorm_clipping``: batch norm first, then a linear ramp), its step counts
  scaled so that ``r_max`` is reached at that fraction of the run;
* ``virtual_batch_size``: ghost batch norm's samples per virtual batch (Hoffer et al.
  2017, arXiv 1705.08741).

An option that finds no layer to act on (``eps`` on a model without norms, ``r_max``
without a renorm layer) raises ``ValueError``: a setting that changes nothing is a
mistake worth a message.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

import bnlab.nn
from bnlab.functional.batch_renorm import RENORM_R_MAX_STEPS
from bnlab.models import is_norm_layer

__all__ = ["NormOptions"]

_RENORM = (bnlab.nn.BatchRenorm1d, bnlab.nn.BatchRenorm2d, bnlab.nn.BatchRenorm3d)
_GHOST = (bnlab.nn.GhostBatchNorm1d, bnlab.nn.GhostBatchNorm2d, bnlab.nn.GhostBatchNorm3d)
# Batch renorm's final bounds without --r-max/--d-max (the layer's and the paper's).
_R_MAX_FINAL, _D_MAX_FINAL = 3.0, 5.0


def _number(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(
            f"NormOptions: {name} must be a number, got {value!r} of type {type(value).__name__}"
        )
    if math.isnan(value):
        raise ValueError(f"NormOptions: {name} must be a number, got {value}")
    return float(value)


@dataclass(frozen=True)
class NormOptions:
    """Settings of the norm layers of a built model; None leaves the layer's default.

    Args:
        momentum: weight of the new batch in the running statistics, in [0, 1].
        eps: added to the variance, > 0 and finite.
        r_max: Batch Renorm's bound on r, >= 1 (``math.inf``: unclipped).
        d_max: Batch Renorm's bound on d, >= 0.
        renorm_warmup: fraction of the run, in (0, 1], at which the warm-up reaches
            ``r_max`` (``d_max`` a little earlier, as in the paper: 25k vs 40k steps).
        virtual_batch_size: ghost batch norm's samples per virtual batch, >= 1.

    Raises:
        TypeError, ValueError: a value of the wrong type or out of range.
    """

    momentum: float | None = None
    eps: float | None = None
    r_max: float | None = None
    d_max: float | None = None
    renorm_warmup: float | None = None
    virtual_batch_size: int | None = None

    def __post_init__(self) -> None:
        checks: dict[str, tuple[Callable[[float], bool], str]] = {
            "momentum": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            "eps": (lambda v: 0.0 < v < math.inf, "a finite number > 0"),
            "r_max": (lambda v: v >= 1.0, ">= 1"),
            "d_max": (lambda v: v >= 0.0, ">= 0"),
            "renorm_warmup": (lambda v: 0.0 < v <= 1.0, "in (0, 1] (a fraction of the run)"),
        }
        for name, (ok, expected) in checks.items():
            value = getattr(self, name)
            if value is None:
                continue
            value = _number(name, value)
            if not ok(value):
                raise ValueError(f"NormOptions: {name} must be {expected}, got {value}")
            object.__setattr__(self, name, value)
        vbs = self.virtual_batch_size
        if vbs is not None:
            if not isinstance(vbs, int) or isinstance(vbs, bool):
                raise TypeError(
                    f"NormOptions: virtual_batch_size must be an int, got {vbs!r} of type "
                    f"{type(vbs).__name__}"
                )
            if vbs < 1:
                raise ValueError(f"NormOptions: virtual_batch_size must be >= 1, got {vbs}")

    def to_dict(self) -> dict[str, Any]:
        """The options that are set (JSON-ready); empty when all are defaults."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> NormOptions:
        """Rebuild from ``to_dict()`` output (None or ``{}``: no options)."""
        return cls(**(data or {}))

    def apply(self, model: nn.Module, norm: str = "") -> None:
        """Set the options on the norm layers of ``model`` (in place).

        Args:
            model: the built model.
            norm: the norm's name, for the messages.

        Raises:
            ValueError: an option that no layer of the model takes.
        """
        layers = [m for m in model.modules() if is_norm_layer(m)]
        renorms = [m for m in model.modules() if isinstance(m, _RENORM)]
        ghosts = [m for m in model.modules() if isinstance(m, _GHOST)]
        which = f" (norm {norm!r})" if norm else ""

        def targets(option: str, found: list[nn.Module], what: str) -> list[nn.Module]:
            if not found:
                raise ValueError(
                    f"{option}: the model has no {what}{which}; it would change nothing"
                )
            return found

        if self.momentum is not None:
            found = [m for m in layers if getattr(m, "momentum", None) is not None]
            for m in targets("momentum", found, "norm layer with running statistics"):
                m.momentum = self.momentum
        if self.eps is not None:
            found = [m for m in layers if hasattr(m, "eps")]
            for m in targets("eps", found, "norm layer"):
                m.eps = self.eps
        for option in ("r_max", "d_max", "renorm_warmup"):
            if getattr(self, option) is not None:
                targets(option, renorms, "batch renorm layer (--norm batchrenorm)")
        for m in renorms:
            if self.r_max is not None:
                m.r_max = self.r_max
            if self.d_max is not None:
                m.d_max = self.d_max
        if self.virtual_batch_size is not None:
            for m in targets("virtual_batch_size", ghosts, "ghost batch norm layer (--norm ghost)"):
                m.virtual_batch_size = self.virtual_batch_size

    def warmup(self, model: nn.Module, total_steps: int) -> Callable[[int], None] | None:
        """Batch Renorm's warm-up over a run of ``total_steps`` optimizer steps.

        Returns ``at(done)``, which sets the bounds of the step that follows ``done``
        optimizer steps: pass it to ``fit`` as ``on_start`` (0 on a fresh start, the
        resumed checkpoint's step on resume, so that a resumed run is exact) and call it
        with ``info.step`` from ``on_step``. None without ``renorm_warmup``.
        """
        if self.renorm_warmup is None:
            return None
        scale = max(self.renorm_warmup * total_steps / RENORM_R_MAX_STEPS, 1e-9)
        r_final = self.r_max if self.r_max is not None else _R_MAX_FINAL
        d_final = self.d_max if self.d_max is not None else _D_MAX_FINAL

        def at(done: int) -> None:
            bounds = bnlab.nn.renorm_clipping(
                done, step_scale=scale, r_max_final=r_final, d_max_final=d_final
            )
            bnlab.nn.set_renorm_clipping(model, *bounds)

        return at
