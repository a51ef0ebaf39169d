"""The models' norm slot over the one norm registry: names, layer classes, slot policy."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import bnlab.nn
import bnlab.textbook
from bnlab import models
from bnlab.models import norms

# make_norm(name, C, kind) for every registry name: the classes the models held before
# the registries became one (so that training numbers stay the same).
SLOT_CLASSES = {
    ("textbook", "2d"): bnlab.textbook.BatchNorm,
    ("textbook", "1d"): bnlab.textbook.BatchNorm,
    ("bnlab", "2d"): bnlab.nn.BatchNorm2d,
    ("bnlab", "1d"): bnlab.nn.BatchNorm1d,
    ("torch", "2d"): nn.BatchNorm2d,
    ("torch", "1d"): nn.BatchNorm1d,
    ("batchnorm", "2d"): bnlab.nn.BatchNorm2d,
    ("batchnorm", "1d"): bnlab.nn.BatchNorm1d,
    ("layernorm", "2d"): bnlab.nn.GroupNorm,
    ("layernorm", "1d"): bnlab.nn.LayerNorm,
    ("groupnorm", "2d"): bnlab.nn.GroupNorm,
    ("groupnorm", "1d"): bnlab.nn.GroupNorm,
    ("instancenorm", "2d"): bnlab.nn.InstanceNorm2d,
    ("instancenorm", "1d"): type(None),
    ("frozen", "2d"): bnlab.nn.FrozenBatchNorm2d,
    ("frozen", "1d"): bnlab.nn.FrozenBatchNorm1d,
    ("batchrenorm", "2d"): bnlab.nn.BatchRenorm2d,
    ("batchrenorm", "1d"): bnlab.nn.BatchRenorm1d,
    ("ghost", "2d"): bnlab.nn.GhostBatchNorm2d,
    ("ghost", "1d"): bnlab.nn.GhostBatchNorm1d,
    ("sync", "2d"): bnlab.nn.SyncBatchNorm,
    ("sync", "1d"): bnlab.nn.SyncBatchNorm,
    ("none", "2d"): type(None),
    ("none", "1d"): type(None),
}


@pytest.mark.parametrize(("name", "kind"), list(SLOT_CLASSES))
def test_slot_builds_the_same_class_as_before(name: str, kind: str) -> None:
    assert type(models.make_norm(name, 12, kind)) is SLOT_CLASSES[(name, kind)]


def test_every_slot_name_has_a_class() -> None:
    assert {name for name, _ in SLOT_CLASSES} == set(models.available_norms())


def test_slot_names_are_the_registry_names() -> None:
    assert models.available_norms() == bnlab.nn.available_norms()
    assert models.available_norms()[:5] == ("none", "textbook", "bnlab", "torch", "batchnorm")


def test_slot_policy_options() -> None:
    assert models.make_norm("ghost", 8).virtual_batch_size == 32
    assert models.make_norm("instancenorm", 8).affine
    assert models.make_norm("groupnorm", 64).num_groups == 32
    assert models.make_norm("textbook", 5, "1d").num_dims == 2
    assert models.make_norm("textbook", 5, "2d").num_dims == 4


def test_batchnorm_is_bnlab_in_every_model() -> None:
    torch.manual_seed(0)
    a = models.create("lenet", norm="batchnorm")
    torch.manual_seed(0)
    b = models.create("lenet", norm="bnlab")
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("alias", ["bn", "BN", "BatchNorm2d", "gn", "Torch", "batch_norm"])
def test_slot_takes_canonical_names_only(alias: str) -> None:
    # The registry forgives these spellings; a model's config names a layer one way.
    bnlab.nn.resolve_norm(alias)
    expected = f"unknown norm {alias!r}; choose one of: " + ", ".join(models.available_norms())
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        models.make_norm(alias, 4)
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        models.create("mlp", norm=alias)


def test_one_message_for_models_and_registry() -> None:
    with pytest.raises(ValueError, match=r"^unknown norm 'batchnrom'") as from_models:
        models.check_norm("batchnrom")
    with pytest.raises(ValueError, match=r"^unknown norm 'batchnrom'") as from_registry:
        bnlab.nn.create_norm("batchnrom", 4)
    assert str(from_models.value) == str(from_registry.value)


def test_models_only_names_join_the_list_and_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norms, "_FACTORIES", dict(norms._FACTORIES))
    models.register_norm("identity", lambda n, k: nn.Identity())
    assert models.available_norms() == (*bnlab.nn.available_norms(), "identity")
    assert "identity" not in bnlab.nn.available_norms()
    with pytest.raises(ValueError, match=r"choose one of: none, .*, sync, identity$"):
        models.check_norm("identiy")
    assert isinstance(models.make_norm("identity", 3), nn.Identity)
    models.register_norm("identity", lambda n, k: None, overwrite=True)
    assert models.make_norm("identity", 3) is None


def test_register_norm_cannot_replace_a_registry_name() -> None:
    with pytest.raises(
        ValueError,
        match=r"^norm 'groupnorm' belongs to the norm registry; replace it there "
        r"\(bnlab\.nn\.registry\.register_norm_layer\) or choose another name$",
    ):
        models.register_norm("groupnorm", lambda n, k: nn.Identity(), overwrite=True)
