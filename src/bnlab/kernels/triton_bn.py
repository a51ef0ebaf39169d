"""The BatchNorm fast path on CUDA: fused Triton kernels.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167.

Same numerics as the CPU kernels and ``bnlab.functional.moments``: each channel is
shifted by a pivot (its first element, ``x[0, c, 0]``) before summing, so a channel
``1e4 + 1e-3 * noise`` keeps its variance; the biased variance is the corrected two-pass
``sum(d**2) / n - (sum(d) / n)**2`` on ``d = x - pivot``. Accumulation is float32 (the
inputs are float16, bfloat16 or float32; float64 stays on the reference path), in
per-lane accumulators of a tile, so each lane adds only ``n / (tile * splits)`` values.

Layout: ``x`` contiguous ``(N, C, S)`` (``S`` = the product of the spatial dims, 1 for
``(N, C)`` inputs). Every kernel walks 3-D tiles ``[BN, BC, BS]`` of (sample, channel,
position): for ``S > 1`` a tile holds one channel (``BC = 1``) and ``BS`` contiguous
positions; for ``S == 1`` it holds ``BC`` contiguous channels. No per-element integer
division (it would cost more than the memory traffic on a GPU).

Kernels, with the full-size tensors each reads (r) and writes (w):

* training forward: ``_partial_sums`` (r x) writes per-(split, channel) partial sums; then
  ``_normalize`` (r x, w y) combines the partials of its channel, writes ``y`` and, in
  split 0, the statistics. 3 passes, the minimum without keeping ``x`` on chip.
* training backward: ``_partial_sums`` (r grad_y, x) partial ``sum(g)``, ``sum(g * d)``;
  then ``_grad_input`` (r grad_y, x; w grad_x) and, in split 0, ``grad_weight``,
  ``grad_bias``. 5 passes (3 when ``grad_x`` is not needed: the second kernel then
  reads nothing full-size).
* eval forward: ``_eval`` (r x, w y), 2 passes.

The reduction over a channel is split along ``N`` into ``SPLIT`` programs so that
``channel blocks * SPLIT`` fills the GPU (about 4 programs per multiprocessor); the
partial sums of all splits share the channel's pivot, so they add exactly. Small
inputs (at most :data:`FUSE_MAX_PER_PROGRAM` elements per channel block) take one split,
and the second kernel computes the sums itself: one launch per pass instead of two.

Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (the tests use this
where no GPU is present).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["DTYPES", "eval_forward", "plan", "train_backward", "train_forward"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TILE = 2048  # elements per tile: 16 per thread at 4 warps, four 16-byte loads
SPLIT_CHUNK = 64  # partial sums combined per step of the final loop
PROGRAMS_PER_SM = 4
# A channel block with at most this many elements is reduced by one program, which then
# normalizes it in the same launch (one launch instead of two; small inputs are bound
# by launch costs, not bandwidth).
FUSE_MAX_PER_PROGRAM = 1 << 15


# ---------------------------------------------------------------------------- kernels


@triton.jit
def _tile(n0, s0, c, n_end, C, S, BN: tl.constexpr, BS: tl.constexpr):
    """Offsets (int64) and mask of the tile at sample ``n0``, position ``s0``, channels ``c``."""
    n = n0 + tl.arange(0, BN)
    s = s0 + tl.arange(0, BS)
    off = (n.to(tl.int64)[:, None, None] * C + c[None, :, None]) * S + s[None, None, :]
    mask = (n < n_end)[:, None, None] & (c < C)[None, :, None] & (s < S)[None, None, :]
    return off, mask


@triton.jit
def _rows(split, rows_per_split, N):
    """The samples ``[n_start, n_end)`` of reduction split ``split``."""
    n_start = split * rows_per_split
    n_end = n_start + rows_per_split
    if n_end > N:
        n_end = N
    return n_start, n_end


@triton.jit
def _split_sums(part_ptr, c, C, SPLIT, CHUNK: tl.constexpr):
    """Sum over the splits of the two partial rows ``part[0|1, :, c]``."""
    first = tl.zeros([c.shape[0]], dtype=tl.float32)
    second = tl.zeros([c.shape[0]], dtype=tl.float32)
    for p0 in range(0, SPLIT, CHUNK):
        p = p0 + tl.arange(0, CHUNK)
        m = (p < SPLIT)[:, None] & (c < C)[None, :]
        idx = p[:, None] * C + c[None, :]
        first += tl.sum(tl.load(part_ptr + idx, mask=m, other=0.0), axis=0)
        second += tl.sum(tl.load(part_ptr + SPLIT * C + idx, mask=m, other=0.0), axis=0)
    return first, second


@triton.jit
def _per_channel(ptr, c, C, default, HAS: tl.constexpr):
    if HAS:
        return tl.load(ptr + c, mask=c < C, other=default).to(tl.float32)
    return tl.full([c.shape[0]], default, dtype=tl.float32)


@triton.jit
def _lerp_into(ptr, c, C, value, weight):
    """``ptr[c] = lerp(ptr[c], value, weight)`` as ``torch.lerp`` rounds it, in float32."""
    cm = c < C
    old = tl.load(ptr + c, mask=cm).to(tl.float32)
    diff = value - old
    new = tl.where(weight < 0.5, old + weight * diff, value - diff * (1.0 - weight))
    tl.store(ptr + c, new.to(ptr.dtype.element_ty), mask=cm)


@triton.jit
def _block(x_ptr, pivot_ptr, C, S, BC: tl.constexpr, GRAD: tl.constexpr):
    """The channels ``c`` of this program, their mask and their pivot: the channel's
    first element ``x[0, c, 0]`` in the forward, the pivot the forward saved (``GRAD``)."""
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    cm = c < C
    if GRAD:
        pivot = tl.load(pivot_ptr + c, mask=cm, other=0.0).to(tl.float32)
    else:
        pivot = tl.load(x_ptr + c.to(tl.int64) * S, mask=cm, other=0.0).to(tl.float32)
    return c, cm, pivot


@triton.jit
def _sums(
    g_ptr,
    x_ptr,
    c,
    pivot,
    n_start,
    n_end,
    C,
    S,
    GRAD: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
):
    """Per channel over samples ``[n_start, n_end)``, with ``d = x - pivot``: the
    forward's ``(sum(d), sum(d**2))``, or the backward's ``(sum(g), sum(g * d))``
    (``GRAD``)."""
    acc1 = tl.zeros([BN, c.shape[0], BS], dtype=tl.float32)
    acc2 = tl.zeros([BN, c.shape[0], BS], dtype=tl.float32)
    for n0 in range(n_start, n_end, BN):
        for s0 in range(0, S, BS):
            off, mask = _tile(n0, s0, c, n_end, C, S, BN, BS)
            v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, v - pivot[None, :, None], 0.0)
            if GRAD:
                g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
                acc1 += g
                acc2 += g * d
            else:
                acc1 += d
                acc2 += d * d
    return tl.sum(tl.sum(acc1, axis=2), axis=0), tl.sum(tl.sum(acc2, axis=2), axis=0)


@triton.jit
def _channel_sums(
    g_ptr,
    x_ptr,
    pivot_ptr,
    part_ptr,
    N,
    C,
    S,
    SPLIT,
    GRAD: tl.constexpr,
    FUSED: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
    BS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """``(c, cm, pivot, s1, s2)`` of this program's channel block: ``_block``, and the
    whole channel's ``_sums``, computed here (``FUSED``, one split) or added up from the
    partial sums of ``_partial_sums``."""
    c, cm, pivot = _block(x_ptr, pivot_ptr, C, S, BC, GRAD)
    if FUSED:
        s1, s2 = _sums(g_ptr, x_ptr, c, pivot, 0, N, C, S, GRAD, BN, BS)
    else:
        s1, s2 = _split_sums(part_ptr, c, C, SPLIT, CHUNK)
    return c, cm, pivot, s1, s2


@triton.jit
def _partial_sums(
    g_ptr,
    x_ptr,
    pivot_ptr,
    part_ptr,
    N,
    C,
    S,
    rows_per_split,
    SPLIT,
    GRAD: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
    BS: tl.constexpr,
):
    """``part[0 | 1, split, c]``: the two ``_sums`` of this split's samples; the
    forward's ``sum(x - pivot)``, ``sum((x - pivot)**2)``, or the backward's ``sum(g)``,
    ``sum(g * (x - pivot))`` (``GRAD``)."""
    c, cm, pivot = _block(x_ptr, pivot_ptr, C, S, BC, GRAD)
    split = tl.program_id(1)
    n_start, n_end = _rows(split, rows_per_split, N)
    s1, s2 = _sums(g_ptr, x_ptr, c, pivot, n_start, n_end, C, S, GRAD, BN, BS)
    tl.store(part_ptr + split * C + c, s1, mask=cm)
    tl.store(part_ptr + (SPLIT + split) * C + c, s2, mask=cm)


@triton.jit
def _normalize(
    x_ptr,
    y_ptr,
    part_ptr,
    w_ptr,
    b_ptr,
    stats_ptr,
    rm_ptr,
    rv_ptr,
    counter_ptr,
    factor,
    unbias,
    N,
    C,
    S,
    rows_per_split,
    SPLIT,
    count,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RUNNING: tl.constexpr,
    BUMP: tl.constexpr,
    FUSED: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
    BS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """y = (x - pivot) * scale + shift; split 0 writes stats rows (mean, var, inv_std,
    pivot, offset) and, with ``RUNNING``, updates the running statistics in place:
    ``lerp(running, batch, factor)`` with the unbiased variance (``factor`` computed by
    the caller). ``BUMP``: program (0, 0) adds 1 to the counter (saves a launch).
    ``FUSED`` (one split): the sums are computed here, not read from ``_partial_sums``."""
    c, cm, pivot, s1, s2 = _channel_sums(
        x_ptr, x_ptr, x_ptr, part_ptr, N, C, S, SPLIT, False, FUSED, BN, BC, BS, CHUNK
    )
    split = tl.program_id(1)
    offset = s1 / count
    var = tl.maximum(s2 / count - offset * offset, 0.0)
    inv_std = 1.0 / tl.sqrt_rn(var + eps)
    scale = _per_channel(w_ptr, c, C, 1.0, HAS_W) * inv_std
    shift = _per_channel(b_ptr, c, C, 0.0, HAS_B) - offset * scale
    if split == 0:
        tl.store(stats_ptr + c, pivot + offset, mask=cm)
        tl.store(stats_ptr + C + c, var, mask=cm)
        tl.store(stats_ptr + 2 * C + c, inv_std, mask=cm)
        tl.store(stats_ptr + 3 * C + c, pivot, mask=cm)
        tl.store(stats_ptr + 4 * C + c, offset, mask=cm)
        if RUNNING:
            _lerp_into(rm_ptr, c, C, pivot + offset, factor)
            _lerp_into(rv_ptr, c, C, var * unbias, factor)
            if BUMP:  # noqa: SIM102 (Triton: a constexpr test, then a run-time one)
                if tl.program_id(0) == 0:
                    tl.store(counter_ptr, tl.load(counter_ptr) + 1)
    n_start, n_end = _rows(split, rows_per_split, N)
    for n0 in range(n_start, n_end, BN):
        for s0 in range(0, S, BS):
            off, mask = _tile(n0, s0, c, n_end, C, S, BN, BS)
            v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
            y = (v - pivot[None, :, None]) * scale[None, :, None] + shift[None, :, None]
            tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_input(
    g_ptr,
    x_ptr,
    gx_ptr,
    part_ptr,
    w_ptr,
    inv_std_ptr,
    pivot_ptr,
    offset_ptr,
    gw_ptr,
    gb_ptr,
    N,
    C,
    S,
    rows_per_split,
    SPLIT,
    count,
    HAS_W: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_W: tl.constexpr,
    NEED_B: tl.constexpr,
    FUSED: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
    BS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """grad_x = k1 * g + k2 * (x - pivot) + k3 (see ``batch_norm_backward``); split 0
    writes grad_weight and grad_bias. ``FUSED`` (one split): the sums are computed here."""
    c, cm, pivot, g_sum, gd_pivot = _channel_sums(
        g_ptr, x_ptr, pivot_ptr, part_ptr, N, C, S, SPLIT, True, FUSED, BN, BC, BS, CHUNK
    )
    split = tl.program_id(1)
    inv_std = tl.load(inv_std_ptr + c, mask=cm, other=0.0).to(tl.float32)
    offset = tl.load(offset_ptr + c, mask=cm, other=0.0).to(tl.float32)
    gd = gd_pivot - offset * g_sum  # sum(g * (x - mean)), without cancellation
    if split == 0:
        if NEED_W:
            tl.store(gw_ptr + c, gd * inv_std, mask=cm)
        if NEED_B:
            tl.store(gb_ptr + c, g_sum, mask=cm)
    if NEED_X:
        k1 = _per_channel(w_ptr, c, C, 1.0, HAS_W) * inv_std
        k1_over_n = k1 / -count
        k2 = gd * inv_std * inv_std * k1_over_n
        k3 = g_sum * k1_over_n - k2 * offset
        n_start, n_end = _rows(split, rows_per_split, N)
        for n0 in range(n_start, n_end, BN):
            for s0 in range(0, S, BS):
                off, mask = _tile(n0, s0, c, n_end, C, S, BN, BS)
                g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
                v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
                gx = (
                    k1[None, :, None] * g
                    + k2[None, :, None] * (v - pivot[None, :, None])
                    + k3[None, :, None]
                )
                tl.store(gx_ptr + off, gx.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _eval(
    x_ptr,
    y_ptr,
    rm_ptr,
    rv_ptr,
    w_ptr,
    b_ptr,
    N,
    C,
    S,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
    BS: tl.constexpr,
):
    """y = (x - running_mean) * weight / sqrt(running_var + eps) + bias, one tile."""
    s_blocks = tl.cdiv(S, BS)
    n0 = (tl.program_id(0) // s_blocks) * BN
    s0 = (tl.program_id(0) % s_blocks) * BS
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = c < C
    mean = tl.load(rm_ptr + c, mask=cm, other=0.0).to(tl.float32)
    var = tl.load(rv_ptr + c, mask=cm, other=1.0).to(tl.float32)
    scale = _per_channel(w_ptr, c, C, 1.0, HAS_W) / tl.sqrt_rn(var + eps)
    shift = _per_channel(b_ptr, c, C, 0.0, HAS_B)
    off, mask = _tile(n0, s0, c, N, C, S, BN, BS)
    v = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    y = (v - mean[None, :, None]) * scale[None, :, None] + shift[None, :, None]
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------- launch plan


@functools.lru_cache(maxsize=64)
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # the interpreter (tests on CPU): few programs, fast to interpret


def _block_s(s: int) -> int:
    """The widest power-of-two row (32..1024 positions) that wastes at most 1/8 of its lanes."""
    for bs in (1024, 512, 256, 128, 64, 32):
        if triton.cdiv(s, bs) * bs * 8 <= s * 9:
            return bs
    return 32 if s > 16 else triton.next_power_of_2(s)


@functools.lru_cache(maxsize=256)
def plan(n: int, c: int, s: int, device: torch.device) -> tuple[int, int, int, int, int]:
    """Tile and split of an ``(n, c, s)`` input: ``(BN, BC, BS, rows_per_split, splits)``."""
    if s == 1:
        bc = min(64, triton.next_power_of_2(c))
        bs = 1
    else:
        bc = 1
        bs = _block_s(s)
    # Not shrunk to small N: one compiled variant per (BC, BS) serves every batch size.
    bn = TILE // (bc * bs)
    row_blocks = triton.cdiv(n, bn)
    if n * s * bc <= FUSE_MAX_PER_PROGRAM:
        return bn, bc, bs, row_blocks * bn, 1  # small: one program per channel block
    channel_blocks = triton.cdiv(c, bc)
    target = PROGRAMS_PER_SM * _multiprocessors(device)
    splits = max(1, min(row_blocks, triton.cdiv(target, channel_blocks)))
    rows_per_split = triton.cdiv(row_blocks, splits) * bn
    splits = triton.cdiv(n, rows_per_split)
    return bn, bc, bs, rows_per_split, splits


def _nc_s(x: Tensor) -> tuple[int, int, int]:
    n, c = x.shape[0], x.shape[1]
    return n, c, x.numel() // (n * c)


def _reduction(
    g: Tensor, x: Tensor, pivot: Tensor, *, grad: bool, no_part: Tensor
) -> tuple[Tensor, tuple[int, int], tuple[int, ...], dict[str, int | bool]]:
    """Plan a training pass over ``x`` and run its first kernel: the partial sums
    (``_partial_sums``; ``grad``: the backward's, of ``g``), only with several splits.

    Returns:
        ``(part, grid, sizes, blocks)``: the partial sums (``no_part``, any tensor, where
        one split computes its sums in the second kernel), the second kernel's grid, and
        the plan as it takes it: ``sizes`` its arguments ``(N, C, S, rows_per_split,
        SPLIT, count)``, ``blocks`` its ``FUSED``, ``BN``, ``BC``, ``BS`` and ``CHUNK``.
    """
    n, c, s = _nc_s(x)
    bn, bc, bs, rows, splits = plan(n, c, s, x.device)
    grid = (triton.cdiv(c, bc), splits)
    part = no_part
    if splits > 1:
        part = torch.empty((2, splits, c), dtype=torch.float32, device=x.device)
        _partial_sums[grid](
            g, x, pivot, part, n, c, s, rows, splits, GRAD=grad, BN=bn, BC=bc, BS=bs
        )
    blocks = {"FUSED": splits == 1, "BN": bn, "BC": bc, "BS": bs, "CHUNK": SPLIT_CHUNK}
    return part, grid, (n, c, s, rows, splits, n * s), blocks


# ---------------------------------------------------------------------------- entry points


def train_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    running: tuple[Tensor, Tensor, Tensor | None, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Training forward of a contiguous ``(N, C, *)`` input (``N * S >= 1``).

    Args:
        running: for modules that own their buffers: ``(running_mean, running_var,
            num_batches_tracked, factor)``, updated in place as ``batch_norm`` would
            return them (the counter + 1, then the lerp of both statistics with weight
            ``factor``, the weight of the new batch that the caller computed, with the
            unbiased variance). Statistics contiguous ``(C,)`` floating tensors on
            ``x``'s device; the counter an int64 scalar there, or None. Needs
            ``N * S >= 2``. None: no update.

    Returns:
        ``(y, stats)``: ``y`` like ``x``; ``stats`` float32 ``(5, C)``, rows mean, var
        (biased), inv_std, pivot, offset (as the CPU kernels).
    """
    y = torch.empty_like(x)
    stats = torch.empty((5, x.shape[1]), dtype=torch.float32, device=x.device)
    part, grid, sizes, blocks = _reduction(x, x, x, grad=False, no_part=stats)
    count = sizes[-1]
    if running is None:
        running_mean = running_var = counter = stats  # any pointer: never read
        factor = 0.0
        bump = False
    else:
        running_mean, running_var, counter, factor = running
        bump = counter is not None  # the kernel adds 1 (one program; nothing else reads it)
        if counter is None:
            counter = stats
    _normalize[grid](
        x,
        y,
        part,
        weight if weight is not None else x,  # any pointer when absent: never read
        bias if bias is not None else x,
        stats,
        running_mean,
        running_var,
        counter,
        float(factor),
        count / (count - 1) if count > 1 else 1.0,
        *sizes,
        float(eps),
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        RUNNING=running is not None,
        BUMP=bump,
        **blocks,
    )
    return y, stats


def train_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    inv_std: Tensor,
    pivot: Tensor,
    offset: Tensor,
    needs_input_grad: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Training backward; ``None`` where a gradient is not requested.

    ``grad_x`` is like ``x``; ``grad_weight`` and ``grad_bias`` are float32 ``(C,)``.
    """
    need_x, need_w, need_b = needs_input_grad
    c = x.shape[1]
    part, grid, sizes, blocks = _reduction(grad_y, x, pivot, grad=True, no_part=x)
    grad_x = torch.empty_like(x) if need_x else None
    grad_w = torch.empty(c, dtype=torch.float32, device=x.device) if need_w else None
    grad_b = torch.empty(c, dtype=torch.float32, device=x.device) if need_b else None
    _grad_input[grid if need_x else (grid[0], 1)](
        grad_y,
        x,
        grad_x if need_x else x,
        part,
        weight if weight is not None else x,
        inv_std,
        pivot,
        offset,
        grad_w if need_w else part,
        grad_b if need_b else part,
        *sizes,
        HAS_W=weight is not None,
        NEED_X=need_x,
        NEED_W=need_w,
        NEED_B=need_b,
        **blocks,
    )
    return grad_x, grad_w, grad_b


def eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Eval forward ``(x - running_mean) * weight / sqrt(running_var + eps) + bias``."""
    n, c, s = _nc_s(x)
    bn, bc, bs, _, _ = plan(n, c, s, x.device)
    y = torch.empty_like(x)
    grid = (triton.cdiv(n, bn) * triton.cdiv(s, bs), triton.cdiv(c, bc))
    _eval[grid](
        x,
        y,
        running_mean,
        running_var,
        weight if weight is not None else x,
        bias if bias is not None else x,
        n,
        c,
        s,
        float(eps),
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        BN=bn,
        BC=bc,
        BS=bs,
    )
    return y
