"""Building and loading the C++ kernels (``bn_kernels.cpp``) as a ``ctypes`` library.

Two ways to the library, tried in this order by :func:`load`:

1. **Prebuilt** (an installed wheel): ``setup.py`` compiles the source when the wheel is
   built (:func:`build_prebuilt`), with portable flags, once per instruction-set level
   of :data:`VARIANTS` (x86-64: ``x86-64-v4`` (AVX-512), ``x86-64-v3`` (AVX2, FMA) and
   the baseline; other machines: one baseline build), into ``_bn_kernels.<level>.so``
   beside this file, with a manifest (``_bn_kernels.json``: the source's SHA-256, the ABI,
   the levels, the compiler and flags). :func:`load` picks the best level the CPU runs
   (its ``/proc/cpuinfo`` flags). The library uses no torch and no Python headers, so one
   build serves every torch and Python version. A manifest whose hash differs from
   ``bn_kernels.cpp`` beside it (a source checkout whose source changed since) is
   ignored.
2. **Compiled at first use** (a source checkout, an editable install, or a prebuilt
   library that does not load here): the machine's C++ compiler (``g++``/``c++``; about
   3 s of CPU) with :data:`FLAGS` (``-march=native``), after one
   :class:`KernelBuildWarning` line, into ``$XDG_CACHE_HOME/bnlab/fast_bn/<key>/`` (else
   ``~/.cache/bnlab/fast_bn/<key>/``). The key hashes the source, the flags and the
   CPU's model name and feature flags, so a home directory shared by machines of
   different CPUs keeps one build per CPU. Built under a file lock so that concurrent
   processes (test workers) compile once.

Batch norm's C++ autograd node (``bn_node.cpp``, ``bnlab.kernels.train_node``) is built
apart, by :func:`build_node`: it includes torch's headers and links torch's libraries, so
it is compiled at first use against the installed torch (about 10 s, one
:class:`KernelBuildWarning` line) into ``node-<key>/`` of the same cache, keyed by its
source, flags and the torch version; it holds no arithmetic (it calls the kernels of the
library above), so it needs no ``-march`` level and no prebuilt copy.

This module imports only the standard library (``filelock``, a torch dependency, when it
compiles at first use), so that ``setup.py`` can run it without torch; the dispatch state
(loaded library, failure, warning) lives in ``bnlab.kernels``. Reading
``XDG_CACHE_HOME`` is the one environment read below the CLI: where a cache belongs is
the user's setting, as for torch's own caches.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

__all__ = [
    "ABI_VERSION",
    "COMPILERS",
    "FLAGS",
    "MANIFEST",
    "PORTABLE_FLAGS",
    "SOURCE",
    "VARIANTS",
    "KernelBuildWarning",
    "Loaded",
    "TorchBuild",
    "build_node",
    "build_prebuilt",
    "default_cache_dir",
    "load",
    "node_path",
    "prebuilt_path",
]

SOURCE = Path(__file__).with_name("bn_kernels.cpp")
ABI_VERSION = 7
COMPILERS = ("g++", "c++", "clang++")
# Compile at first use: this machine only, so its whole instruction set.
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17")
# Prebuilt (wheel) libraries: no -march=native; each level adds its -march below.
PORTABLE_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared", "-std=c++17")
MANIFEST = "_bn_kernels.json"
# The autograd node (bn_node.cpp): C++ against torch's headers, no arithmetic of its own.
NODE_SOURCE = Path(__file__).with_name("bn_node.cpp")
NODE_FLAGS = ("-O2", "-fPIC", "-shared", "-std=c++20")
NODE_LIBRARIES = ("-ltorch_cpu", "-ltorch", "-lc10")

_X86_V3 = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "abm", "xsave"})
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
# The prebuilt levels per machine, best first: (level, its -march flags, the
# /proc/cpuinfo flags a CPU needs to run it). The last level of each runs everywhere.
VARIANTS: dict[str, tuple[tuple[str, tuple[str, ...], frozenset[str]], ...]] = {
    "x86_64": (
        ("x86-64-v4", ("-march=x86-64-v4", "-mtune=generic"), _X86_V4),
        ("x86-64-v3", ("-march=x86-64-v3", "-mtune=generic"), _X86_V3),
        ("x86-64", ("-march=x86-64", "-mtune=generic"), frozenset()),
    ),
}
_GENERIC = (("generic", (), frozenset()),)

# Settings, module attributes so that tests can point them elsewhere. cache_dir None:
# default_cache_dir(); prebuilt_dir: where the wheel's libraries lie.
cache_dir: Path | None = None
compilers: tuple[str, ...] = COMPILERS
prebuilt_dir: Path = Path(__file__).parent


class KernelBuildWarning(UserWarning):
    """The kernels are being compiled at first use (a source checkout): one line, shown by
    default (a ``UserWarning``), so that the pause of a few seconds has a reason."""


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A loaded library: ``origin`` is ``"prebuilt"`` (the wheel's, ``level`` its
    instruction-set level), ``"cached"`` (compiled at first use earlier) or
    ``"compiled"`` (compiled by this call, in ``seconds``). ``skipped``: why a prebuilt
    library was not used, or ``""``."""

    lib: ctypes.CDLL
    path: Path
    origin: str
    level: str = "native"
    seconds: float = 0.0
    skipped: str = ""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bnlab/fast_bn`` (an absolute ``XDG_CACHE_HOME`` only, as the XDG
    spec says), else ``~/.cache/bnlab/fast_bn``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "bnlab" / "fast_bn"


def _source_hash(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def _cpu_id() -> str:
    # -march=native code must not run on another CPU sharing the same home directory.
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (``/proc/cpuinfo``), None where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def _key() -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), _cpu_id().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _find_compiler(candidates: tuple[str, ...]) -> str:
    compiler = next((c for c in candidates if shutil.which(c)), None)
    if compiler is None:
        raise RuntimeError(f"no C++ compiler found (looked for {', '.join(candidates)})")
    return compiler


def _compile(
    out: Path,
    *,
    flags: tuple[str, ...] | None = None,
    compiler: str | None = None,
    source: Path = SOURCE,
    link: tuple[str, ...] = (),
) -> None:
    """Compile ``source`` (default :data:`SOURCE`) into ``out`` (atomically) with
    ``flags`` (default :data:`FLAGS`); ``link``: arguments after the source (libraries).

    Raises:
        RuntimeError: no compiler, or the compiler failed (its last line of output).
    """
    compiler = compiler or _find_compiler(compilers)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [compiler, *(FLAGS if flags is None else flags), "-o", tmp, str(source), *link],
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


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.bnlab_fast_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{path} has ABI {lib.bnlab_fast_abi_version()}, want {ABI_VERSION}")
    return lib


def _levels(machine: str) -> tuple[tuple[str, tuple[str, ...], frozenset[str]], ...]:
    return VARIANTS.get(machine, _GENERIC)


def prebuilt_path(folder: Path, level: str) -> Path:
    """The prebuilt library of ``level`` in ``folder``."""
    return folder / f"_bn_kernels.{level}.so"


def build_prebuilt(
    folder: Path, *, compiler: str | None = None, machine: str | None = None
) -> dict[str, object]:
    """Compile the portable libraries of ``machine`` (default: this one) into ``folder``
    and write the manifest there (``setup.py`` calls this when the wheel is built).

    Returns:
        The manifest.

    Raises:
        RuntimeError: no compiler, or a compile failed.
    """
    compiler = compiler or _find_compiler(compilers)
    levels = _levels(machine or platform.machine())
    folder.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(levels)) as pool:
        jobs = [
            pool.submit(
                _compile,
                prebuilt_path(folder, level),
                flags=(*PORTABLE_FLAGS, *march),
                compiler=compiler,
            )
            for level, march, _ in levels
        ]
        for job in jobs:
            job.result()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout.partition("\n")[0]
    manifest: dict[str, object] = {
        "abi": ABI_VERSION,
        "source_sha256": _source_hash(SOURCE),
        "levels": [level for level, _, _ in levels],
        "flags": {level: " ".join((*PORTABLE_FLAGS, *march)) for level, march, _ in levels},
        "compiler": version or compiler,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _load_prebuilt(folder: Path) -> tuple[Loaded | None, str]:
    """The best prebuilt library of ``folder`` this CPU runs, or None and why not ("" when
    there is none at all)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError) as err:
        return None, f"unreadable {folder / MANIFEST}: {err}"
    source = folder / SOURCE.name
    if source.exists() and manifest.get("source_sha256") != _source_hash(source):
        return None, f"{source.name} changed since the prebuilt libraries were built"
    cpu = _cpu_flags()
    known = {level: needs for level, _, needs in _levels(platform.machine())}
    for level in manifest.get("levels", []):
        needs = known.get(level)
        if needs is None or (needs and (cpu is None or not needs <= cpu)):
            continue
        path = prebuilt_path(folder, level)
        try:
            return Loaded(_open(path), path, "prebuilt", level), ""
        except (OSError, RuntimeError, AttributeError) as err:
            return None, f"{path.name} does not load: {type(err).__name__}: {err}"
    return None, f"no prebuilt level of {manifest.get('levels')} runs on this CPU"


def load() -> Loaded:
    """The kernels' library: the prebuilt one where it loads, else compiled at first use
    (or found in the cache).

    Raises:
        RuntimeError: no compiler, a failed compile, or a library of another ABI.
        OSError: the library does not load.
    """
    loaded, skipped = _load_prebuilt(prebuilt_dir)
    if loaded is not None:
        return loaded
    from filelock import FileLock  # a torch dependency

    folder = (cache_dir or default_cache_dir()) / _key()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bn_kernels.so"
    origin, seconds = "cached", 0.0
    if not path.exists():
        with FileLock(str(folder / "build.lock"), timeout=600):
            if not path.exists():  # another process may have built it meanwhile
                compiler = _find_compiler(compilers)
                _announce(f"compiling the C++ kernels for this CPU with {compiler} into {folder}")
                start = time.perf_counter()
                _compile(path, compiler=compiler)
                origin, seconds = "compiled", time.perf_counter() - start
    return Loaded(_open(path), path, origin, seconds=seconds, skipped=skipped)


@dataclasses.dataclass(frozen=True)
class TorchBuild:
    """What compiling against the installed torch needs (``bnlab.kernels`` fills it from
    ``torch.utils.cpp_extension``, as this module imports no torch): the version (part of
    the cache key: the C++ ABI changes between releases), include and library folders,
    and the compiler flags torch was built with (``-D_GLIBCXX_USE_CXX11_ABI=...``)."""

    version: str
    include_dirs: tuple[str, ...]
    library_dirs: tuple[str, ...]
    flags: tuple[str, ...]


def node_path(torch_build: TorchBuild) -> Path:
    """Where the autograd-node library for ``torch_build`` lies once built: the cache
    folder keyed by its source, the flags and the torch version (no CPU: the node holds
    no arithmetic)."""
    h = hashlib.sha256()
    for part in (
        NODE_SOURCE.read_bytes(),
        " ".join((*NODE_FLAGS, *torch_build.flags)).encode(),
        torch_build.version.encode(),
        "\n".join(torch_build.include_dirs).encode(),
    ):
        h.update(part)
        h.update(b"\0")
    return (cache_dir or default_cache_dir()) / f"node-{h.hexdigest()[:16]}" / "bn_node.so"


def build_node(torch_build: TorchBuild) -> tuple[Path, float]:
    """Compile ``bn_node.cpp`` against the installed torch at first use (about 10 s of
    CPU, after one :class:`KernelBuildWarning` line), or find it in the cache; built
    under a file lock, so concurrent processes compile once.

    Returns:
        The library's path and the seconds spent compiling (0.0 when cached).

    Raises:
        RuntimeError: no compiler, or the compile failed.
    """
    path = node_path(torch_build)
    if path.exists():
        return path, 0.0
    from filelock import FileLock  # a torch dependency

    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    with FileLock(str(path.parent / "build.lock"), timeout=600):
        if not path.exists():  # another process may have built it meanwhile
            compiler = _find_compiler(compilers)
            _announce(
                f"compiling batch norm's C++ autograd node against torch "
                f"{torch_build.version} with {compiler} into {path.parent}",
                pause="about ten seconds",
            )
            start = time.perf_counter()
            includes = tuple(f"-I{d}" for d in torch_build.include_dirs)
            _compile(
                path,
                flags=(*NODE_FLAGS, *torch_build.flags, *includes),
                compiler=compiler,
                source=NODE_SOURCE,
                link=(
                    *(f"-L{d}" for d in torch_build.library_dirs),
                    *NODE_LIBRARIES,
                ),
            )
            seconds = time.perf_counter() - start
    return path, seconds


def _announce(message: str, pause: str = "a few seconds") -> None:
    """One :class:`KernelBuildWarning` line; never raises (a filter that turns warnings into
    errors must not cost the fast path)."""
    with contextlib.suppress(Warning):
        warnings.warn(
            f"bnlab: {message} (first use only, {pause})", KernelBuildWarning, stacklevel=2
        )
