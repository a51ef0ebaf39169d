"""Probes: hooks that record what layers see (always removed), and side-effect-free looks.

Every probe is a context manager: hooks exist only inside the ``with`` block and are
removed on the way out, also when the block raises, so a model leaves an experiment as
it came in::

    convs = layers_of_type(model, nn.Conv2d)
    with capture(convs, what="input", reduce=lambda t: t.mean().item()) as seen:
        model(x)
    seen["conv1"]  # one value per forward call of conv1

``what`` picks the tensor: ``"input"`` (the layer's first positional input),
``"output"``, or ``"grad_output"`` (the gradient of the loss with respect to the
layer's output, recorded during ``backward`` for outputs computed inside the block). ``reduce`` turns each tensor into what is
kept (a statistic, a histogram); the default keeps a detached copy.

:func:`probe_copy` looks at a train-mode copy of a model (BN uses the probe batch's
statistics, as in training, and the model's running statistics stay untouched), and
:func:`batch_stats_accuracy` predicts with such a copy;
:func:`loss_at` evaluates a model functionally at other parameters (the landscape and
gradient-shift measures), leaving the model as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

__all__ = [
    "batch_stats_accuracy",
    "capture",
    "detached_state",
    "layers_of_type",
    "loss_and_grad",
    "loss_at",
    "probe_copy",
]

What = Literal["input", "output", "grad_output"]


def layers_of_type(model: nn.Module, *types: type[nn.Module]) -> dict[str, nn.Module]:
    """The submodules of ``model`` that are instances of ``types``, by qualified name.

    Raises:
        ValueError: no submodule matches (the message lists the types asked for).
    """
    if not types:
        raise ValueError("layers_of_type: give at least one layer type")
    found = {name: m for name, m in model.named_modules() if name and isinstance(m, types)}
    if not found:
        wanted = ", ".join(t.__name__ for t in types)
        raise ValueError(f"{type(model).__name__} has no layer of type {wanted}")
    return found


def _detached(t: Tensor) -> Tensor:
    return t.detach().clone()


@contextmanager
def capture(
    layers: Mapping[str, nn.Module],
    *,
    what: What = "output",
    reduce: Callable[[Tensor], Any] | None = None,
) -> Iterator[dict[str, list[Any]]]:
    """Record ``reduce(tensor)`` for each call of each layer while the block runs.

    Args:
        layers: name -> module (``layers_of_type`` or a dict of your own).
        what: ``"input"``, ``"output"`` or ``"grad_output"``.
        reduce: tensor -> recorded value; default: a detached copy.

    Yields:
        name -> list of recorded values, in call order (filled as the model runs).

    Raises:
        ValueError: an unknown ``what``, or an empty ``layers``.
    """
    if what not in ("input", "output", "grad_output"):
        raise ValueError(f"what must be 'input', 'output' or 'grad_output', got {what!r}")
    if not layers:
        raise ValueError("capture: no layers to probe")
    keep = reduce or _detached
    records: dict[str, list[Any]] = {name: [] for name in layers}
    handles: list[RemovableHandle] = []

    def forward_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            tensor = inputs[0] if what == "input" else output
            if isinstance(tensor, Tensor):
                records[name].append(keep(tensor.detach()))

        return hook

    def grad_hook(name: str) -> Callable[..., None]:
        # A hook on the output tensor, set in a forward hook: unlike a module backward
        # hook it needs no input that requires grad and tolerates in-place layers after.
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, Tensor) and output.requires_grad:
                output.register_hook(lambda g: records[name].append(keep(g.detach())))

        return hook

    try:
        for name, module in layers.items():
            hook = grad_hook(name) if what == "grad_output" else forward_hook(name)
            handles.append(module.register_forward_hook(hook))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def probe_copy(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str],
    *,
    what: What = "input",
    reduce: Callable[[Tensor], Any] | None = None,
) -> dict[str, Any]:
    """What the named layers see for batch ``x`` in a train-mode copy of ``model``.

    The copy runs without gradients; the model itself (weights, BN running statistics,
    mode) is left as it was.

    Args:
        model: the network.
        x: the probe batch.
        layers: qualified names of the layers to record.
        what, reduce: as for :func:`capture` (``"grad_output"`` records nothing here).

    Returns:
        name -> the recorded value of the layer's first call.
    """
    probe = copy.deepcopy(model).train()
    modules = dict(probe.named_modules())
    with (
        torch.no_grad(),
        capture({n: modules[n] for n in layers}, what=what, reduce=reduce) as seen,
    ):
        probe(x)
    return {n: seen[n][0] for n in layers}


def detached_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(parameters, buffers)`` of ``model`` by name: detached views, copied buffers."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    return params, buffers


Tensors = Mapping[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def loss_at(
    model: nn.Module, params: Tensors, buffers: Tensors, x: Tensor, y: Tensor, loss_fn: LossFn
) -> Tensor:
    """The loss of ``model`` with ``params`` and copies of ``buffers`` (functional call)."""
    # Fresh buffer copies each call: train-mode BN updates them in place.
    state = {**params, **{n: b.clone() for n, b in buffers.items()}}
    return loss_fn(functional_call(model, state, (x,)), y)


def loss_and_grad(
    model: nn.Module, params: Tensors, buffers: Tensors, x: Tensor, y: Tensor, loss_fn: LossFn
) -> tuple[float, list[Tensor]]:
    """:func:`loss_at` and its gradient with respect to every parameter, in order."""
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    loss = loss_at(model, leaves, buffers, x, y, loss_fn)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return float(loss.detach()), [g.detach() for g in grads]


def batch_stats_accuracy(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Accuracy when every BN layer normalizes with each batch's own statistics.

    The model is copied and put in train mode (BN uses batch statistics; the copy's
    running statistics change, the model's do not), without gradients.

    Args:
        model: a classifier.
        loader: ``(x, y)`` batches (a ``DeviceLoader``); each batch is normalized alone.
    """
    probe = copy.deepcopy(model).train()
    correct = samples = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (probe(x).argmax(1) == y).sum().item()
            samples += y.shape[0]
    return correct / max(samples, 1)
