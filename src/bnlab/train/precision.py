"""Mixed-precision training: autocast for the forward pass, loss scaling for float16.

``"32"`` trains in float32 as usual. ``"bf16"`` runs the forward pass under
``torch.autocast`` in bfloat16 (CPU and CUDA): bfloat16 has float32's exponent range, so
gradients need no scaling. ``"fp16"`` autocasts to float16, whose range ends at 65504
and whose smallest normal is 6e-5: small gradients underflow to zero, so the loss is
multiplied by a scale before ``backward`` and the gradients divided by it before the
update (``torch.amp.GradScaler``; a step whose gradients overflow is skipped and the
scale halved). Parameters, optimizer state and the loss stay float32 in every mode;
batch norm's statistics are computed in float32 under autocast (torch's autocast keeps
normalization layers in float32; bnlab's accumulate in float32 for half inputs).

Paper: "Mixed Precision Training", Micikevicius et al., arXiv:1710.03740.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "Precision"]

#: Precisions ``TrainConfig.precision`` accepts.
PRECISIONS: tuple[str, ...] = ("32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """The autocast context and the loss scaler of one run.

    Args:
        precision: one of ``PRECISIONS``.
        device: where the run trains (autocast is per device type).

    Raises:
        ValueError: an unknown ``precision``, or autocast not available on the device.
    """

    def __init__(self, precision: str, device: torch.device | str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(
                f"Precision: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        self.precision = precision
        self.device_type = torch.device(device).type
        if precision != "32" and not torch.amp.is_autocast_available(self.device_type):
            raise ValueError(
                f"Precision: autocast is not available on {self.device_type!r}; use precision '32'"
            )
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=precision == "fp16")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.precision == "32":
            yield
            return
        with torch.autocast(self.device_type, dtype=_DTYPES[self.precision]):
            yield

    def forward(self, net: nn.Module, x: Tensor) -> Tensor:
        """``net(x)`` under autocast; the logits come back in float32 for the loss."""
        if self.precision == "32":
            return net(x)
        with self.autocast():
            logits = net(x)
        return logits.float()

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``, of the scaled loss for float16."""
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The update: unscale the gradients, skip the step if they overflowed (fp16)."""
        if self.scaler.is_enabled():
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (empty unless fp16), for checkpoints."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler.is_enabled() and state:
            self.scaler.load_state_dict(state)
