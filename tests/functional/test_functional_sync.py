"""bnlab.functional.sync: merging per-rank moments, and the global-sum backward.

The merge (Chan's parallel formula) must give the count, mean and M2 of the
concatenated data, also with empty parts and with large offsets; the backward pieces
with one rank's own sums must equal batch_norm_backward.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnlab.functional.batch_norm import batch_norm_backward, batch_norm_forward
from bnlab.functional.sync import (
    batch_norm_grad_input,
    local_grad_sums,
    local_moments,
    merge_moments,
    pack_moments,
    sync_batch_stats,
    unpack_moments,
)

F64 = torch.float64


def _parts(sizes, channels, loc, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, generator=gen, dtype=F64) * scale + loc for n in sizes]


def _moments_of(parts):
    table = torch.stack([local_moments(p).packed for p in parts])
    return merge_moments(*unpack_moments(table))


@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    loc=st.sampled_from([0.0, -3.0, 1e4, 1e8]),
    scale=st.sampled_from([1.0, 1e-3]),
    seed=st.integers(0, 2**16),
)
def test_merge_equals_direct_computation(sizes, loc, scale, seed):
    parts = _parts(sizes, 3, loc, scale, seed)
    merged = _moments_of(parts)
    x = torch.cat(parts)
    n = x.shape[0]
    assert int(merged.count) == n
    if n == 0:
        # Exact: empty parts are weighed 0, so nothing is added to the zeros.
        assert torch.equal(merged.mean, torch.zeros(3, dtype=F64))
        assert torch.equal(merged.m2, torch.zeros(3, dtype=F64))
        return
    # The direct two-pass reference, in float64 around the exact-ish mean.
    mean = x.mean(0)
    m2 = ((x - mean) ** 2).sum(0)
    torch.testing.assert_close(merged.mean, mean, rtol=1e-14, atol=1e-12 * scale)
    # float64 data at |loc| carries deviations only to ulp(loc) ~ 2.2e-16 * |loc|, so
    # M2 is known to about n * scale * ulp(loc) (1e-9 relative at 1e8 + 1e-3 * noise);
    # the one-pass sum of squares would be off by about loc**2 * 2.2e-16, 1e8 times more.
    atol = n * (1e-9 * scale**2 + 10 * scale * 2.2e-16 * abs(loc))
    torch.testing.assert_close(merged.m2, m2, rtol=1e-6, atol=atol)


@given(st.lists(st.integers(0, 5), min_size=2, max_size=4), st.permutations(range(4)))
def test_merge_is_independent_of_part_order(sizes, perm):
    parts = _parts(sizes, 2, 5.0, 1.0, 0)
    order = [i for i in perm if i < len(parts)]
    a = _moments_of(parts)
    b = _moments_of([parts[i] for i in order])
    assert int(a.count) == int(b.count)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(a.m2, b.m2, rtol=1e-12, atol=1e-12)


def test_merge_ignores_empty_parts_even_with_nan():
    counts = torch.tensor([0.0, 4.0, 0.0], dtype=F64)
    means = torch.tensor([[float("nan")], [2.0], [float("inf")]], dtype=F64)
    m2s = torch.tensor([[float("nan")], [3.0], [1.0]], dtype=F64)
    merged = merge_moments(counts, means, m2s)
    # Exact: counts 0 and 4 and the values 2.0 and 3.0 are small dyadic numbers, so every
    # product, sum and division of the merge is exact.
    assert float(merged.count) == 4.0
    assert merged.mean.tolist() == [2.0]
    assert merged.m2.tolist() == [3.0]


def test_merge_float32_large_offset_keeps_variance():
    # A float32 channel 1e4 + 1e-3 * noise split over ranks: the packed float64 means
    # keep the offset, so the merged variance is the noise's (the one-pass sum of
    # squares in float32 would return 0 or garbage).
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(64, 2, generator=gen, dtype=F64) * 1e-3 + 1e4).float()
    parts = [x[:10], x[10:10], x[10:40], x[40:]]
    merged = _moments_of(parts)
    var = (merged.m2 / merged.count).float()
    torch.testing.assert_close(var, x.double().var(0, unbiased=False).float(), rtol=1e-2, atol=0)


def test_local_moments_of_empty_slice():
    local = local_moments(torch.empty(0, 3, 4))
    assert local.packed.tolist() == [0.0] * 7
    assert local.packed.dtype == F64
    assert local.d.shape == (0, 3, 4)


def test_pack_unpack_round_trip():
    mean, m2 = torch.arange(3.0), torch.arange(3.0, 6.0)
    table = torch.stack([pack_moments(5, mean, m2), pack_moments(0, mean * 0, m2 * 0)])
    counts, means, m2s = unpack_moments(table)
    # Exact: packing copies (float32 -> float64 is exact), unpacking slices.
    assert counts.tolist() == [5.0, 0.0]
    assert torch.equal(means[0], mean.double())
    assert torch.equal(m2s[0], m2.double())


def test_unpack_error_message():
    with pytest.raises(ValueError, match="unpack_moments") as info:
        unpack_moments(torch.zeros(2, 4))
    assert str(info.value) == (
        "unpack_moments: expected a (K, 2 * C + 1) table of packed moments, got shape "
        "(2, 4); build each row with pack_moments"
    )


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 3, 2)])
@pytest.mark.parametrize("loc", [0.0, 1e4])
def test_one_rank_backward_equals_batch_norm_backward(shape, loc):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=F64) + loc
    g = torch.randn(shape, generator=gen, dtype=F64)
    w = torch.rand(3, generator=gen, dtype=F64) + 0.5
    local = local_moments(x)
    merged = merge_moments(*unpack_moments(local.packed.unsqueeze(0)))
    stats = sync_batch_stats(local, merged, 1e-5, F64)
    _, ref_stats = batch_norm_forward(x, w, None, 1e-5)
    torch.testing.assert_close(stats.var, ref_stats.var, rtol=1e-12, atol=1e-15)
    g_sum, gd_sum = local_grad_sums(g, x, stats)
    grad_x = batch_norm_grad_input(g, x, w, stats, g_sum, gd_sum, int(merged.count))
    ref_x, ref_w, ref_b = batch_norm_backward(g, x, w, ref_stats)
    torch.testing.assert_close(grad_x, ref_x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gd_sum * stats.inv_std, ref_w, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_sum, ref_b, rtol=1e-12, atol=1e-12)


def test_split_backward_sums_add_up():
    # The per-slice sums against the global statistics add up to the sums of the whole.
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9, 2, 3, generator=gen, dtype=F64) * 2 + 7
    g = torch.randn(9, 2, 3, generator=gen, dtype=F64)
    slices = [slice(0, 4), slice(4, 4), slice(4, 9)]
    locals_ = [local_moments(x[s]) for s in slices]
    merged = merge_moments(*unpack_moments(torch.stack([lo.packed for lo in locals_])))
    whole = local_grad_sums(g, x, sync_batch_stats(local_moments(x), merged, 1e-5, F64))
    parts = [
        local_grad_sums(g[s], x[s], sync_batch_stats(lo, merged, 1e-5, F64))
        for s, lo in zip(slices, locals_, strict=True)
    ]
    for i in range(2):
        torch.testing.assert_close(sum(p[i] for p in parts), whole[i], rtol=1e-12, atol=1e-12)
