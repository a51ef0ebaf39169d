"""The named d2l recipes: their numbers, and that they name registered models and norms."""

from __future__ import annotations

import pytest

from bnlab import models
from bnlab.train.presets import PRESETS, Preset, available_presets, get_preset


def test_d2l_numbers() -> None:
    # (model, norm, lr, epochs, batch, resize) as in the d2l sections' training cells.
    expected = {
        "d2l-lenet": ("lenet", "none", 0.9, 10, 256, None),
        "d2l-lenet-bn": ("lenet", "bnlab", 1.0, 10, 256, None),
        "d2l-resnet18": ("resnet18", "bnlab", 0.05, 10, 256, 96),
        "d2l-densenet": ("densenet", "bnlab", 0.1, 10, 256, 96),
    }
    assert available_presets() == tuple(expected)
    for name, values in expected.items():
        p = get_preset(name)
        assert (p.model, p.norm, p.lr, p.epochs, p.batch_size, p.resize) == values


@pytest.mark.parametrize("name", available_presets())
def test_presets_name_registered_models_and_norms(name: str) -> None:
    preset = PRESETS[name]
    assert isinstance(preset, Preset)
    assert preset.name == name
    assert preset.model in models.available()
    assert preset.norm in models.available_norms()
    assert preset.to_dict()["name"] == name
    assert preset.description


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown preset") as exc:
        get_preset("d2l-resnet")
    assert str(exc.value) == (
        "unknown preset 'd2l-resnet'; choose one of: "
        "d2l-lenet, d2l-lenet-bn, d2l-resnet18, d2l-densenet"
    )
