"""Shared pieces of the API fuzz tests: input strategies, the error contract, a case counter.

The contract every fuzzed call must keep: it returns a result equal to the torch twin
(or a float64 reference) within the dtype's tolerance, NaN where the reference has NaN,
or it raises ``ValueError``/``TypeError``/``RuntimeError`` whose message names the
layer or function that refused the input. Anything else (an ``IndexError``, a bare shape
error from a ``view`` deep inside torch, an output that differs) is a bug.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st

#: Cases run per target, across the session (written out by conftest.py).
COUNTS: Counter[str] = Counter()
#: Outcomes per target: "ok" (compared equal) or "refused" (a documented error).
OUTCOMES: Counter[str] = Counter()

DOCUMENTED = (ValueError, TypeError, RuntimeError)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
OTHER_DTYPES = (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)
LAYOUTS = ("contiguous", "sliced", "permuted", "channels_last", "expanded")
SPECIALS = ("none", "none", "nan", "inf", "-inf", "huge")

# Tolerances against the float64 reference, by input dtype (half types round the
# input and output to 8-11 bits of mantissa).
TOL = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (1e-1, 1e-1),
}


def record(target: str, outcome: str) -> None:
    COUNTS[target] += 1
    OUTCOMES[f"{target}:{outcome}"] += 1


def write_counts(path: Path) -> None:
    data = {"cases": dict(sorted(COUNTS.items())), "outcomes": dict(sorted(OUTCOMES.items()))}
    data["total"] = sum(COUNTS.values())
    path.write_text(json.dumps(data, indent=2) + "\n")


def check_refusal(exc: BaseException, names: tuple[str, ...]) -> None:
    """A refusal must be a documented error type whose message names the refuser."""
    assert isinstance(exc, DOCUMENTED), f"undocumented error {type(exc).__name__}: {exc}"
    message = str(exc)
    assert any(n in message for n in names), (
        f"{type(exc).__name__} does not name any of {names}: {message[:300]}"
    )


@st.composite
def input_tensors(
    draw: st.DrawFn,
    *,
    ranks: tuple[int, ...],
    channels: int,
    allow_other_dtypes: bool = True,
    min_side: int = 0,
    channel_dim: int = 1,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A tensor of a random rank, shape, dtype, memory layout and special values.

    Dim 1 is ``channels`` most of the time and a different count sometimes (a
    ``num_features`` mismatch); other dims are 0..4 with 0 rarer.
    """
    rank = draw(st.sampled_from(ranks))
    side = st.one_of(st.integers(max(1, min_side), 4), st.integers(min_side, 4))
    shape = [draw(side) for _ in range(rank)]
    if rank > channel_dim or (channel_dim < 0 and rank >= 1):
        mismatch = draw(st.integers(0, 9)) == 9  # hypothesis favours 0
        shape[channel_dim] = draw(st.integers(1, 5)) if mismatch else channels
    if allow_other_dtypes and draw(st.integers(0, 7)) == 7:
        dtype = draw(st.sampled_from(OTHER_DTYPES))
    else:
        dtype = draw(st.sampled_from(FLOAT_DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    special = draw(st.sampled_from(SPECIALS))
    scale = draw(st.sampled_from((1.0, 1e-3, 1e3)))
    offset = draw(st.sampled_from((0.0, 5.0, -100.0)))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)

    def values(s: list[int]) -> torch.Tensor:
        base = torch.randn(s, generator=g, dtype=torch.float64) * scale + offset
        if base.numel() and special != "none":
            idx = int(torch.randint(base.numel(), (1,), generator=g))
            base.view(-1)[idx] = {
                "nan": float("nan"),
                "inf": float("inf"),
                "-inf": float("-inf"),
                "huge": 6e4,
            }[special]
        if dtype == torch.bool:
            return base > 0
        if dtype.is_complex:
            return base.to(dtype)
        if not dtype.is_floating_point:
            return base.nan_to_num(0.0, 0.0, 0.0).clamp(-100, 100).to(dtype)
        return base.to(dtype)

    if layout == "sliced" and rank >= 1:
        big = [*shape[:-1], shape[-1] * 2]
        x = values(big)[..., ::2]
    elif layout == "permuted" and rank >= 2:
        x = values(shape[::-1]).permute(*reversed(range(rank)))
    elif layout == "channels_last" and rank in (4, 5):
        fmt = torch.channels_last if rank == 4 else torch.channels_last_3d
        x = values(shape).contiguous(memory_format=fmt)
    elif layout == "expanded" and rank >= 1:
        x = values([1, *shape[1:]]).expand(*shape)
    else:
        x = values(shape)
    return x, {
        "rank": rank,
        "shape": tuple(shape),
        "dtype": dtype,
        "layout": layout,
        "special": special,
    }


def assert_close_ref(
    actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """``actual`` (in ``dtype``) against a float64 reference, NaN where it has NaN."""
    assert actual.shape == reference.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    )
    rtol, atol = TOL.get(dtype, (1e-4, 1e-4))
    a = actual.detach().double()
    r = reference.detach().double()
    # Where the reference overflows the output dtype, only the sign of the inf matters.
    if actual.dtype in (torch.float16, torch.bfloat16):
        big = torch.finfo(actual.dtype).max
        r = torch.where(r.abs() > big, r.sign() * float("inf"), r)
    # Non-finite where the reference is non-finite; NaN and inf count as one outcome
    # (an inf input gives torch an inf running mean and bnlab a NaN one: both unusable).
    bad = ~torch.isfinite(r)
    assert (~torch.isfinite(a))[bad].all(), f"{what}: finite where the reference is not"
    a, r = a.masked_fill(bad, float("nan")), r.masked_fill(bad, float("nan"))
    torch.testing.assert_close(
        a, r, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


def counts_path() -> Path:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    base = Path(os.environ.get("BNLAB_FUZZ_COUNTS_DIR", os.environ.get("TMPDIR", "/tmp")))
    return base / f"bnlab-fuzz-counts-{worker}.json"
