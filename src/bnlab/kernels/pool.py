"""The output pool of the kernels: anonymous mappings for large outputs, reused.

A fresh CPU tensor above glibc's mmap threshold (at most 32 MiB) is a new mapping whose
4 KiB pages fault on first touch, which costs more than the arithmetic of a
normalization. :class:`OutputPool` keeps this package's own mappings and hands one out
again, already faulted in, once no tensor uses it.

How "no tensor uses it" is known: a tensor made by :meth:`OutputPool.empty` holds its
mapping through the buffer protocol (``torch.frombuffer`` keeps one reference to the
``mmap`` object per live storage), so a mapping whose only references are the pool's
is free. That reads ``sys.getrefcount``, whose value is a CPython detail, and relies on
torch keeping the exporting object alive; both are checked on the pool's first use
(:meth:`OutputPool.reuse_works`, a probe tensor on a probe mapping): where either fails,
the pool never reuses a mapping (every output is a fresh mapping, correct and slower),
and ``tests/kernels/test_internals.py`` fails loudly so that the change is noticed.
"""

from __future__ import annotations

import math
import mmap
import sys
import threading

import torch
from torch import Tensor

__all__ = ["OutputPool"]


class OutputPool:
    """Anonymous mappings for large outputs, reused once no tensor uses them.

    Free mappings beyond ``max_free_bytes`` are unmapped (oldest first); 0 turns reuse
    off.
    """

    def __init__(self, max_free_bytes: int) -> None:
        self.max_free_bytes = max_free_bytes
        self._maps: list[mmap.mmap] = []
        self._lock = threading.Lock()
        # The reference count of a mapping only the pool holds, seen from _is_free called
        # on a loop variable over a list (the count depends on the interpreter's calling
        # convention, so it is measured, not assumed).
        self._free_refs = 0
        probes = [mmap.mmap(-1, mmap.PAGESIZE)]
        for probe in probes:
            self._free_refs = self._refs(probe)
        self._reuse: bool | None = None  # checked on first use (reuse_works)

    def _refs(self, buf: mmap.mmap) -> int:
        return sys.getrefcount(buf)

    def _is_free(self, buf: mmap.mmap) -> bool:
        # Same call depth as _refs in __init__, so the same count means "only the pool".
        return sys.getrefcount(buf) <= self._free_refs

    def reuse_works(self) -> bool:
        """Whether this interpreter and torch let the pool tell a used mapping from a free
        one: a probe mapping with a tensor on it (and with only a view of that tensor
        left) reads as used, and as free once the tensors are gone. Measured once."""
        if self._reuse is None:
            probes = [mmap.mmap(-1, mmap.PAGESIZE)]
            ok = True
            for probe in probes:
                ok = ok and self._is_free(probe)
                t = self._tensor_on(probe, (16,), torch.float32)
                ok = ok and not self._is_free(probe)
                view = t[2:4]
                del t
                ok = ok and not self._is_free(probe)
                del view
                ok = ok and self._is_free(probe)
            self._reuse = ok
        return self._reuse

    def free_bytes(self) -> int:
        """Bytes of mappings that no tensor uses."""
        with self._lock:
            return sum(len(b) for b in self._maps if self._is_free(b))

    def mapped_bytes(self) -> int:
        """Bytes of every mapping the pool holds, used or free."""
        with self._lock:
            return sum(len(b) for b in self._maps)

    def _take(self, nbytes: int) -> mmap.mmap:
        with self._lock:
            free = []
            for buf in self._maps:
                if self._is_free(buf):
                    if len(buf) == nbytes:
                        return buf
                    free.append(buf)
            # Unmap the oldest free mappings beyond the cap (list order = creation order).
            total = sum(len(b) for b in free)
            for buf in free:
                if total <= self.max_free_bytes:
                    break
                self._maps.remove(buf)
                total -= len(buf)
            del free
            buf = mmap.mmap(-1, nbytes)
            if hasattr(mmap, "MADV_HUGEPAGE"):
                buf.madvise(mmap.MADV_HUGEPAGE)
            if self.max_free_bytes > 0 and (self._reuse or self.reuse_works()):
                self._maps.append(buf)
            return buf

    @staticmethod
    def _tensor_on(buf: mmap.mmap, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        storage = torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()
        # set_ on a fresh tensor, not .view: a view returned by a custom Function cannot
        # be modified in place (ReLU(inplace=True) after BN).
        return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))

    def empty(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> Tensor:
        """An uninitialised contiguous CPU tensor on a (possibly reused) mapping."""
        nbytes = math.prod(shape) * dtype.itemsize
        return self._tensor_on(self._take(nbytes), shape, dtype)
