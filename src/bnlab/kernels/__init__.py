"""The kernels: the fast path of the norms, fused C++ kernels (CPU) and Triton (CUDA).

Papers: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167; Wu & He, "Group
Normalization", arXiv 1803.08494; Ba, Kiros & Hinton, "Layer Normalization", arXiv
1607.06450.

What lives here (the layer between ``bnlab.functional``, the pure maths, and
``bnlab.autograd``, the only package that calls this one):

* ``bn_kernels.cpp``: fused kernels with a plain C ABI and no torch headers, for batch
  norm (training forward, training backward, eval forward), group norm and layer norm
  (forward, backward), with the numerics of ``bnlab.functional.moments`` (shifted sums
  around a per-channel pivot, double accumulators), built and loaded with ``ctypes`` by
  ``build.py`` on the first call that qualifies. Nothing happens at import time. When
  no compiler is found, the build fails, or the library does not load, one
  ``RuntimeWarning`` per process, and every call takes the torch-ops path of
  ``bnlab.functional``; :func:`status` says why.
* ``triton_bn.py``: the batch-norm kernels for CUDA tensors (float16, bfloat16 and
  float32 inputs, float32 statistics), imported on the first CUDA call; where Triton is
  missing or fails to import, one ``RuntimeWarning`` and the torch-ops path
  (:func:`cuda_status`). float64 CUDA inputs take the torch-ops path.
* ``pool.py``: the output pool (:class:`OutputPool`, below).
* One dispatch function per op, which says whether a call takes the kernels:
  :func:`batch_norm_eligible` (training forward, backward and eval of batch norm, CPU
  and CUDA), :func:`group_norm_eligible` (group norm; instance norm is ``G == C``),
  :func:`layer_norm_eligible`. Everything they refuse (channels_last and other strides,
  float16/bfloat16 on the CPU, mixed dtypes, double backward, fewer than
  :data:`MIN_NUMEL` elements for batch norm on the CPU, where the ctypes call costs more
  than it saves) takes the torch-ops path silently, which computes the same statistics
  by the same corrected two-pass formulas. They do not validate arguments (eps,
  momentum): ``bnlab.autograd`` does, with the checks of ``bnlab.functional``.
* The entry points the dispatch leads to: :func:`train_forward`, :func:`train_backward`,
  :func:`eval_forward` (CPU or CUDA by ``x``'s device), :func:`group_forward`,
  :func:`group_backward`, :func:`layer_forward`, :func:`layer_backward`.
* The switch: :func:`set_enabled` or the :func:`enabled` context manager turn the fast
  path off (for comparisons); :func:`is_enabled`.

The running statistics: ``train_forward(..., running=(mean, var, counter, factor))``
updates a module's buffers in place inside the kernel (``bnlab.autograd``'s module entry;
the pure functions never pass it). ``factor``, the weight of the new batch, is computed
once, in Python, by ``bnlab.functional.batch_norm.running_update_factor`` (``momentum``,
or ``1 / num_batches_tracked`` for ``momentum=None``); the kernels only apply it.

* ``bn_node.cpp``: batch norm's training step as a torch operator whose autograd node is
  C++ (:func:`train_node`), for module calls below :data:`POOL_MIN_BYTES`: the same
  kernels, called from C++ in the forward and the backward, so a small step makes one
  Python call instead of a Python ``autograd.Function`` (measured on this package's CPU
  machine, 256x120 float32, one thread: 0.85 of torch's step against 1.06-1.07
  through the Function; README, "BatchNorm layer"). Built with torch's headers at first use (``build.build_node``,
  about 10 s, once per torch version); where it does not build, one ``RuntimeWarning``
  and the Function path (:func:`node_status`).

The ops are not registered with ``torch.library.custom_op``: measured on this
package's CPU machine (torch 2.13, one thread, 256x120 float32), a Python custom op
costs about 10-15 us more per forward+backward than an ``autograd.Function`` (7 us more
per no-grad forward), a fifth of a small training step, against which the fast path
saves 5-10 us.
The group- and layer-norm dispatch refuses calls under ``torch.compile`` and functorch
transforms (``vmap``, ``torch.func.grad``), which take the torch-ops path; so does the
batch-norm dispatch under functorch transforms, and ``bnlab.autograd`` then runs the
torch-ops forward without its ``autograd.Function`` (differentiable op by op, as
torch's own batch norm under ``torch.func``).

Small inputs are bound by per-call overhead, not arithmetic (256x120: about 10 us of
kernel against 200 us of a training step), so: each kernel takes its arguments packed into
one buffer (one ctypes conversion, not 11-14); one-thread calls skip the OpenMP region;
the running statistics are updated inside the kernel; and
``train_backward(..., stats=...)`` reads the rows of the forward's ``(5, C)`` statistics
in place.

Large outputs: a fresh CPU tensor above glibc's mmap threshold (at most 32 MiB) is a
new mapping whose 4 KiB pages fault on first touch, which costs more than the
arithmetic (measured here: about half of torch's own training step on the large
shapes). Outputs (``y``, ``grad_x``) of at least :data:`POOL_MIN_BYTES` (group and layer
norm: :data:`NORM_POOL_MIN_BYTES`) therefore come from a small cache of this package's
own buffers (:class:`OutputPool`, ordinary torch storages: resizable, copied on write
by ``fork()``, and a forked child starts with an empty pool): a buffer is reused,
already faulted in, once every tensor on it has died. The free buffers kept are at most
:data:`POOL_MAX_FREE_BYTES`, at most twice the bytes in use at once during the recent
calls (a training step's working set), and none once no buffer was taken for
:data:`POOL_IDLE_S` seconds; the rest is released and its pages given back to the
system. In steady training the pool holds the buffers torch's allocator would map
afresh at every step, so the peak memory of a step is unchanged. New buffers are
advised ``MADV_HUGEPAGE`` (2 MiB pages where the kernel grants them). Only these
tensors are affected; the process-wide allocator settings are not changed.
:func:`set_pool_limit` changes the cap (0 turns reuse off and releases every free
buffer now).
"""

from __future__ import annotations

import ctypes
import struct
import threading
import warnings
from typing import Any

import torch
from torch import Tensor

from bnlab.functional.moments import records_grad
from bnlab.kernels import build
from bnlab.kernels.build import COMPILERS, FLAGS
from bnlab.kernels.pool import OutputPool

__all__ = [
    "COMPILERS",
    "FLAGS",
    "MIN_NUMEL",
    "NORM_POOL_MIN_BYTES",
    "POOL_IDLE_S",
    "POOL_MAX_FREE_BYTES",
    "POOL_MIN_BYTES",
    "OutputPool",
    "available",
    "avg_pool2_backward",
    "avg_pool2_eligible",
    "avg_pool2_forward",
    "batch_norm_eligible",
    "cuda_status",
    "enabled",
    "eval_forward",
    "group_backward",
    "group_forward",
    "group_norm_eligible",
    "is_enabled",
    "is_transformed",
    "layer_backward",
    "layer_forward",
    "layer_norm_eligible",
    "library_info",
    "node_status",
    "set_enabled",
    "set_node_enabled",
    "set_pool_limit",
    "status",
    "train_backward",
    "train_forward",
    "train_node",
]

# Below this many elements the reference path (a few torch ops) is as fast.
MIN_NUMEL = 4096
POOL_MIN_BYTES = 8 << 20
# The group/layer-norm outputs take the pool from this size: their training step makes
# two such tensors per call (y, grad_x) and measured 25% faster on a 2.4 MB input
# (256x16x12x12 float32) with pooled outputs than with fresh ones (page faults).
NORM_POOL_MIN_BYTES = 1 << 20
POOL_MAX_FREE_BYTES = 256 << 20
# Free pooled buffers are released when no buffer was taken for this many seconds.
POOL_IDLE_S = 2.0
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
# The kernels' arguments, packed into one bytes buffer per call (fields of 8 bytes, in
# the parameter order of bn_kernels.cpp's kernels, see its call_packed; Q: pointer, 0 for
# null; q: int64; d: double): ctypes converts each argument separately (about 0.2 us
# each), a buffer once.
_PACK = {
    # x, y, N, C, S, weight, bias, eps, stats, running_mean, running_var,
    # num_batches_tracked, factor, threads
    "train_forward": struct.Struct("=QQqqqQQdQQQQdq").pack,
    # grad_y, x, N, C, S, weight, inv_std, pivot, offset, grad_x, grad_weight, grad_bias,
    # threads
    "train_backward": struct.Struct("=QQqqqQQQQQQQq").pack,
    # x, y, N, C, S, running_mean, running_var, weight, bias, eps, threads
    "eval_forward": struct.Struct("=QQqqqQQQQdq").pack,
    # x, y, N, C, S, G, weight, bias, eps, stats, threads
    "group_forward": struct.Struct("=QQqqqqQQdQq").pack,
    # grad_y, x, N, C, S, G, weight, stats, grad_x, grad_weight, grad_bias, threads
    "group_backward": struct.Struct("=QQqqqqQQQQQq").pack,
    # x, y, R, M, weight, bias, eps, stats, threads
    "layer_forward": struct.Struct("=QQqqQQdQq").pack,
    # grad_y, x, R, M, weight, stats, grad_x, grad_weight, grad_bias, threads
    "layer_backward": struct.Struct("=QQqqQQQQQq").pack,
    # x, y, planes, H, W, threads (backward: grad_y, grad_x, ...)
    "avg_pool2_forward": struct.Struct("=QQqqqq").pack,
    "avg_pool2_backward": struct.Struct("=QQqqqq").pack,
}
_pack_train_forward = _PACK["train_forward"]
_pack_eval_forward = _PACK["eval_forward"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_loaded: build.Loaded | None = None
_state: str = "not built yet"  # "ready: PATH" | "unavailable: REASON" | "not built yet"
_UNAVAILABLE = "unavailable"
_failed: bool = False  # the build or load failed in this process: reference path only
_fns: dict[tuple[str, torch.dtype], Any] = {}
_enabled: bool = True
# The CUDA path (Triton): float16/bfloat16/float32 inputs; float64 takes the reference path.
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_triton_bn: Any = None
_cuda_state: str = "not loaded yet"
_cuda_failed: bool = False
# Batch norm's C++ autograd node (bn_node.cpp, see train_node).
NODE_ABI_VERSION = 1
_node: Any = None
_node_state: str = "not built yet"
_node_failed: bool = False
_node_enabled: bool = True


def set_enabled(flag: bool) -> None:
    """Switch the fast path on or off for the whole process."""
    global _enabled
    _enabled = bool(flag)


def is_enabled() -> bool:
    """Whether the fast path is switched on (it may still be unavailable)."""
    return _enabled


class enabled:  # lower case: used as a function, ``with enabled(False): ...``
    """Context manager: the fast path on (``True``) or off (``False``) inside the block;
    ``node``, when given, switches batch norm's C++ autograd node too
    (:func:`set_node_enabled`).

    A class rather than ``@contextmanager``: entering and leaving costs a third as much
    (about 0.6 us against 1.8 us), which shows in benchmarks that switch per call.
    """

    __slots__ = ("_flag", "_node", "_previous")

    def __init__(self, flag: bool, *, node: bool | None = None) -> None:
        self._flag = flag
        self._node = node
        self._previous = (_enabled, _node_enabled)

    def __enter__(self) -> None:
        self._previous = (_enabled, _node_enabled)
        set_enabled(self._flag)
        if self._node is not None:
            set_node_enabled(self._node)

    def __exit__(self, *exc: object) -> None:
        set_enabled(self._previous[0])
        set_node_enabled(self._previous[1])


def status() -> str:
    """``"ready: <library path>"``, ``"unavailable: <reason>"`` or ``"not built yet"``."""
    return _state


def library_info() -> dict[str, object]:
    """Where the loaded library came from: ``{"origin": "prebuilt" | "cached" |
    "compiled", "level": ..., "path": ..., "compile_s": ..., "skipped": ...}`` (see
    ``bnlab.kernels.build.Loaded``), or ``{"origin": None, "status": status()}`` before
    a library loaded or where none does. Builds nothing."""
    if _loaded is None:
        return {"origin": None, "status": _state}
    return {
        "origin": _loaded.origin,
        "level": _loaded.level,
        "path": str(_loaded.path),
        "compile_s": round(_loaded.seconds, 3),
        "skipped": _loaded.skipped,
    }


def _declare(lib: ctypes.CDLL) -> None:
    # One argument each: the packed argument buffer (see _PACK and bn_kernels.cpp).
    for sfx in _DTYPES.values():
        for kind in _PACK:
            fn = getattr(lib, f"bnlab_{kind}_{sfx}")
            fn.argtypes = [ctypes.c_char_p]
            fn.restype = None


def _library() -> ctypes.CDLL | None:
    global _lib, _loaded, _state, _failed
    if _lib is not None or _failed:
        return _lib
    with _lock:
        if _lib is None and not _failed:
            try:
                loaded = build.load()
                lib = loaded.lib
                _declare(lib)
                _fns.clear()
                for dtype, sfx in _DTYPES.items():
                    for kind in _PACK:
                        _fns[kind, dtype] = getattr(lib, f"bnlab_{kind}_{sfx}")
                _lib, _loaded = lib, loaded
                _state = f"ready: {lib._name}"
            except Exception as err:  # any failure means: use the reference path
                reason = f"{type(err).__name__}: {err}"
                _state = f"{_UNAVAILABLE}: {reason}"
                _failed = True
                warnings.warn(
                    f"bnlab: BatchNorm fast path unavailable, using the reference path ({reason})",
                    RuntimeWarning,
                    stacklevel=4,
                )
    return _lib


def _torch_build() -> build.TorchBuild:
    from torch.utils import cpp_extension  # imported at first use only: it is slow

    return build.TorchBuild(
        version=f"{torch.__version__} {torch.version.git_version}",
        include_dirs=tuple(cpp_extension.include_paths()),
        library_dirs=tuple(cpp_extension.library_paths()),
        flags=(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",),
    )


def _load_node() -> Any:
    """Build (first use) and load ``bn_node.cpp``, bind it to this process's kernels;
    ``torch.ops.bnlab_kernels.batch_norm_train.default``, or None (one RuntimeWarning)."""
    global _node, _node_state, _node_failed
    if _library() is None:  # it warned already
        _node_state = f"{_UNAVAILABLE}: the kernels' library is unavailable ({_state})"
        _node_failed = True
        return None
    with _lock:
        if _node is None and not _node_failed:
            try:
                path, _ = build.build_node(_torch_build())
                torch.ops.load_library(str(path))
                ops = torch.ops.bnlab_kernels
                if ops.node_abi_version() != NODE_ABI_VERSION:
                    raise RuntimeError(
                        f"{path} has node ABI {ops.node_abi_version()}, want {NODE_ABI_VERSION}"
                    )
                # bind(forward_f32, forward_f64, backward_f32, backward_f64)
                ops.bind(
                    *(
                        ctypes.cast(_fns[kind, dtype], ctypes.c_void_p).value
                        for kind in ("train_forward", "train_backward")
                        for dtype in (torch.float32, torch.float64)
                    )
                )
                _node = ops.batch_norm_train.default
                _node_state = f"ready: {path}"
            except Exception as err:  # any failure means: the autograd.Function path
                reason = f"{type(err).__name__}: {err}"
                _node_state = f"{_UNAVAILABLE}: {reason}"
                _node_failed = True
                warnings.warn(
                    f"bnlab: batch norm's C++ autograd node unavailable, using the Python "
                    f"autograd.Function ({reason})",
                    RuntimeWarning,
                    stacklevel=4,
                )
    return _node


def train_node(x: Tensor) -> Any:
    """Batch norm's training step with its autograd node in C++, for a CPU ``x`` of
    :data:`MIN_NUMEL` elements to :data:`POOL_MIN_BYTES` (larger outputs come from the
    output pool, and such a step is not bound by overhead) while the fast path and the
    node are switched on (:func:`set_enabled`, :func:`set_node_enabled`); else None, also
    where it is unavailable (:func:`node_status`; built at first use).

    The op, ``torch.ops.bnlab_kernels.batch_norm_train.default(x, weight, bias, eps,
    running_mean, running_var, num_batches_tracked, factor) -> y``, computes what
    ``FastBatchNormFunction`` does on the same kernels (outputs, gradients and running
    statistics bit for bit equal), with ``running_mean``, ``running_var``,
    ``num_batches_tracked`` and ``factor`` as :func:`train_forward`'s ``running``. It
    returns None for a call that :func:`batch_norm_eligible` would refuse for another
    reason than its size (checked in C++, where it costs 0.05 us instead of 1.6): the
    caller then takes the ``autograd.Function`` path. Built against the installed torch
    at first use (``build.build_node``, about 10 s, once per torch version).
    """
    if (
        not (_enabled and _node_enabled)
        or not x.is_cpu
        or x.numel() < MIN_NUMEL
        or x.nbytes >= POOL_MIN_BYTES
    ):
        return None
    if _node is not None or _node_failed:
        return _node
    return _load_node()


def set_node_enabled(flag: bool) -> None:
    """Turn batch norm's C++ autograd node on or off (for comparisons); off, eligible
    training steps take the ``autograd.Function`` on the same kernels."""
    global _node_enabled
    _node_enabled = bool(flag)


def node_status() -> str:
    """``"ready: PATH"``, ``"unavailable: REASON"`` or ``"not built yet"``."""
    return _node_state


def available() -> bool:
    """Whether the compiled kernels load (builds them on the first call)."""
    return _library() is not None


def batch_norm_eligible(
    x: Tensor,
    *others: Tensor | None,
    per_channel: tuple[Tensor | None, ...] = (),
    counter: Tensor | None = None,
    wrapped: bool = False,
    after_forward: bool = False,
) -> bool:
    """The batch-norm dispatch: whether a call with full-size ``x`` and ``others``,
    ``per_channel`` tensors (weight, bias, statistics) and the batch ``counter``
    (``num_batches_tracked``, which the training kernel increments) takes the kernels.

    CPU: float32/float64 ``x`` contiguous ``(N, C, *)`` of at least :data:`MIN_NUMEL`
    elements, every other full-size tensor contiguous with ``x``'s shape and dtype, every
    per-channel tensor a contiguous CPU ``(C,)`` tensor of ``x``'s dtype or None. CUDA:
    see :func:`_cuda_eligible`. The counter, when given, an int64 scalar on ``x``'s
    device. ``wrapped``: the caller runs the kernels inside a ``torch.autograd.Function``
    (``bnlab.autograd``); otherwise a call that autograd records does not qualify (the
    kernels are not differentiable). ``after_forward``: the backward of a call whose
    forward took the kernels, so ``x`` and the per-channel tensors qualified already and
    only ``others`` (``grad_y``) are checked against ``x``. The switch (:func:`enabled`)
    on and the library built (builds it on the first yes). Arguments are not validated
    here: callers check eps and momentum (``bnlab.functional.batch_norm.check_eps`` and
    ``check_momentum``).
    """
    # Cheapest checks first: this runs on every call (small inputs are overhead-bound).
    if not _enabled:
        return False
    if after_forward:
        shape, dtype, cuda = x.shape, x.dtype, x.is_cuda
        for t in others:
            if (
                t is None
                or t.dtype != dtype
                or t.shape != shape
                or t.is_cuda != cuda
                or (cuda and t.device != x.device)
                or not t.is_contiguous()
            ):
                return False
        return True
    if not isinstance(x, Tensor):
        return False
    if x.is_cuda:
        return _cuda_eligible(x, others, per_channel, counter, wrapped)
    if _failed:
        return False
    dtype = x.dtype
    if (
        dtype not in _DTYPES
        or not x.is_cpu
        or x.numel() < MIN_NUMEL
        or x.dim() < 2
        or not x.is_contiguous()
    ):
        return False
    shape = x.shape
    for t in others:
        if t is None or t.dtype != dtype or t.shape != shape or not t.is_contiguous():
            return False
    channels = (shape[1],)
    for t in per_channel:
        if t is not None and (
            t.dtype != dtype or t.shape != channels or not t.is_contiguous() or not t.is_cpu
        ):
            return False
    if counter is not None and (
        counter.dtype != torch.int64 or counter.dim() != 0 or not counter.is_cpu
    ):
        return False
    # The kernels are not differentiable: recorded calls take the torch-ops path.
    if not wrapped and torch.is_grad_enabled() and records_grad(x, *others, *per_channel):
        return False
    # torch.func transforms (vmap, grad, jvp): the kernels read raw memory.
    if torch._C._are_functorch_transforms_active():
        return False
    return _lib is not None or _library() is not None


def _cuda_eligible(
    x: Tensor,
    others: tuple[Tensor | None, ...],
    per_channel: tuple,
    counter: Tensor | None,
    wrapped: bool,
) -> bool:
    """:func:`batch_norm_eligible` for CUDA tensors (the Triton kernels of ``triton_bn``):
    float16/bfloat16/float32 ``x`` contiguous ``(N, C, *)``, per-channel tensors contiguous
    ``(C,)`` of any of these dtypes on the same device."""
    if (
        x.dtype not in _CUDA_DTYPES
        or x.dim() < 2
        or x.numel() == 0
        or not x.is_contiguous()
        or _cuda_failed
    ):
        return False
    shape, device = x.shape, x.device
    for t in others:
        if (
            t is None
            or t.dtype != x.dtype
            or t.shape != shape
            or t.device != device
            or not t.is_contiguous()
        ):
            return False
    c = shape[1]
    for t in per_channel:
        if t is not None and (
            not t.is_floating_point()
            or t.dtype == torch.float64
            or t.shape != (c,)
            or t.device != device
            or not t.is_contiguous()
        ):
            return False
    if counter is not None and (
        counter.dtype != torch.int64 or counter.dim() != 0 or counter.device != device
    ):
        return False
    if not wrapped and torch.is_grad_enabled() and records_grad(x, *others, *per_channel):
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    return _cuda_kernels() is not None


def _cuda_kernels() -> Any:
    """The ``triton_bn`` module, imported on the first CUDA call; None where Triton fails."""
    global _triton_bn, _cuda_state, _cuda_failed
    if _triton_bn is not None or _cuda_failed:
        return _triton_bn
    with _lock:
        if _triton_bn is None and not _cuda_failed:
            try:
                from bnlab.kernels import triton_bn

                _triton_bn = triton_bn
                _cuda_state = f"ready: triton {triton_bn.triton.__version__}"
            except Exception as err:  # no Triton, or it does not import: torch ops path
                reason = f"{type(err).__name__}: {err}"
                _cuda_state = f"{_UNAVAILABLE}: {reason}"
                _cuda_failed = True
                warnings.warn(
                    "bnlab: BatchNorm CUDA fast path unavailable, using the reference path "
                    f"({reason})",
                    RuntimeWarning,
                    stacklevel=4,
                )
    return _triton_bn


def cuda_status() -> str:
    """The CUDA path's :func:`status`: ``"ready: triton <version>"``, ``"unavailable: ..."``
    or ``"not loaded yet"``."""
    return _cuda_state


_pool = OutputPool(POOL_MAX_FREE_BYTES, max_idle_s=POOL_IDLE_S)


def set_pool_limit(max_free_bytes: int) -> None:
    """Keep at most ``max_free_bytes`` of free output buffers for reuse (0: none);
    free buffers beyond the new limit are released now.

    Raises:
        ValueError: a negative limit.
    """
    if max_free_bytes < 0:
        raise ValueError(
            f"set_pool_limit: max_free_bytes must be >= 0 (0 turns reuse off), got {max_free_bytes}"
        )
    _pool.max_free_bytes = max_free_bytes
    _pool.trim(max_free_bytes)


def _empty_like(x: Tensor) -> Tensor:
    """An uninitialised contiguous tensor like contiguous ``x``; large ones from the output
    pool."""
    if x.numel() * x.element_size() < POOL_MIN_BYTES:
        # empty_like: half the cost of torch.empty(shape, dtype=...) on small outputs.
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return _pool.empty(x.shape, x.dtype)


def _norm_empty_like(x: Tensor) -> Tensor:
    """:func:`_empty_like` with the group/layer-norm pool threshold."""
    if x.numel() * x.element_size() < NORM_POOL_MIN_BYTES:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return _pool.empty(x.shape, x.dtype)


def _norm_forward(
    name: str,
    x: Tensor,
    dims: tuple[int, ...],
    rows: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """The call of the group/layer-norm forward kernel ``name``: ``(y, stats)``, ``stats``
    a ``(3, rows)`` tensor; ``dims`` the kernel's size arguments after ``x`` and ``y``."""
    dtype = x.dtype
    y = _norm_empty_like(x)
    stats = torch.empty((3, rows), dtype=dtype)
    _fns[name, dtype](
        _PACK[name](
            x.data_ptr(),
            y.data_ptr(),
            *dims,
            0 if weight is None else weight.data_ptr(),
            0 if bias is None else bias.data_ptr(),
            float(eps),
            stats.data_ptr(),
            torch.get_num_threads(),
        )
    )
    return y, stats


def _backward(
    name: str,
    x: Tensor,
    args: tuple[int, ...],
    param_numel: int,
    needs_input_grad: tuple[bool, bool, bool],
    empty_like: Any,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The call of the backward kernel ``name``: allocates the requested gradients
    (``grad_x`` by ``empty_like``, the parameter ones ``(param_numel,)``), packs ``args``
    (the kernel's arguments before ``grad_x``) with their pointers and the thread count,
    and returns ``(grad_x, grad_weight, grad_bias)``, None where not requested."""
    need_x, need_w, need_b = needs_input_grad
    dtype = x.dtype
    grad_x = empty_like(x) if need_x else None
    grad_weight = torch.empty(param_numel, dtype=dtype) if need_w else None
    grad_bias = torch.empty(param_numel, dtype=dtype) if need_b else None
    _fns[name, dtype](
        _PACK[name](
            *args,
            0 if grad_x is None else grad_x.data_ptr(),
            0 if grad_weight is None else grad_weight.data_ptr(),
            0 if grad_bias is None else grad_bias.data_ptr(),
            torch.get_num_threads(),
        )
    )
    return grad_x, grad_weight, grad_bias


def train_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    running: tuple[Tensor, Tensor, Tensor | None, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused training forward (call only where :func:`batch_norm_eligible`).

    Args:
        running: for modules that own their buffers: ``(running_mean, running_var,
            num_batches_tracked, factor)``, updated *in place* by the kernel as
            ``batch_norm`` would return them (``num_batches_tracked`` + 1, then the lerp
            of both statistics with weight ``factor``, the weight of the new batch that
            the caller computed with ``bnlab.functional.batch_norm.running_update_factor``).
            The statistics contiguous ``(C,)`` of ``x``'s dtype (CUDA: any floating dtype
            but float64), the counter an int64 scalar on ``x``'s device or None. None: no
            update.

    Returns:
        ``(y, stats)``: ``stats`` a ``(5, C)`` tensor of rows mean, var (biased),
        inv_std, pivot (the channel's first element), offset (mean - pivot).
    """
    if x.is_cuda:
        return _triton_bn.train_forward(x, weight, bias, eps, running)
    dtype = x.dtype
    # _empty_like, inlined (small inputs are overhead-bound).
    if x.nbytes < POOL_MIN_BYTES:
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
    else:
        y = _pool.empty(x.shape, dtype)
    shape = x.shape
    n, c = shape[0], shape[1]
    stats = torch.empty((5, c), dtype=dtype)
    if running is None:
        rm = rv = nbt = 0
        factor = 0.0
    else:
        running_mean, running_var, counter, factor = running
        rm, rv = running_mean.data_ptr(), running_var.data_ptr()
        nbt = 0 if counter is None else counter.data_ptr()
    _fns["train_forward", dtype](
        _pack_train_forward(
            x.data_ptr(),
            y.data_ptr(),
            n,
            c,
            x.numel() // (n * c),
            0 if weight is None else weight.data_ptr(),
            0 if bias is None else bias.data_ptr(),
            eps,
            stats.data_ptr(),
            rm,
            rv,
            nbt,
            factor,
            torch.get_num_threads(),
        )
    )
    return y, stats


def train_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    inv_std: Tensor | None,
    pivot: Tensor | None,
    offset: Tensor | None,
    needs_input_grad: tuple[bool, bool, bool],
    *,
    stats: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Fused training backward (call only where :func:`batch_norm_eligible`); ``None``
    where not requested.

    Args:
        stats: CPU only: the ``(5, C)`` statistics of :func:`train_forward` in place of
            ``inv_std``, ``pivot`` and ``offset`` (pass None for those); its rows are
            read in place, which saves making three views on small inputs.
    """
    if x.is_cuda:
        return _triton_bn.train_backward(
            grad_y, x, weight, inv_std, pivot, offset, needs_input_grad
        )
    shape = x.shape
    n, c = shape[0], shape[1]
    if stats is None:
        inv_std_ptr, pivot_ptr, offset_ptr = inv_std.data_ptr(), pivot.data_ptr(), offset.data_ptr()
    else:
        row = c * stats.element_size()
        inv_std_ptr = stats.data_ptr() + 2 * row
        pivot_ptr, offset_ptr = inv_std_ptr + row, inv_std_ptr + 2 * row
    args = (
        grad_y.data_ptr(),
        x.data_ptr(),
        n,
        c,
        x.numel() // (n * c),
        0 if weight is None else weight.data_ptr(),
        inv_std_ptr,
        pivot_ptr,
        offset_ptr,
    )
    return _backward("train_backward", x, args, c, needs_input_grad, _empty_like)


def eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Fused eval forward ``(x - running_mean) * weight / sqrt(running_var + eps) + bias``."""
    if x.is_cuda:
        return _triton_bn.eval_forward(x, running_mean, running_var, weight, bias, eps)
    y = _empty_like(x)
    shape = x.shape
    n, c = shape[0], shape[1]
    _fns["eval_forward", x.dtype](
        _pack_eval_forward(
            x.data_ptr(),
            y.data_ptr(),
            n,
            c,
            x.numel() // (n * c),
            running_mean.data_ptr(),
            running_var.data_ptr(),
            0 if weight is None else weight.data_ptr(),
            0 if bias is None else bias.data_ptr(),
            eps,
            torch.get_num_threads(),
        )
    )
    return y


def is_transformed(x: Tensor) -> bool:
    """Whether ``x`` is traced or transformed (torch.compile, vmap, torch.func.grad): the
    kernels read raw memory, so such calls take the torch-ops path."""
    return (
        torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or torch._C._functorch.is_functorch_wrapped_tensor(x)
    )


def _norm_input_fits(x: object) -> bool:
    """The first question of the group-norm, layer-norm and pooling dispatch: the fast
    path switched on, and ``x`` a CPU tensor of a dtype the library has."""
    return _enabled and not _failed and isinstance(x, Tensor) and x.dtype in _DTYPES and x.is_cpu


def _norm_params_fit(
    dtype: torch.dtype, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None
) -> bool:
    """The last question of the group- and layer-norm dispatch: ``weight`` and ``bias``
    None or contiguous CPU tensors of ``shape`` and ``dtype``; then the library (built on
    the first yes)."""
    for t in (weight, bias):
        if t is not None and (
            t.dtype != dtype or not t.is_cpu or t.shape != shape or not t.is_contiguous()
        ):
            return False
    return _lib is not None or _library() is not None


def group_norm_eligible(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None
) -> bool:
    """The group-norm dispatch: whether group norm of ``x`` with ``num_groups`` groups
    takes the kernels.

    CPU ``x`` of dtype float32/float64, contiguous ``(N, C, *)`` with at least one
    element, ``num_groups`` dividing ``C``, ``weight``/``bias`` contiguous ``(C,)`` of
    ``x``'s dtype or None; the fast path switched on and the library built (builds it on
    the first yes); not under torch.compile or functorch transforms (vmap, grad). No
    size threshold: the torch-ops path of group norm costs several times the ctypes
    call even on small inputs. Autograd is not checked: the kernels
    are not differentiable, the caller wraps them in a ``torch.autograd.Function``
    (``bnlab.autograd.group_norm``) when autograd records. Arguments are not validated
    here (the caller checks eps).
    """
    if not _norm_input_fits(x):
        return False
    if x.dim() < 2 or x.numel() == 0 or not x.is_contiguous() or is_transformed(x):
        return False
    c = x.shape[1]
    if type(num_groups) is not int or num_groups <= 0 or c % num_groups != 0:
        return False
    return _norm_params_fit(x.dtype, (c,), weight, bias)


def group_forward(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """Fused group-norm forward (call only where :func:`group_norm_eligible`).

    Returns:
        ``(y, stats)``: ``stats`` a ``(3, N * num_groups)`` tensor of rows inv_std, pivot
        (the group's first element), offset (mean - pivot), for :func:`group_backward`.
    """
    n, c = x.shape[0], x.shape[1]
    dims = (n, c, x.numel() // (n * c), num_groups)
    return _norm_forward("group_forward", x, dims, n * num_groups, weight, bias, eps)


def group_backward(
    grad_y: Tensor,
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    stats: Tensor,
    needs_input_grad: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Fused group-norm backward: ``(grad_x, grad_weight, grad_bias)``, None where not
    requested. ``grad_y`` contiguous like ``x``; ``stats`` from :func:`group_forward`."""
    n, c = x.shape[0], x.shape[1]
    args = (
        grad_y.data_ptr(),
        x.data_ptr(),
        n,
        c,
        x.numel() // (n * c),
        num_groups,
        0 if weight is None else weight.data_ptr(),
        stats.data_ptr(),
    )
    return _backward("group_backward", x, args, c, needs_input_grad, _norm_empty_like)


def layer_norm_eligible(
    x: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None
) -> bool:
    """The layer-norm dispatch: whether layer norm of ``x`` over its trailing
    ``normalized_shape`` takes the kernels: as :func:`group_norm_eligible`, with the
    trailing dims of ``x`` equal to ``normalized_shape`` (a tuple of ints) and
    ``weight``/``bias`` contiguous tensors of shape ``normalized_shape`` of ``x``'s dtype
    or None. Arguments are not validated here (the caller checks eps)."""
    if not _norm_input_fits(x):
        return False
    k = len(normalized_shape)
    if x.dim() < k or k == 0 or x.numel() == 0 or not x.is_contiguous():
        return False
    if x.shape[x.dim() - k :] != normalized_shape or is_transformed(x):
        return False
    return _norm_params_fit(x.dtype, normalized_shape, weight, bias)


def layer_forward(
    x: Tensor, normalized_numel: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """Fused layer-norm forward (call only where :func:`layer_norm_eligible`).

    Returns:
        ``(y, stats)``: ``stats`` a ``(3, R)`` tensor (``R = x.numel() /
        normalized_numel`` rows) of rows inv_std, pivot, offset, for :func:`layer_backward`.
    """
    rows = x.numel() // normalized_numel
    dims = (rows, normalized_numel)
    return _norm_forward("layer_forward", x, dims, rows, weight, bias, eps)


def layer_backward(
    grad_y: Tensor,
    x: Tensor,
    normalized_numel: int,
    weight: Tensor | None,
    stats: Tensor,
    needs_input_grad: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Fused layer-norm backward: ``(grad_x, grad_weight, grad_bias)``, None where not
    requested; the parameter gradients are flat ``(normalized_numel,)``."""
    args = (
        grad_y.data_ptr(),
        x.data_ptr(),
        x.numel() // normalized_numel,
        normalized_numel,
        0 if weight is None else weight.data_ptr(),
        stats.data_ptr(),
    )
    return _backward(
        "layer_backward", x, args, normalized_numel, needs_input_grad, _norm_empty_like
    )


def avg_pool2_eligible(x: Tensor) -> bool:
    """The 2x2 average-pooling dispatch (kernel 2, stride 2, no padding, floor mode: the
    caller checks those): a contiguous float32/float64 CPU ``(N, C, H, W)`` input with
    even ``H`` and ``W`` and at least :data:`MIN_NUMEL` elements, outside
    ``torch.compile`` and functorch transforms; the switch on and the library built."""
    if not _norm_input_fits(x):
        return False
    if (
        x.dim() != 4
        or x.shape[2] % 2
        or x.shape[3] % 2
        or x.numel() < MIN_NUMEL
        or not x.is_contiguous()
        or is_transformed(x)
    ):
        return False
    return _lib is not None or _library() is not None


def _avg_pool2(name: str, source: Tensor, out: Tensor, shape: torch.Size) -> Tensor:
    n, c, h, w = shape
    _fns[name, source.dtype](
        _PACK[name](source.data_ptr(), out.data_ptr(), n * c, h, w, torch.get_num_threads())
    )
    return out


def avg_pool2_forward(x: Tensor) -> Tensor:
    """2x2 average pooling, stride 2 (call only where :func:`avg_pool2_eligible`):
    ``(N, C, H, W) -> (N, C, H/2, W/2)``, each output the sum of its window in torch's
    order, divided by 4."""
    n, c, h, w = x.shape
    return _avg_pool2("avg_pool2_forward", x, x.new_empty((n, c, h // 2, w // 2)), x.shape)


def avg_pool2_backward(grad_y: Tensor, shape: torch.Size) -> Tensor:
    """The gradient of :func:`avg_pool2_forward` for an input of ``shape``: ``grad_y / 4``
    spread over each window (``grad_y`` contiguous, of the input's dtype)."""
    return _avg_pool2("avg_pool2_backward", grad_y, grad_y.new_empty(shape), shape)
