"""One step loop with hooks, for experiments that look inside training.

``fit`` trains by epochs and reports metrics; the lab's probing experiments need a
plainer loop they can watch at every step: draw a batch, forward, loss, backward,
update. :func:`run_steps` is that loop, once, with hooks at the three places an
experiment looks:

- ``on_batch(state)``: the batch is drawn, nothing computed yet (measure the model at
  the weights this step starts from, on this step's batch);
- ``on_backward(state)``: gradients are in ``.grad``, the update not yet taken;
- ``on_step(state)``: the update is taken (``state.loss`` holds the batch's loss).

``forward(model, x)`` replaces ``model(x)`` (to wrap it in a context, e.g. noise hooks).
:func:`every` turns a hook into one that runs every ``n`` steps, and :func:`cycle`
turns a re-iterable loader into endless batches, epoch after epoch.

The loop computes exactly what the hand-written loops it replaces computed, in the same
order, and draws no random numbers of its own: a run is as reproducible as its model,
its batches and its hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StepState", "cycle", "every", "run_steps"]


@dataclass
class StepState:
    """What the hooks of :func:`run_steps` see.

    Attributes:
        step: the 0-based index of this step.
        x, y: the step's batch.
        model, optimizer: as given to ``run_steps``.
        loss: the batch's loss (a tensor from ``on_backward`` on; ``on_step`` also has
            it as ``loss_value``); None in ``on_batch``.
        losses: the training losses of the finished steps (floats), this one included
            from ``on_step`` on.
    """

    step: int
    x: Tensor
    y: Tensor
    model: nn.Module
    optimizer: Any
    losses: list[float]
    loss: Tensor | None = None

    @property
    def done(self) -> int:
        """Steps finished after this one's update: ``step + 1``."""
        return self.step + 1

    @property
    def loss_value(self) -> float:
        """The batch's loss as a float (raises before the forward)."""
        if self.loss is None:
            raise RuntimeError(f"step {self.step}: no loss yet (the forward has not run)")
        return float(self.loss.detach())


Hook = Callable[[StepState], None]


def every(n: int, hook: Hook, *, last: int | None = None, after: bool = False) -> Hook:
    """``hook`` run only every ``n`` steps.

    Args:
        n: the period (> 0).
        hook: the hook to thin out.
        last: also run at this step index (e.g. ``steps - 1`` for a final probe).
        after: count finished steps (``state.done``) instead of the step index, so an
            ``on_step`` hook runs after steps n, 2n, ... have been taken.

    Raises:
        ValueError: ``n`` not > 0.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"every: n must be an int > 0, got {n!r}")

    def thinned(state: StepState) -> None:
        count = state.done if after else state.step
        if count % n == 0 or state.step == last:
            hook(state)

    return thinned


def cycle(loader: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches: ``iter(loader)`` again each time an epoch ends.

    A new epoch starts only when its first batch is asked for, so a ``DeviceLoader``
    draws its epochs' orders exactly as a ``for`` loop over epochs would.

    Raises:
        ValueError: an epoch yields no batch (it would loop forever).
    """
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"cycle: {type(loader).__name__} yielded no batch in an epoch")


def _call(hooks: Hook | Sequence[Hook] | None, state: StepState) -> None:
    if hooks is None:
        return
    if callable(hooks):
        hooks(state)
        return
    for hook in hooks:
        hook(state)


def run_steps(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    optimizer: Any,
    *,
    steps: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
    on_batch: Hook | Sequence[Hook] | None = None,
    on_backward: Hook | Sequence[Hook] | None = None,
    on_step: Hook | Sequence[Hook] | None = None,
    train_mode: bool = False,
) -> list[float]:
    """Take ``steps`` optimizer steps on batches drawn from ``batches``.

    Each step: draw ``(x, y)``; ``on_batch``; ``loss = loss_fn(forward(model, x), y)``;
    ``optimizer.zero_grad(set_to_none=True)``; ``loss.backward()``; ``on_backward``;
    ``optimizer.step()``; record ``float(loss)``; ``on_step``. A hook argument is one
    callable or a sequence of them (called in order).

    Args:
        model: the network (left in the mode it is in unless ``train_mode``).
        batches: an iterator of ``(x, y)`` (:func:`cycle` of a loader for several epochs);
            exactly ``steps`` batches are drawn from it.
        optimizer: a ``torch.optim`` optimizer over the model's parameters.
        steps: how many steps (>= 0).
        loss_fn: ``loss_fn(output, y)`` (default cross-entropy).
        forward: ``forward(model, x)`` instead of ``model(x)``.
        on_batch, on_backward, on_step: the hooks (see the module docstring).
        train_mode: call ``model.train()`` before every step.

    Returns:
        The training loss of every step, in order (floats).

    Raises:
        ValueError: ``steps`` is not an int >= 0.
        RuntimeError: ``batches`` ran out before ``steps`` (the message names the step).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"run_steps: steps must be an int >= 0, got {steps!r}")
    losses: list[float] = []
    for step in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            raise RuntimeError(
                f"run_steps: the batches ran out at step {step} of {steps}; pass cycle(loader)"
            ) from None
        state = StepState(step, x, y, model, optimizer, losses)
        _call(on_batch, state)
        if train_mode:
            model.train()
        output = model(x) if forward is None else forward(model, x)
        state.loss = loss_fn(output, y)
        optimizer.zero_grad(set_to_none=True)
        state.loss.backward()
        _call(on_backward, state)
        optimizer.step()
        losses.append(float(state.loss.detach()))
        _call(on_step, state)
    return losses
