"""The step loop: the same numbers as a hand-written loop, hooks in their places."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.data.loader import DeviceLoader
from bnlab.train.steps import StepState, cycle, every, run_steps


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )


def _loader(seed: int = 0) -> DeviceLoader:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 4, 4), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 3, (40,), generator=gen)
    return DeviceLoader(images, labels, 16, shuffle=True, seed=seed)


def test_same_numbers_as_the_hand_written_loop_over_epochs() -> None:
    steps = 7  # 3 batches an epoch (the last of 8): the loop crosses two epoch ends
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    expected, step = [], 0
    loader = _loader()
    while step < steps:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            expected.append(loss.item())
            step += 1
            if step >= steps:
                break
    twin = _net()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    got = run_steps(twin, cycle(_loader()), twin_opt, steps=steps)
    assert got == expected
    for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_hooks_run_in_their_places() -> None:
    model = _net()
    first = model[1].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen: list[tuple] = []

    def on_batch(s: StepState) -> None:
        seen.append(("batch", s.step, s.loss is None, first.grad is None, len(s.losses)))

    def on_backward(s: StepState) -> None:
        seen.append(("backward", s.step, s.loss is not None, first.grad is not None))
        s.before = first.detach().clone()  # type: ignore[attr-defined]

    def on_step(s: StepState) -> None:
        moved = not torch.equal(first, s.before)  # type: ignore[attr-defined]
        seen.append(("step", s.step, s.done, moved, s.losses[-1] == s.loss_value))

    losses = run_steps(
        model,
        cycle(_loader()),
        opt,
        steps=2,
        on_batch=on_batch,
        on_backward=on_backward,
        on_step=on_step,
    )
    assert len(losses) == 2
    assert seen == [
        ("batch", 0, True, True, 0),
        ("backward", 0, True, True),
        ("step", 0, 1, True, True),
        ("batch", 1, True, False, 1),  # the grad of step 0 is kept until zero_grad
        ("backward", 1, True, True),
        ("step", 1, 2, True, True),
    ]


def test_forward_loss_fn_train_mode_and_hook_lists() -> None:
    model = nn.Linear(3, 1)
    x, y = torch.ones(4, 3), torch.zeros(4)
    calls: list[str] = []
    model.eval()

    def forward(m: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        calls.append("train" if m.training else "eval")
        return m(inputs).squeeze(1)

    losses = run_steps(
        model,
        itertools.repeat((x, y)),
        torch.optim.SGD(model.parameters(), lr=0.0),
        steps=3,
        forward=forward,
        loss_fn=F.mse_loss,
        on_step=[lambda s: calls.append("a"), lambda s: calls.append("b")],
        train_mode=True,
    )
    assert calls == ["train", "a", "b"] * 3
    with torch.no_grad():
        expected = float(F.mse_loss(model(x).squeeze(1), y))
    assert losses == [pytest.approx(expected)] * 3


def test_every() -> None:
    seen: list[int] = []
    hook = every(3, lambda s: seen.append(s.step), last=7)
    after: list[int] = []
    hook_after = every(3, lambda s: after.append(s.done), after=True)
    for step in range(8):
        state = StepState(step, torch.zeros(1), torch.zeros(1), nn.Identity(), None, [])
        hook(state)
        hook_after(state)
    assert seen == [0, 3, 6, 7]
    assert after == [3, 6]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"every: n must be an int > 0, got {bad!r}"):
            every(bad, lambda s: None)  # type: ignore[arg-type]


def test_cycle_restarts_epochs_and_refuses_an_empty_loader() -> None:
    loader = _loader()
    one = list(itertools.islice(cycle(loader), 6))  # two epochs of 3 batches
    again = _loader()
    two = [b for _ in range(2) for b in again]
    for (a, b), (c, d) in zip(one, two, strict=True):
        assert torch.equal(a, c)
        assert torch.equal(b, d)
    with pytest.raises(ValueError, match="cycle: list yielded no batch in an epoch"):
        next(cycle([]))


def test_errors_and_zero_steps() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert run_steps(model, iter([]), opt, steps=0) == []
    with pytest.raises(ValueError, match="steps must be an int >= 0, got -1"):
        run_steps(model, iter([]), opt, steps=-1)
    batch = (torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"the batches ran out at step 1 of 3; pass cycle"):
        run_steps(model, iter([batch]), opt, steps=3)
    state = StepState(4, batch[0], batch[1], model, opt, [])
    with pytest.raises(RuntimeError, match="step 4: no loss yet"):
        _ = state.loss_value
