"""The row-reading networks (``bnlab.models.sequence``): logits and gradients, the
statistics of each sequence norm, the layers the registry builds, batch of one, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.models.sequence import SequenceNorm, build_sequence_model


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
        ("bn-step", nn.BatchNorm1d, 20),
    ],
)
def test_the_registry_builds_the_torch_layers_of_before(kind: str, layer: type, channels) -> None:
    """The numbers of ``bnlab lab sequence`` were measured with these torch.nn layers."""
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
