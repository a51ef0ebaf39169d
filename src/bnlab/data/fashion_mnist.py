"""Fashion-MNIST: the four files, their checksums, and how to find, fetch, verify and load them.

Dataset: H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", arXiv 1708.07747 (Zalando Research, MIT
License). 60,000 training and 10,000 test images, 28x28 grayscale, 10 classes.

Checksums. Each file is known by the md5 that Zalando publishes for the official
``.gz`` (and its sha256), and by the sha256 of its decompressed content. A folder may hold
either the official ``.gz`` files or decompressed copies (named without ``.gz``); both
verify. A ``.gz`` recompressed by other means (a different md5) is accepted too when its
decompressed content has the official sha256.

Where the data come from, in this order (:func:`resolve_data_dir`):

1. an explicit folder (the CLI's ``--data-dir``); used as given, an error if it does
   not hold the four files;
2. the value of ``BNLAB_DATA_DIR`` (read by the CLI, passed in here); the same;
3. the user cache, ``$XDG_CACHE_HOME/bnlab/fashion-mnist`` or
   ``~/.cache/bnlab/fashion-mnist`` (:func:`default_cache_dir`);
4. else a download into the user cache from Zalando's S3 mirror (:data:`MIRROR_URL`):
   streamed through ``urllib``, md5-checked, written to a temporary file in the same
   folder and moved into place with ``os.replace``, three tries.

This module never reads the environment and never prints: the CLI reads
``BNLAB_DATA_DIR`` and ``XDG_CACHE_HOME`` and passes them in, and download progress goes
to a callback.

Verification cache: a file that verified is remembered in memory, keyed by its resolved
path, size, modification time (ns), inode and the expected checksums, so loading the
same split again costs a ``stat`` instead of hashing 26 MB. Only successes are cached;
a file that changes is hashed again. :func:`clear_verification_cache` empties it.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import hashlib
import http.client
import os
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bnlab.data.idx import (
    GZIP_MAGIC,
    IdxFormatError,
    check_same_count,
    read_idx_images,
    read_idx_labels,
)

__all__ = [
    "CLASSES",
    "ENV_VAR",
    "FILES",
    "MIRROR_URL",
    "SPLITS",
    "ChecksumError",
    "DatasetNotFoundError",
    "DownloadError",
    "FileReport",
    "FileSpec",
    "FileStatus",
    "ProgressCallback",
    "clear_verification_cache",
    "default_cache_dir",
    "download_fashion_mnist",
    "load_fashion_mnist",
    "resolve_data_dir",
    "split_files",
    "text_labels",
    "verify_file",
    "verify_folder",
]

MIRROR_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
"""Zalando's official mirror (plain http; integrity comes from the md5 check)."""

ENV_VAR = "BNLAB_DATA_DIR"
"""The environment variable the CLI reads for a data folder (named in messages)."""

SPLITS = ("train", "test")

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names, indexed by label."""

ProgressCallback = Callable[[str, int, int | None], None]
"""``progress(file_name, bytes_done, bytes_total_or_None)``; called as bytes arrive, with
``bytes_done`` back at 0 when a try starts over, and ``done == total`` for a file that
was already there."""

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """One official file.

    Attributes:
        name: the official ``.gz`` file name, e.g. ``"train-images-idx3-ubyte.gz"``.
        split: ``"train"`` or ``"test"``.
        kind: ``"images"`` or ``"labels"``.
        count: number of examples the header must announce.
        md5: official md5 of the ``.gz`` (Zalando's README).
        sha256: sha256 of the official ``.gz``.
        size: size of the official ``.gz`` in bytes.
        raw_sha256: sha256 of the decompressed file.
        raw_size: size of the decompressed file in bytes.
        rows, cols: image size (images files only).
    """

    name: str
    split: str
    kind: str
    count: int
    md5: str
    sha256: str
    size: int
    raw_sha256: str
    raw_size: int
    rows: int = 28
    cols: int = 28

    @property
    def raw_name(self) -> str:
        """The decompressed file's name: ``name`` without ``.gz``."""
        return self.name.removesuffix(".gz")

    def url(self, base_url: str = MIRROR_URL) -> str:
        return base_url.rstrip("/") + "/" + self.name


FILES: tuple[FileSpec, ...] = (
    FileSpec(
        name="train-images-idx3-ubyte.gz",
        split="train",
        kind="images",
        count=60000,
        md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        size=26421880,
        raw_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        raw_size=47040016,
    ),
    FileSpec(
        name="train-labels-idx1-ubyte.gz",
        split="train",
        kind="labels",
        count=60000,
        md5="25c81989df183df01b3e8a0aad5dffbe",
        sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        size=29515,
        raw_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        raw_size=60008,
    ),
    FileSpec(
        name="t10k-images-idx3-ubyte.gz",
        split="test",
        kind="images",
        count=10000,
        md5="bef4ecab320f06d8554ea6380940ec79",
        sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        size=4422102,
        raw_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        raw_size=7840016,
    ),
    FileSpec(
        name="t10k-labels-idx1-ubyte.gz",
        split="test",
        kind="labels",
        count=10000,
        md5="bb300cfdad3c16e7a12a480ee83cd310",
        sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        size=5148,
        raw_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        raw_size=10008,
    ),
)
"""The four official files: train images, train labels, test images, test labels."""


class FileStatus(enum.StrEnum):
    """Outcome of verifying one file."""

    OK = "ok"
    MISSING = "missing"
    MISMATCH = "checksum mismatch"  # a well-formed IDX file, but not the official content
    CORRUPT = "corrupt"  # not a well-formed IDX file of the expected shape


@dataclass(frozen=True)
class FileReport:
    """The verdict on one file of a folder.

    Attributes:
        spec: the file expected.
        status: ok, missing, checksum mismatch or corrupt.
        path: the file checked (the ``.gz`` or the decompressed copy); ``None`` when
            missing.
        reason: one line saying why (or which checksum matched).
    """

    spec: FileSpec
    status: FileStatus
    path: Path | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.status is FileStatus.OK

    def __str__(self) -> str:
        return f"{self.spec.name}: {self.status}: {self.reason}"


class DatasetNotFoundError(FileNotFoundError):
    """The Fashion-MNIST files are not where they were looked for (and no download)."""


class ChecksumError(ValueError):
    """A file is there but is not the official one (checksum mismatch or corrupt).

    ``reports`` holds the reports of the files that failed.
    """

    def __init__(self, message: str, reports: Sequence[FileReport] = ()) -> None:
        super().__init__(message)
        self.reports = tuple(reports)


class DownloadError(OSError):
    """A file could not be downloaded intact after all tries."""


# --- verification -----------------------------------------------------------------------

_verified: dict[tuple[Any, ...], FileReport] = {}


def clear_verification_cache() -> None:
    """Forget every file verified so far (the next check hashes again)."""
    _verified.clear()


def _cache_key(path: Path, spec: FileSpec) -> tuple[Any, ...]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, spec)


def _hash_file(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file, in one pass."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def _content_sha256(path: Path) -> str | None:
    """sha256 of a gzip file's decompressed content; None when it does not decompress."""
    sha256 = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                sha256.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return sha256.hexdigest()


def _diagnose(path: Path, spec: FileSpec) -> str | None:
    """Why ``path`` is not a well-formed IDX file of the expected shape; None if it is."""
    try:
        if spec.kind == "images":
            read_idx_images(path, count=spec.count, rows=spec.rows, cols=spec.cols)
        else:
            read_idx_labels(path, count=spec.count)
    except IdxFormatError as exc:
        return exc.reason
    return None


def _short(digest: str) -> str:
    return digest[:12] + "…"


def _check_candidate(path: Path, spec: FileSpec) -> FileReport:
    """Verify one existing file against ``spec``."""
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    if compressed:
        md5, sha256 = _hash_file(path)
        if md5 == spec.md5 and sha256 == spec.sha256:
            return FileReport(spec, FileStatus.OK, path, f"md5 {md5} matches the official checksum")
        if _content_sha256(path) == spec.raw_sha256:
            return FileReport(
                spec,
                FileStatus.OK,
                path,
                f"recompressed copy: the .gz differs from the official one (md5 {_short(md5)})"
                " but its content matches the official sha256",
            )
        found, expected = f"md5 {md5}", f"the official {spec.md5}"
    else:
        # A raw copy named .gz is refused by the reader, so it cannot verify either.
        if path.stat().st_size == spec.raw_size and path.suffix != ".gz":
            _, sha256 = _hash_file(path)
            if sha256 == spec.raw_sha256:
                return FileReport(
                    spec,
                    FileStatus.OK,
                    path,
                    f"sha256 {_short(sha256)} matches the official decompressed file",
                )
        else:
            sha256 = "(not computed)"
        found, expected = f"sha256 {_short(sha256)}", f"the official {_short(spec.raw_sha256)}"
    problem = _diagnose(path, spec)
    if problem is not None:
        return FileReport(spec, FileStatus.CORRUPT, path, problem)
    shape = f"{spec.count} x {spec.rows} x {spec.cols}" if spec.kind == "images" else spec.count
    return FileReport(
        spec,
        FileStatus.MISMATCH,
        path,
        f"{found}, expected {expected}: a well-formed IDX {spec.kind} file ({shape}) with "
        "other content (another dataset, e.g. MNIST digits, or a modified copy)",
    )


def _check_folder_exists(folder: Path) -> None:
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder (pass the folder holding the files)")


def verify_file(
    spec: FileSpec, folder: str | os.PathLike[str], *, use_cache: bool = True
) -> FileReport:
    """Verify one official file in ``folder``, as ``.gz`` or decompressed copy.

    The ``.gz`` is tried first, then the decompressed copy; the first that verifies wins.
    When neither does, the report describes the first one found (and the other's
    problem, if both are there).

    Args:
        spec: the file expected (one of :data:`FILES`).
        folder: the folder to look in.
        use_cache: reuse an earlier success for an unchanged file (see the module doc).

    Returns:
        A :class:`FileReport`.

    Raises:
        FileNotFoundError, NotADirectoryError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    _check_folder_exists(folder)
    failures: list[FileReport] = []
    for name in (spec.name, spec.raw_name):
        path = folder / name
        if not path.is_file():
            continue
        key = _cache_key(path, spec)
        if use_cache and key in _verified:
            return _verified[key]
        report = _check_candidate(path, spec)
        if report.ok:
            _verified[key] = report
            return report
        failures.append(report)
    if not failures:
        return FileReport(
            spec,
            FileStatus.MISSING,
            None,
            f"not found: neither {spec.name} nor the decompressed {spec.raw_name} is in {folder}",
        )
    first = failures[0]
    if len(failures) == 1:
        return first
    other = failures[1]
    return FileReport(
        spec,
        first.status,
        first.path,
        f"{first.reason}; {other.path.name if other.path else ''}: {other.status}: {other.reason}",
    )


def verify_folder(
    folder: str | os.PathLike[str],
    *,
    files: Sequence[FileSpec] | None = None,
    use_cache: bool = True,
) -> list[FileReport]:
    """Verify the four Fashion-MNIST files in ``folder``.

    Args:
        folder: the folder to check.
        files: the files expected; default :data:`FILES`.
        use_cache: reuse earlier successes for unchanged files.

    Returns:
        One :class:`FileReport` per file, in the order of ``files``: ok, missing,
        checksum mismatch (a valid IDX file of the right shape with other content) or
        corrupt (with the IDX reader's reason: truncated, wrong magic, not gzip, ...).

    Raises:
        FileNotFoundError, NotADirectoryError: ``folder`` is not a folder.
    """
    specs = FILES if files is None else tuple(files)
    return [verify_file(spec, folder, use_cache=use_cache) for spec in specs]


# --- download ---------------------------------------------------------------------------


def _fetch_once(
    spec: FileSpec,
    url: str,
    folder: Path,
    *,
    timeout: float,
    progress: ProgressCallback | None,
    opener: Callable[..., Any],
) -> None:
    """Download ``url`` into ``folder/spec.name`` atomically; raise on any failure."""
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{spec.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        md5 = hashlib.md5(usedforsecurity=False)
        done = 0
        request = urllib.request.Request(url, headers={"User-Agent": "bnlab"})
        with os.fdopen(fd, "wb") as out, opener(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length") if response.headers else None
            total = int(length) if length and str(length).isdigit() else None
            if progress is not None:
                progress(spec.name, 0, total)
            while chunk := response.read(_HASH_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(spec.name, done, total)
            out.flush()
            os.fsync(out.fileno())
        if md5.hexdigest() != spec.md5:
            raise _ChecksumMismatch(
                f"md5 {md5.hexdigest()} of the {done} bytes received, expected the official "
                f"{spec.md5} ({spec.size} bytes)"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared
        os.replace(tmp, folder / spec.name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class _ChecksumMismatch(Exception):
    """A download completed with the wrong md5 (retried like a network error)."""


def download_fashion_mnist(
    folder: str | os.PathLike[str],
    *,
    files: Sequence[FileSpec] | None = None,
    base_url: str = MIRROR_URL,
    tries: int = 3,
    timeout: float = 60.0,
    retry_wait: float = 1.0,
    progress: ProgressCallback | None = None,
    opener: Callable[..., Any] | None = None,
) -> list[FileReport]:
    """Download the files that ``folder`` lacks (or holds damaged), verifying each.

    Files that already verify are kept. Each download streams into a temporary file in
    ``folder`` (``.NAME.XXXX.part``), is checked against the official md5 and only then
    moved to its name with ``os.replace``, so ``folder`` never holds a partial file
    under an official name, even after a failure or an interruption.

    Args:
        folder: where to put the files; created if needed.
        files: the files to fetch; default :data:`FILES`.
        base_url: the mirror; default Zalando's (:data:`MIRROR_URL`).
        tries: attempts per file (network errors and md5 mismatches both retry).
        timeout: seconds without an answer before a try fails.
        retry_wait: seconds before the second try, twice that before the third, ...
        progress: ``progress(name, bytes_done, bytes_total_or_None)``, see
            :data:`ProgressCallback`.
        opener: ``opener(request, timeout=...)`` returning a response with ``read(n)``
            and ``headers``, used as a context manager; default
            ``urllib.request.urlopen`` (tests pass a fake).

    Returns:
        The report of each file after the download, all ok.

    Raises:
        DownloadError: a file still failed after ``tries`` attempts; the message has the
            URL and the reason of each try.
        OSError: ``folder`` cannot be created or written.
        ValueError: ``tries`` < 1 or ``timeout`` <= 0.
    """
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ValueError(f"download_fashion_mnist: tries must be an int >= 1, got {tries!r}")
    if timeout <= 0:
        raise ValueError(f"download_fashion_mnist: timeout must be > 0 seconds, got {timeout}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = FILES if files is None else tuple(files)
    open_url = opener if opener is not None else urllib.request.urlopen
    reports = []
    for spec in specs:
        report = verify_file(spec, folder)
        if report.ok:
            if progress is not None:
                size = report.path.stat().st_size if report.path else 0
                progress(spec.name, size, size)
            reports.append(report)
            continue
        url = spec.url(base_url)
        errors: list[str] = []
        for attempt in range(1, tries + 1):
            if attempt > 1 and retry_wait > 0:
                time.sleep(retry_wait * (attempt - 1))
            try:
                _fetch_once(spec, url, folder, timeout=timeout, progress=progress, opener=open_url)
            except _ChecksumMismatch as exc:
                errors.append(f"try {attempt}: {exc}")
                continue
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"try {attempt}: {type(exc).__name__}: {exc}")
                continue
            break
        else:
            raise DownloadError(
                f"could not download {url} into {folder} after {tries} "
                f"tr{'y' if tries == 1 else 'ies'}: " + "; ".join(errors)
            )
        path = folder / spec.name
        report = FileReport(
            spec, FileStatus.OK, path, f"downloaded; md5 {spec.md5} matches the official checksum"
        )
        _verified[_cache_key(path, spec)] = report
        reports.append(report)
    return reports


# --- where the data are -----------------------------------------------------------------


def default_cache_dir(xdg_cache_home: str | None, home: str | os.PathLike[str]) -> Path:
    """The user cache folder for Fashion-MNIST.

    Args:
        xdg_cache_home: the value of ``XDG_CACHE_HOME`` (None or empty when unset; a
            relative path is ignored, as the XDG spec says).
        home: the user's home folder.

    Returns:
        ``$XDG_CACHE_HOME/bnlab/fashion-mnist`` or ``HOME/.cache/bnlab/fashion-mnist``.
    """
    if xdg_cache_home and Path(xdg_cache_home).is_absolute():
        base = Path(xdg_cache_home)
    else:
        base = Path(home) / ".cache"
    return base / "bnlab" / "fashion-mnist"


def _file_list(specs: Iterable[FileSpec]) -> str:
    return ", ".join(spec.name for spec in specs)


def _problems(reports: Sequence[FileReport]) -> str:
    """One line for the failed reports: missing names together, then each other problem."""
    missing = [r.spec.name for r in reports if r.status is FileStatus.MISSING]
    parts = [f"missing {', '.join(missing)}"] if missing else []
    parts += [
        f"{r.spec.name}: {r.status}: {r.reason}"
        for r in reports
        if not r.ok and r.status is not FileStatus.MISSING
    ]
    return "; ".join(parts)


def _require_complete(folder: Path, source: str, specs: Sequence[FileSpec]) -> Path:
    """Return ``folder`` if it holds every file; else raise naming ``source``."""
    how = (
        f"put the four files ({_file_list(specs)}, or their decompressed copies) there, "
        f"run 'bnlab data download --dir {folder}', or point {source} at another folder"
    )
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"{source} is {folder}, which is not a folder; {how}"
            if folder.exists()
            else f"{source} is {folder}, which does not exist; {how}"
        )
    reports = verify_folder(folder, files=specs)
    bad = [r for r in reports if not r.ok]
    if not bad:
        return folder
    message = (
        f"{source} is {folder}, but {len(bad)} of {len(reports)} Fashion-MNIST files "
        f"there are not usable: {_problems(bad)}. To fix it, {how}"
    )
    if all(r.status is FileStatus.MISSING for r in bad):
        raise DatasetNotFoundError(message)
    raise ChecksumError(message, bad)


def resolve_data_dir(
    flag: str | os.PathLike[str] | None,
    env_value: str | None,
    cache_dir: str | os.PathLike[str],
    *,
    download: bool = True,
    files: Sequence[FileSpec] | None = None,
    base_url: str = MIRROR_URL,
    progress: ProgressCallback | None = None,
    opener: Callable[..., Any] | None = None,
    retry_wait: float = 1.0,
) -> Path:
    """Find the folder that holds the verified Fashion-MNIST files, downloading if needed.

    Order: ``flag`` (the CLI's ``--data-dir``), then ``env_value`` (the value of
    ``BNLAB_DATA_DIR``), then ``cache_dir``, else download into ``cache_dir``. An explicit
    folder (``flag``, or ``env_value`` without ``flag``) is authoritative: when it is
    set but incomplete, that is an error, not a silent fall-back to another copy.

    Args:
        flag: the folder given on the command line, or None.
        env_value: the value of ``BNLAB_DATA_DIR``, or None / empty when unset.
        cache_dir: the user cache (:func:`default_cache_dir`).
        download: fetch into ``cache_dir`` what it lacks; when False, a missing cache is
            an error that says how to get the files.
        files: the files expected; default :data:`FILES`.
        base_url, progress, opener, retry_wait: passed to
            :func:`download_fashion_mnist`.

    Returns:
        The folder, with every file verified.

    Raises:
        DatasetNotFoundError: files missing where they must be, or nothing local and
            the download failed (or was off). One message lists the four file names,
            the folders searched, and ``--data-dir`` / ``BNLAB_DATA_DIR``.
        ChecksumError: an explicit folder holds damaged or foreign files.
    """
    specs = FILES if files is None else tuple(files)
    if flag is not None and str(flag) != "":
        return _require_complete(Path(flag), "--data-dir", specs)
    if env_value:
        return _require_complete(Path(env_value), ENV_VAR, specs)
    cache = Path(cache_dir)
    if cache.is_dir():
        reports = verify_folder(cache, files=specs)
        if all(r.ok for r in reports):
            return cache
        state = f"the user cache {cache} is incomplete ({_problems(reports)})"
    elif cache.exists():
        state = f"the user cache {cache} is not a folder"
    else:
        state = f"the user cache {cache} does not exist"
    if download:
        try:
            download_fashion_mnist(
                cache,
                files=specs,
                base_url=base_url,
                progress=progress,
                opener=opener,
                retry_wait=retry_wait,
            )
        except OSError as exc:
            fetch = f"downloading into it failed: {exc}"
        else:
            return cache
    else:
        fetch = "downloading was not allowed (run 'bnlab data download' to fetch the files)"
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found. Searched: --data-dir (not given), {ENV_VAR} (not set), "
        f"{state}; {fetch}. Put the four files {_file_list(specs)} (or their decompressed "
        f"copies) in one folder and pass it with --data-dir DIR or set {ENV_VAR}=DIR, or "
        f"put them in {cache}."
    )


# --- loading ----------------------------------------------------------------------------


def split_files(split: str, files: Sequence[FileSpec] | None = None) -> tuple[FileSpec, FileSpec]:
    """The (images, labels) specs of a split.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
    """
    if split not in SPLITS:
        hint = " (the official test files are named t10k-*)" if split == "t10k" else ""
        raise ValueError(
            f"unknown Fashion-MNIST split {split!r}; choose one of: {', '.join(SPLITS)}{hint}"
        )
    specs = FILES if files is None else tuple(files)
    found = {spec.kind: spec for spec in specs if spec.split == split}
    if set(found) != {"images", "labels"}:
        raise ValueError(f"no images and labels files for split {split!r} in {specs!r}")
    return found["images"], found["labels"]


def _path_of(report: FileReport) -> Path:
    if report.path is None:  # only missing files have no path
        raise RuntimeError(f"{report.spec.name}: {report.status}, no file to read")
    return report.path


def load_fashion_mnist(
    split: str,
    data_dir: str | os.PathLike[str],
    *,
    files: Sequence[FileSpec] | None = None,
) -> tuple[Tensor, Tensor]:
    """Load one split, after verifying its two files' checksums.

    Args:
        split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).
        data_dir: a folder holding the files (e.g. from :func:`resolve_data_dir`); the
            ``.gz`` or the decompressed copies.
        files: the files expected; default :data:`FILES`.

    Returns:
        ``(images, labels)``: images uint8 in [0, 255], labels int64 in [0, 9] (see
        :data:`CLASSES`).

    Shape:
        images ``(N, 28, 28)``, labels ``(N,)``.

    Raises:
        ValueError: unknown split.
        DatasetNotFoundError: a file of the split is missing.
        ChecksumError: a file is damaged or not the official one; labels out of range.
        FileNotFoundError, NotADirectoryError: ``data_dir`` is not a folder.
    """
    images_spec, labels_spec = split_files(split, files)
    folder = Path(data_dir)
    reports = [verify_file(images_spec, folder), verify_file(labels_spec, folder)]
    bad = [r for r in reports if not r.ok]
    if bad:
        message = (
            f"cannot load the Fashion-MNIST {split} split from {folder}: {_problems(bad)}. "
            f"Check the folder with 'bnlab data verify {folder}' or fetch the files with "
            f"'bnlab data download --dir {folder}'"
        )
        if all(r.status is FileStatus.MISSING for r in bad):
            raise DatasetNotFoundError(message)
        raise ChecksumError(message, bad)
    images_path, labels_path = _path_of(reports[0]), _path_of(reports[1])
    images = read_idx_images(
        images_path, count=images_spec.count, rows=images_spec.rows, cols=images_spec.cols
    )
    labels = read_idx_labels(labels_path, count=labels_spec.count)
    check_same_count(images, labels, images_path, labels_path)
    labels = labels.to(torch.int64)
    if labels.numel() and int(labels.max()) >= len(CLASSES):
        where = int(torch.argmax((labels >= len(CLASSES)).to(torch.uint8)))
        raise ChecksumError(
            f"{labels_path}: label {int(labels[where])} at index {where} is outside "
            f"0..{len(CLASSES) - 1}"
        )
    return images, labels


def text_labels(labels: Tensor | Iterable[int]) -> list[str]:
    """Class names of integer labels, e.g. ``[9, 0]`` -> ``['Ankle boot', 'T-shirt/top']``.

    Raises:
        ValueError: a label outside 0..9.
    """
    values = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    bad = [v for v in values if not 0 <= int(v) < len(CLASSES)]
    if bad:
        raise ValueError(f"Fashion-MNIST labels are 0..{len(CLASSES) - 1}, got {bad[:5]}")
    return [CLASSES[int(v)] for v in values]
