"""Building and loading the C++ kernels (``bn_kernels.cpp``) as a ``ctypes`` library.

The library is compiled with the machine's C++ compiler (``g++``/``c++``; about 3 s of
CPU) on the first call that qualifies, cached under ``~/.cache/bnlab/fast_bn/<key>/``
(the key hashes the source, the flags and the CPU), built under a file lock so that
concurrent test workers compile once, and loaded with ``ctypes``. This module imports
only the standard library (``filelock``, a torch dependency, when it builds); the
dispatch state (loaded library, failure, warning) lives in ``bnlab.kernels``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ABI_VERSION", "COMPILERS", "FLAGS", "SOURCE", "load"]

SOURCE = Path(__file__).with_name("bn_kernels.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17")
COMPILERS = ("g++", "c++", "clang++")
ABI_VERSION = 6

# Build settings, module attributes so that tests can point them elsewhere.
cache_dir: Path = Path.home() / ".cache" / "bnlab" / "fast_bn"
compilers: tuple[str, ...] = COMPILERS


def _cpu_id() -> str:
    # -march=native code must not run on another CPU sharing the same home directory.
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _key() -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), _cpu_id().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _compile(out: Path) -> None:
    compiler = next((c for c in compilers if shutil.which(c)), None)
    if compiler is None:
        raise RuntimeError(f"no C++ compiler found (looked for {', '.join(compilers)})")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [compiler, *FLAGS, "-o", tmp, str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{compiler} failed with exit code {proc.returncode}: {last}")
        os.replace(tmp, out)  # atomic: readers never see a half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL:
    """The kernels' library, built first where the cache lacks it.

    Raises:
        RuntimeError: no compiler, a failed compile, or a library of another ABI.
        OSError: the library does not load.
    """
    from filelock import FileLock  # a torch dependency

    folder = cache_dir / _key()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bn_kernels.so"
    if not path.exists():
        with FileLock(str(folder / "build.lock"), timeout=600):
            if not path.exists():  # another process may have built it meanwhile
                _compile(path)
    lib = ctypes.CDLL(str(path))
    if lib.bnlab_fast_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{path} has ABI {lib.bnlab_fast_abi_version()}, want {ABI_VERSION}")
    return lib
