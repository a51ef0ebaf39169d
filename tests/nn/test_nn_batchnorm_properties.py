"""Hypothesis (float64): a module is the functional core plus buffer bookkeeping.

Over random ranks, options and train/eval sequences, ``module(x)`` equals
``bnlab.functional.batch_norm`` called with the module's parameters and buffers, and
the buffers afterwards equal the statistics the function returned.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import bnlab.functional
import bnlab.nn

CLASS_OF_RANK = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


@st.composite
def configs(draw):
    rank = draw(st.integers(2, 5))
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(rank - 2))
    n = draw(st.integers(2 if math.prod(spatial) == 1 else 1, 4))
    c = draw(st.integers(1, 3))
    kwargs = {
        "eps": draw(st.sampled_from([1e-5, 1e-2, 1.0])),
        "momentum": draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
        "affine": draw(st.booleans()),
        "track_running_stats": draw(st.booleans()),
    }
    modes = draw(st.lists(st.booleans(), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**31 - 1))
    return CLASS_OF_RANK[rank], (n, c, *spatial), kwargs, modes, seed


@given(config=configs())
def test_module_equals_functional(config) -> None:
    cls, shape, kwargs, modes, seed = config
    gen = torch.Generator().manual_seed(seed)
    m = getattr(bnlab.nn, cls)(shape[1], dtype=torch.float64, **kwargs)
    if m.affine:
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5, generator=gen)
            m.bias.normal_(generator=gen)
    for training in modes:
        m.train(training)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 - 1
        buffers = {k: v.clone() for k, v in m.named_buffers()}
        out = bnlab.functional.batch_norm(
            x,
            buffers.get("running_mean"),
            buffers.get("running_var"),
            m.weight,
            m.bias,
            training=training or not m.track_running_stats,
            momentum=m.momentum,
            eps=m.eps,
            num_batches_tracked=buffers.get("num_batches_tracked"),
        )
        y = m(x)
        torch.testing.assert_close(y, out.output, rtol=1e-12, atol=1e-12)
        if m.track_running_stats:
            torch.testing.assert_close(m.running_mean, out.running_mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m.running_var, out.running_var, rtol=1e-12, atol=1e-12)
            assert int(m.num_batches_tracked) == int(out.num_batches_tracked)
        else:
            assert m.running_mean is None


@given(config=configs())
def test_num_batches_tracked_counts_training_steps(config) -> None:
    cls, shape, kwargs, modes, seed = config
    kwargs = {**kwargs, "track_running_stats": True}
    m = getattr(bnlab.nn, cls)(shape[1], dtype=torch.float64, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for training in modes:
        m.train(training)
        m(torch.randn(shape, generator=gen, dtype=torch.float64))
    assert int(m.num_batches_tracked) == sum(modes)
