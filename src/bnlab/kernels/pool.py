"""The output pool of the kernels: large output buffers, reused once no tensor uses them.

A fresh CPU tensor above glibc's mmap threshold (at most 32 MiB) is a new mapping whose
4 KiB pages fault on first touch, which costs more than the arithmetic of a
normalization. :class:`OutputPool` keeps this package's large output storages and hands
one out again, already faulted in, once no tensor uses it.

The buffers are ordinary torch storages (``torch.UntypedStorage``, from torch's own CPU
allocator), so a pooled output behaves as any other tensor: it can be ``resize_()``d,
pickled, shared with other processes, and ``fork()`` copies it on write (glibc maps
large blocks ``MAP_PRIVATE``). The first version of this pool used ``mmap.mmap(-1, n)``,
which is ``MAP_SHARED``: after a fork, parent and child wrote the same pages (issue 19).
In a child process the pool also starts empty (``os.register_at_fork``), so a child
never holds on to the parent's free buffers.

How "no tensor uses it" is known: every tensor made by :meth:`OutputPool.empty` (and
every view of it) holds a reference to the storage's C++ object
(``torch._C._storage_Use_Count``), and a Python ``UntypedStorage`` object of it holds a
reference to the pool's own Python object (``sys.getrefcount``). A storage is free when
both counts are the pool's own. Both are checked on the pool's first use
(:meth:`OutputPool.reuse_works`, a probe tensor, view and storage object): where either
fails, the pool never reuses a buffer (every output is fresh, correct and slower), and
``tests/kernels/test_internals.py`` fails loudly so that the change is noticed.

Memory given back: the free buffers kept are bounded three ways. At most
``max_free_bytes``; at most twice the bytes that were in use at once during the recent
calls (the working set of a training step: its outputs and gradients); and none that
at all once the pool has handed out nothing for ``max_idle_s`` seconds (a daemon timer
thread, alive only while the pool holds buffers). Buffers beyond the first two bounds
are released, least recently used first, at the next call that takes a buffer (or at
:meth:`OutputPool.trim`); released memory is returned to the system
(``madvise(MADV_DONTNEED)`` on the buffer's pages, then freed), so the resident size
shrinks even where glibc keeps the block in its heap.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["OutputPool"]

# Takes per window of the in-use peak: the bound "twice the recent peak" looks at the
# current and the previous window.
_WINDOW_TAKES = 64
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _libc_madvise() -> object | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _libc_madvise() if sys.platform.startswith("linux") else None


def _advise(storage: torch.UntypedStorage, advice: int | None) -> None:
    """``madvise`` the whole pages inside ``storage`` (none where there are none)."""
    if _madvise is None or advice is None:
        return
    page = mmap.PAGESIZE
    start = -(-storage.data_ptr() // page) * page
    end = (storage.data_ptr() + storage.nbytes()) // page * page
    if end > start:
        _madvise(start, end - start, advice)


@dataclass
class _Slot:
    storage: torch.UntypedStorage
    cdata: int
    last_used: float


class OutputPool:
    """Large output storages, reused once no tensor uses them.

    Args:
        max_free_bytes: at most this many bytes of free buffers are kept (0 turns reuse
            off).
        max_idle_s: when no buffer was taken for this many seconds, the free buffers are
            released (a timer thread, running only while the pool holds buffers; 0: no
            timer).
    """

    def __init__(self, max_free_bytes: int, *, max_idle_s: float = 2.0) -> None:
        self.max_free_bytes = max_free_bytes
        self.max_idle_s = max_idle_s
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._reuse: bool | None = None  # checked on first use (reuse_works)
        self._takes = 0
        self._peak = [0, 0]  # in-use peak of the previous and the current window
        self._last_take = 0.0
        self._timer: threading.Timer | None = None
        # The Python reference count of a storage object only the pool holds, seen from
        # _is_free on a slot of the list (measured, not assumed: it depends on the
        # interpreter's calling convention).
        probe = _Slot(torch.UntypedStorage(16), 0, 0.0)
        probes = [probe]
        del probe
        for slot in probes:
            self._free_refs = sys.getrefcount(slot.storage)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (p := ref()) is not None and p._forget())

    def _forget(self) -> None:
        """In a forked child: drop every buffer (tensors still using one keep it)."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._slots = []
        self._peak = [0, 0]
        self._timer = None  # threads do not survive a fork

    def _is_free(self, slot: _Slot) -> bool:
        return _use_count(slot.cdata) <= 1 and sys.getrefcount(slot.storage) <= self._free_refs

    def reuse_works(self) -> bool:
        """Whether this interpreter and torch let the pool tell a used buffer from a free
        one: a probe storage with a tensor on it (or only a view of that tensor, or only
        its storage object) reads as used, and as free once they are gone. Measured once."""
        if self._reuse is None:
            ok = _use_count is not None
            if ok:
                storage = torch.UntypedStorage(64)
                probes = [_Slot(storage, storage._cdata, 0.0)]
                del storage
                for probe in probes:
                    ok = ok and self._is_free(probe)
                    t = self._tensor_on(probe.storage, (16,), torch.float32)
                    ok = ok and not self._is_free(probe)
                    view = t[2:4]
                    del t
                    ok = ok and not self._is_free(probe)
                    del view
                    ok = ok and self._is_free(probe)
                    t = self._tensor_on(probe.storage, (16,), torch.float32)
                    held = t.untyped_storage()
                    del t
                    ok = ok and not self._is_free(probe)
                    del held
                    ok = ok and self._is_free(probe)
            self._reuse = ok
        return self._reuse

    def free_bytes(self) -> int:
        """Bytes of buffers that no tensor uses."""
        with self._lock:
            return sum(s.storage.nbytes() for s in self._slots if self._is_free(s))

    def mapped_bytes(self) -> int:
        """Bytes of every buffer the pool holds, used or free."""
        with self._lock:
            return sum(s.storage.nbytes() for s in self._slots)

    def trim(self, keep_bytes: int = 0) -> int:
        """Release free buffers (least recently used first) until at most ``keep_bytes``
        of them are left; returns the bytes released."""
        with self._lock:
            free = [s for s in self._slots if self._is_free(s)]
            return self._release(free, sum(s.storage.nbytes() for s in free) - keep_bytes)

    def _release(self, free: list[_Slot], excess: int) -> int:
        """Release the least recently used of ``free`` until ``excess`` bytes are gone
        (the lock held)."""
        released = 0
        for slot in sorted(free, key=lambda s: s.last_used):
            if released >= excess:
                break
            released += slot.storage.nbytes()
            self._slots.remove(slot)
            _advise(slot.storage, getattr(mmap, "MADV_DONTNEED", None))
        return released

    def _take(self, nbytes: int) -> torch.UntypedStorage:
        now = time.monotonic()
        with self._lock:
            self._last_take = now
            self._takes += 1
            if self._takes % _WINDOW_TAKES == 0:
                self._peak = [self._peak[1], 0]
            found = None
            free = []
            free_total = in_use = 0
            for slot in self._slots:
                size = slot.storage.nbytes()
                if not self._is_free(slot):
                    in_use += size
                elif found is None and size == nbytes:
                    found = slot
                else:
                    free.append(slot)
                    free_total += size
            in_use += nbytes
            self._peak[1] = max(self._peak[1], in_use)
            budget = min(self.max_free_bytes, 2 * max(self._peak))
            if free_total > budget:
                self._release(free, free_total - budget)
            if found is not None:
                found.last_used = now
                return found.storage
            storage = torch.UntypedStorage(nbytes)
            if nbytes >= 2 << 20:
                _advise(storage, getattr(mmap, "MADV_HUGEPAGE", None))
            if self.max_free_bytes > 0 and (self._reuse or self.reuse_works()):
                self._slots.append(_Slot(storage, storage._cdata, now))
                if self._timer is None and self.max_idle_s > 0:
                    self._arm()
            return storage

    def _arm(self) -> None:
        """Start the idle timer (the lock held)."""
        ref = weakref.ref(self)
        timer = threading.Timer(self.max_idle_s, lambda: (p := ref()) is not None and p._idle())
        timer.daemon = True  # never keeps the interpreter from exiting
        self._timer = timer
        timer.start()

    def _idle(self) -> None:
        """The idle timer: release every free buffer when no buffer was taken for
        ``max_idle_s``; runs again while the pool holds buffers."""
        with self._lock:
            self._timer = None
            if time.monotonic() - self._last_take >= self.max_idle_s:
                free = [s for s in self._slots if self._is_free(s)]
                self._release(free, sum(s.storage.nbytes() for s in free))
            if self._slots:
                self._arm()

    @staticmethod
    def _tensor_on(
        storage: torch.UntypedStorage, shape: tuple[int, ...], dtype: torch.dtype
    ) -> Tensor:
        # set_ on a fresh tensor, not .view: a view returned by a custom Function cannot
        # be modified in place (ReLU(inplace=True) after BN).
        return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))

    def empty(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> Tensor:
        """An uninitialised contiguous CPU tensor on a (possibly reused) buffer."""
        nbytes = math.prod(shape) * dtype.itemsize
        return self._tensor_on(self._take(nbytes), shape, dtype)
