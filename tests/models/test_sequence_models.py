"""The row-reading networks (``bnlab.models.sequence``): logits and gradients, the
statistics of each sequence norm, per-step BN against its BatchNorm1d twin, the GRU's
initial gammas, the layers the registry builds, batch of one, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.models.sequence import SequenceNorm, StepBatchNorm, build_sequence_model


@pytest.mark.parametrize("arch", ["gru", "transformer"])
@pytest.mark.parametrize("norm", ["none", "bn", "ln"])
def test_networks_give_logits_and_every_parameter_a_gradient(arch: str, norm: str) -> None:
    torch.manual_seed(0)
    model = build_sequence_model(arch, norm, hidden=8, d_model=8, layers=1)
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name


def test_sequence_norm_statistics() -> None:
    x = 3.0 + 2.0 * torch.randn(6, 5, 4, dtype=torch.float64)
    bn = SequenceNorm("bn", 4, 5).double().train()(x)  # over batch and time, per feature
    assert torch.allclose(bn.mean(dim=(0, 1)), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    step = SequenceNorm("bn-step", 4, 5).double().train()(x)  # over the batch, per step
    assert torch.allclose(step.mean(dim=0), torch.zeros(5, 4, dtype=torch.float64), atol=1e-12)
    ln = SequenceNorm("ln", 4, 5).double()(x)  # over the features of each (example, step)
    assert torch.allclose(ln.mean(dim=2), torch.zeros(6, 5, dtype=torch.float64), atol=1e-12)
    # Exact: nn.Identity returns its input tensor itself.
    assert torch.equal(SequenceNorm("none", 4, 5)(x), x)


@pytest.mark.parametrize(
    ("kind", "layer", "channels"),
    [
        ("none", nn.Identity, None),
        ("ln", nn.LayerNorm, 4),
        ("bn", nn.BatchNorm1d, 4),
        ("bn-step", StepBatchNorm, 20),
    ],
)
def test_the_registry_builds_the_torch_layers(kind: str, layer: type, channels) -> None:
    """The numbers of ``bnlab lab sequence`` are measured with these layers."""
    norm = SequenceNorm(kind, 4, 5).layer
    assert type(norm) is layer
    if channels is not None:
        assert sum(p.numel() for p in norm.parameters()) == 2 * channels  # affine


def test_per_step_bn_cannot_train_at_batch_one_but_bn_over_time_can() -> None:
    gru = build_sequence_model("gru", "bn", hidden=8).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        gru(torch.randn(1, 1, 28, 28))
    transformer = build_sequence_model("transformer", "bn", d_model=8, layers=1).train()
    assert transformer(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown sequence norm 'gn'; choose one of: none, ln"):
        SequenceNorm("gn", 4, 5)
    with pytest.raises(ValueError, match="unknown sequence network 'lstm'; choose one of: gru"):
        build_sequence_model("lstm", "none")
    with pytest.raises(ValueError, match="unknown norm 'gn'; choose one of: none, bn, ln"):
        build_sequence_model("gru", "gn")
    with pytest.raises(ValueError, match=r"expected images \(N, 1, H, W\), got shape \(2, 28\)"):
        build_sequence_model("gru", "none")(torch.zeros(2, 28))


def test_step_batch_norm_is_batchnorm1d_over_step_features() -> None:
    """All steps at once, or one step at a time, equal BatchNorm1d(T * F): outputs,
    gradients and running statistics (each step's row of them)."""
    torch.manual_seed(0)
    x = 2.0 + 3.0 * torch.randn(8, 5, 4, dtype=torch.float64)
    twin = nn.BatchNorm1d(20).double()
    ours, stepwise = (
        StepBatchNorm(5, 4, weight=1.0).double(),
        StepBatchNorm(5, 4, weight=1.0).double(),
    )
    with torch.no_grad():
        for m in (twin, ours, stepwise):
            m.weight.copy_(torch.linspace(0.5, 1.5, 20).view_as(m.weight))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 20).view_as(m.bias))
    xa, xb, xc = (x.clone().requires_grad_() for _ in range(3))
    y_twin = twin(xa.reshape(8, 20)).reshape(8, 5, 4)
    y_ours = ours(xb)
    y_step = torch.stack([stepwise(xc[:, t], t) for t in range(5)], dim=1)
    g = torch.randn(8, 5, 4, dtype=torch.float64)
    for y in (y_twin, y_ours, y_step):
        (y * g).sum().backward()
    for y, xi, m in ((y_ours, xb, ours), (y_step, xc, stepwise)):
        assert torch.allclose(y, y_twin, atol=1e-12)
        assert torch.allclose(xi.grad, xa.grad, atol=1e-12)
        assert torch.allclose(m.weight.grad.view(-1), twin.weight.grad, atol=1e-12)
        assert torch.allclose(m.running_mean.view(-1), twin.running_mean, atol=1e-12)
        assert torch.allclose(m.running_var.view(-1), twin.running_var, atol=1e-12)
    ours.eval()
    twin.eval()
    assert torch.allclose(ours(x), twin(x.reshape(8, 20)).reshape(8, 5, 4), atol=1e-12)


def test_one_step_updates_only_its_row() -> None:
    norm = StepBatchNorm(3, 2).train()
    norm(torch.randn(6, 2) + 5.0, 1)
    assert torch.all(norm.running_mean[1] > 0.3)
    assert torch.all(norm.running_mean[[0, 2]] == 0)
    assert torch.all(norm.running_var[[0, 2]] == 1)


def test_gru_norms_start_at_cooijmans_gamma_for_bn_and_one_for_ln() -> None:
    bn = build_sequence_model("gru", "bn", hidden=8)
    for norm in (bn.norm_x.layer, bn.norm_h.layer):
        assert isinstance(norm, StepBatchNorm)
        assert torch.all(norm.weight == 0.1)
        assert norm.weight.shape == (28, 24)
    ln = build_sequence_model("gru", "ln", hidden=8)
    assert torch.all(ln.norm_h.layer.weight == 1.0)
    one = build_sequence_model("gru", "bn", hidden=8, norm_weight=1.0)
    assert torch.all(one.norm_x.layer.weight == 1.0)
    half = build_sequence_model("gru", "ln", hidden=8, norm_weight=0.5)
    assert torch.all(half.norm_x.layer.weight == 0.5)


def test_gru_eval_uses_per_step_running_statistics() -> None:
    """After training steps, evaluation is deterministic per example (no batch statistics)."""
    torch.manual_seed(0)
    gru = build_sequence_model("gru", "bn", hidden=8).train()
    for _ in range(3):
        gru(torch.randn(16, 1, 28, 28))
    gru.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(gru(x)[:1], gru(x[:1]), atol=1e-6)


def test_step_norm_errors() -> None:
    with pytest.raises(ValueError, match="steps and num_features must be >= 1, got 0 and 4"):
        StepBatchNorm(0, 4)
    with pytest.raises(ValueError, match="normalizes over time: call it without step"):
        SequenceNorm("bn", 4, 5)(torch.zeros(2, 4), 0)
