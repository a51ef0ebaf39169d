"""Read and write IDX files (the MNIST / Fashion-MNIST container), raw or gzip-compressed.

Format (Y. LeCun, "The MNIST database of handwritten digits", yann.lecun.com/exdb/mnist):
a big-endian header, then the data in C order::

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64 (big-endian)
    byte  3     number of dimensions, ndim >= 1
    4 * ndim    the size of each dimension, uint32 big-endian
    ...         prod(dims) values of the type

So the images files have magic number 2051 (``0x00000803``: uint8, 3 dims: count, rows,
cols) and the labels files 2049 (``0x00000801``: uint8, 1 dim: count).

Every check names the file and says what is wrong with the values found: an empty
file, a ``.gz`` that is not gzip, a damaged gzip stream, a wrong magic number, wrong
dimensions, a truncated file (``expected N bytes, got M``), trailing bytes, and images
and labels that disagree on the count. Errors are :class:`IdxFormatError`, a
``ValueError``. Data are read in one piece (no per-element Python loops) and returned
as a torch tensor; uint8 files are wrapped without a copy (``torch.frombuffer``).
A file whose content starts with the gzip magic bytes is decompressed whatever its name.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GZIP_MAGIC",
    "IDX_TYPES",
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "IdxFormatError",
    "IdxHeader",
    "check_same_count",
    "read_idx",
    "read_idx_header",
    "read_idx_images",
    "read_idx_labels",
    "write_idx",
]

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim (count)

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes per read from a gzip stream


@dataclass(frozen=True)
class _IdxType:
    name: str
    numpy: np.dtype  # big-endian, as stored in the file
    torch: torch.dtype


IDX_TYPES: dict[int, _IdxType] = {
    0x08: _IdxType("uint8", np.dtype("u1"), torch.uint8),
    0x09: _IdxType("int8", np.dtype("i1"), torch.int8),
    0x0B: _IdxType("int16", np.dtype(">i2"), torch.int16),
    0x0C: _IdxType("int32", np.dtype(">i4"), torch.int32),
    0x0D: _IdxType("float32", np.dtype(">f4"), torch.float32),
    0x0E: _IdxType("float64", np.dtype(">f8"), torch.float64),
}
_TYPE_CODES = {t.torch: code for code, t in IDX_TYPES.items()}
_KNOWN = {IMAGES_MAGIC: "an IDX images file", LABELS_MAGIC: "an IDX labels file"}


class IdxFormatError(ValueError):
    """A file is not a well-formed IDX file (or not the one expected).

    The message starts with the file's path and says what was found and what was
    expected. ``path`` and ``reason`` hold the two parts separately (``reason`` is the
    message without the path, for one-line reports).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class IdxHeader:
    """The decoded header of an IDX file.

    Attributes:
        type_code: the third magic byte (0x08 uint8, ... see ``IDX_TYPES``).
        dims: the size of each dimension, e.g. ``(60000, 28, 28)``.
    """

    type_code: int
    dims: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def magic(self) -> int:
        """The magic number as a big-endian int32, e.g. 2051 for uint8 with 3 dims."""
        return (self.type_code << 8) | self.ndim

    @property
    def type_name(self) -> str:
        return IDX_TYPES[self.type_code].name

    @property
    def itemsize(self) -> int:
        return IDX_TYPES[self.type_code].numpy.itemsize

    @property
    def header_size(self) -> int:
        """Bytes before the data: 4 for the magic number and 4 per dimension."""
        return 4 + 4 * self.ndim

    @property
    def numel(self) -> int:
        return math.prod(self.dims)

    @property
    def file_size(self) -> int:
        """Exact size in bytes of the (decompressed) file this header describes."""
        return self.header_size + self.numel * self.itemsize

    def describe_size(self) -> str:
        """E.g. ``'16-byte header + 60000 x 28 x 28 uint8 values'``."""
        shape = " x ".join(map(str, self.dims))
        return f"{self.header_size}-byte header + {shape} {self.type_name} values"


def _describe_magic(magic: int) -> str:
    """``'2051 (0x00000803: uint8, 3 dims, an IDX images file)'`` for a magic number."""
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    type_name = IDX_TYPES[code].name if code in IDX_TYPES else f"unknown type 0x{code:02X}"
    parts = [type_name, f"{ndim} dim" + ("" if ndim == 1 else "s")]
    if magic in _KNOWN:
        parts.append(_KNOWN[magic])
    return f"{magic} (0x{magic:08X}: {', '.join(parts)})"


def _hex(data: bytes) -> str:
    return " ".join(f"0x{b:02x}" for b in data) if data else "nothing"


def _decode_magic(path: Path, head: bytes) -> tuple[int, int]:
    """Check the four magic bytes; return (type code, ndim)."""
    if head[:2] == GZIP_MAGIC:
        raise IdxFormatError(
            path,
            "not an IDX file: the decompressed content starts with the gzip magic bytes "
            "0x1f 0x8b (was it compressed twice?)",
        )
    if head[0] != 0 or head[1] != 0:
        raise IdxFormatError(
            path,
            f"wrong magic number: an IDX file starts with two zero bytes, got {_hex(head)} "
            f"(magic {int.from_bytes(head, 'big')}); is this an IDX file?",
        )
    code, ndim = head[2], head[3]
    if code not in IDX_TYPES:
        choices = ", ".join(f"0x{c:02X} ({t.name})" for c, t in IDX_TYPES.items())
        raise IdxFormatError(
            path,
            f"wrong magic number {int.from_bytes(head, 'big')}: unknown IDX type code "
            f"0x{code:02X} in byte 2; expected one of {choices}",
        )
    if ndim == 0:
        raise IdxFormatError(
            path,
            f"wrong magic number {int.from_bytes(head, 'big')}: 0 dimensions in byte 3; "
            "an IDX file has at least 1",
        )
    return code, ndim


class _Source:
    """A file's content as a byte stream: the file itself or its gzip decompression.

    Decompression uses ``zlib`` directly (not ``gzip.GzipFile``) so that a stream cut
    short still reports exactly how many bytes of content it held.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder, expected an IDX file")
        self.stored_size = stat.st_size
        if self.stored_size == 0:
            raise IdxFormatError(path, "the file is empty (0 bytes)")
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by close())
        first = self._file.read(2)
        self._file.seek(0)
        self.compressed = first == GZIP_MAGIC
        if path.suffix == ".gz" and not self.compressed:
            self._file.close()
            raise IdxFormatError(
                path,
                f"not gzip-compressed although named .gz: it starts with {_hex(first)}, "
                "a gzip file starts with 0x1f 0x8b; if it is a raw IDX file, remove the "
                "'.gz' from its name",
            )
        self.position = 0  # bytes of (decompressed) content handed out so far
        self.stream_cut_short = False  # the gzip stream ended before its end marker
        self._pending = b""  # decompressed bytes not handed out yet
        self._produced = 0  # bytes decompressed so far
        self._chunks = self._decompressed_chunks() if self.compressed else None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut_note(self) -> str:
        """A note for size messages when the gzip stream itself was cut short."""
        if not self.stream_cut_short:
            return ""
        return " (the gzip stream ends early too: the .gz file was cut short)"

    def _corrupt(self, detail: str) -> IdxFormatError:
        return IdxFormatError(
            self.path,
            f"corrupt gzip stream ({detail}) after {self._produced} bytes of content; "
            "the file is damaged, fetch it again",
        )

    def _decompressed_chunks(self) -> Iterator[bytes]:
        """Yield the content in chunks of at most ``_CHUNK`` bytes, member after member."""
        data = b""
        while True:  # one gzip member per pass (a .gz may hold several)
            z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            while not z.eof:
                if not data:
                    data = self._file.read(_CHUNK)
                if data:
                    try:
                        out = z.decompress(data, _CHUNK)
                    except zlib.error as exc:
                        raise self._corrupt(str(exc)) from None
                    data = z.unconsumed_tail
                else:  # end of the file: take what zlib still holds
                    try:
                        out = z.flush()
                    except zlib.error as exc:
                        raise self._corrupt(str(exc)) from None
                    if not z.eof:
                        self.stream_cut_short = True
                        if out:
                            self._produced += len(out)
                            yield out
                        return
                if out:
                    self._produced += len(out)
                    yield out
            data = z.unused_data
            if len(data) < 2:
                data += self._file.read(_CHUNK)
            if data[:2] == GZIP_MAGIC:
                continue
            data += self._file.read()
            if data.strip(b"\0"):
                raise self._corrupt(
                    f"{len(data)} bytes after the end of the gzip data do not start a new "
                    f"gzip member: {_hex(data[:4])}"
                )
            return  # end of the file, or zero padding after the last member (as gzip)

    def read(self, n: int) -> bytes:
        """Read up to ``n`` bytes; fewer only at the end of the content."""
        if self._chunks is None:
            data = self._file.read(n)
            self.position += len(data)
            return data
        parts = [self._pending]
        have = len(self._pending)
        while have < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        out, self._pending = data[:n], data[n:]
        self.position += len(out)
        return out

    def read_into(self, buf: bytearray, n: int) -> int:
        """Append up to ``n`` bytes to ``buf``; return how many were appended."""
        start = len(buf)
        if self._chunks is None:
            buf.extend(bytes(n))
            got = self._file.readinto(memoryview(buf)[start:]) or 0
            del buf[start + got :]
        else:
            buf += self._pending[:n]
            self._pending = self._pending[n:]
            while len(buf) - start < n:
                chunk = next(self._chunks, b"")
                if not chunk:
                    break
                want = n - (len(buf) - start)
                buf += chunk[:want]
                self._pending = chunk[want:]
            got = len(buf) - start
        self.position += got
        return got

    def count_rest(self) -> int:
        """Read to the end of the content (checking the gzip CRC); return its size."""
        if self._chunks is None:
            rest = self.stored_size - self.position
        else:
            rest = len(self._pending) + sum(len(chunk) for chunk in self._chunks)
            self._pending = b""
        self.position += rest
        return rest


def _read_header(src: _Source) -> IdxHeader:
    head = src.read(4)
    if len(head) < 4:
        raise IdxFormatError(
            src.path,
            f"truncated: expected at least 4 bytes (the IDX magic number), got {len(head)}"
            f"{src.cut_note()}",
        )
    code, ndim = _decode_magic(src.path, head)
    raw_dims = src.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise IdxFormatError(
            src.path,
            f"truncated: the magic number announces {ndim} dimensions, so the header has "
            f"{4 + 4 * ndim} bytes, got {4 + len(raw_dims)}{src.cut_note()}",
        )
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    return IdxHeader(code, dims)


def _check_expected(
    path: Path,
    header: IdxHeader,
    expected_magic: int | None,
    expected_dims: tuple[int | None, ...] | None,
    dim_names: tuple[str, ...] | None,
) -> None:
    if expected_magic is not None and header.magic != expected_magic:
        raise IdxFormatError(
            path,
            f"wrong magic number {_describe_magic(header.magic)}, "
            f"expected {_describe_magic(expected_magic)}",
        )
    if expected_dims is None:
        return
    if len(expected_dims) != header.ndim:
        raise IdxFormatError(
            path,
            f"wrong number of dimensions: the magic number {_describe_magic(header.magic)} "
            f"announces {header.ndim}, expected {len(expected_dims)}",
        )
    names = dim_names or tuple(f"dim {i}" for i in range(len(expected_dims)))
    for name, want, got in zip(names, expected_dims, header.dims, strict=True):
        if want is not None and got != want:
            shape = " x ".join(map(str, header.dims))
            raise IdxFormatError(
                path, f"wrong {name}: the header says {got} ({shape}), expected {want}"
            )


def read_idx_header(path: str | os.PathLike[str]) -> IdxHeader:
    """Decode and check the header of an IDX file, without reading the data.

    Args:
        path: a raw IDX file or a gzip-compressed one.

    Returns:
        The decoded :class:`IdxHeader`.

    Raises:
        IdxFormatError: empty file, a ``.gz`` that is not gzip, a damaged gzip stream,
            a bad magic number or a header cut short.
        FileNotFoundError: no such file.
    """
    with _Source(Path(path)) as src:
        return _read_header(src)


def read_idx(
    path: str | os.PathLike[str],
    *,
    expected_magic: int | None = None,
    expected_dims: tuple[int | None, ...] | None = None,
    dim_names: tuple[str, ...] | None = None,
) -> Tensor:
    """Read a whole IDX file into a tensor, checking the header and the exact size.

    Args:
        path: a raw IDX file or a gzip-compressed one (detected by content).
        expected_magic: if given, the magic number the file must have (e.g.
            ``IMAGES_MAGIC``); it fixes the type and the number of dimensions.
        expected_dims: if given (with ``expected_magic``), the size each dimension must
            have; ``None`` entries accept any size.
        dim_names: names of the dimensions for error messages, e.g.
            ``("image count", "rows", "cols")``.

    Returns:
        A tensor of the file's type (uint8 for (Fashion-)MNIST) and shape ``dims``.
        uint8 data share memory with a private buffer (no copy); other types are
        converted from big-endian to native order.

    Raises:
        IdxFormatError: empty, not gzip, corrupt gzip, wrong magic, wrong dimensions,
            truncated (``expected N bytes, got M``) or trailing data. The message names
            the file.
        FileNotFoundError: no such file.
    """
    p = Path(path)
    with _Source(p) as src:
        header = _read_header(src)
        _check_expected(p, header, expected_magic, expected_dims, dim_names)
        expected = header.file_size
        if not src.compressed and src.stored_size != expected:
            # The size of a raw file is known before reading 47 MB of it.
            problem = "truncated" if src.stored_size < expected else "trailing data"
            raise IdxFormatError(
                p,
                f"{problem}: expected {expected} bytes ({header.describe_size()}), "
                f"got {src.stored_size}",
            )
        data_size = expected - header.header_size
        buf = bytearray()
        got = src.read_into(buf, data_size)
        if got < data_size:
            raise IdxFormatError(
                p,
                f"truncated: expected {expected} bytes ({header.describe_size()}), "
                f"got {header.header_size + got}{src.cut_note()}",
            )
        extra = src.count_rest()
        if extra:
            raise IdxFormatError(
                p,
                f"trailing data: expected {expected} bytes ({header.describe_size()}), "
                f"got {expected + extra}",
            )
        if src.stream_cut_short:
            raise IdxFormatError(
                p,
                f"truncated gzip stream: all {expected} bytes of content are there but the "
                "gzip end-of-stream marker and checksum are missing (the .gz file was cut "
                "short); fetch it again",
            )
    idx_type = IDX_TYPES[header.type_code]
    if header.numel == 0:
        return torch.empty(header.dims, dtype=idx_type.torch)
    if idx_type.torch == torch.uint8:
        return torch.frombuffer(buf, dtype=torch.uint8).view(header.dims)
    array = np.frombuffer(buf, dtype=idx_type.numpy).astype(idx_type.numpy.newbyteorder("="))
    return torch.from_numpy(array).view(header.dims)


def read_idx_images(
    path: str | os.PathLike[str],
    *,
    count: int | None = None,
    rows: int | None = None,
    cols: int | None = None,
) -> Tensor:
    """Read an IDX images file (magic 2051).

    Args:
        path: raw or gzip-compressed file.
        count, rows, cols: if given, the sizes the header must announce.

    Returns:
        uint8 images.

    Shape:
        ``(N, rows, cols)``.

    Raises:
        IdxFormatError: see :func:`read_idx`; also a labels file passed as images
            (wrong magic) and a count or image size other than the one expected.
    """
    return read_idx(
        path,
        expected_magic=IMAGES_MAGIC,
        expected_dims=(count, rows, cols),
        dim_names=("image count", "number of rows", "number of columns"),
    )


def read_idx_labels(path: str | os.PathLike[str], *, count: int | None = None) -> Tensor:
    """Read an IDX labels file (magic 2049).

    Args:
        path: raw or gzip-compressed file.
        count: if given, the count the header must announce.

    Returns:
        uint8 labels.

    Shape:
        ``(N,)``.

    Raises:
        IdxFormatError: see :func:`read_idx`; also an images file passed as labels
            (wrong magic) and a count other than the one expected.
    """
    return read_idx(
        path, expected_magic=LABELS_MAGIC, expected_dims=(count,), dim_names=("label count",)
    )


def check_same_count(
    images: Tensor,
    labels: Tensor,
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
) -> None:
    """Raise unless there is one label per image.

    Raises:
        IdxFormatError: the counts differ; the message names both files.
    """
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            images_path,
            f"holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} "
            "labels; a split needs one label per image (are the files from two "
            "different splits or datasets?)",
        )


def write_idx(
    path: str | os.PathLike[str], tensor: Tensor, *, compress: bool | None = None
) -> Path:
    """Write a tensor as an IDX file (the inverse of :func:`read_idx`).

    Args:
        path: where to write.
        tensor: uint8, int8, int16, int32, float32 or float64, at least 1 dim.
        compress: gzip the file; by default when ``path`` ends with ``.gz``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TypeError: ``tensor`` is not a tensor or has a type IDX cannot store.
        ValueError: ``tensor`` is 0-d or a dimension exceeds 2**32 - 1.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"write_idx: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _TYPE_CODES:
        names = ", ".join(str(t) for t in _TYPE_CODES)
        raise TypeError(f"write_idx: IDX cannot store {tensor.dtype}; use one of {names}")
    if tensor.dim() == 0 or tensor.dim() > 255 or max(tensor.shape) >= 2**32:
        raise ValueError(
            f"write_idx: IDX stores 1 to 255 dims of size < 2**32, got shape {tuple(tensor.shape)}"
        )
    p = Path(path)
    code = _TYPE_CODES[tensor.dtype]
    header = bytes([0, 0, code, tensor.dim()]) + np.array(tensor.shape, dtype=">u4").tobytes()
    body = tensor.detach().cpu().contiguous().numpy().astype(IDX_TYPES[code].numpy).tobytes()
    if compress is None:
        compress = p.suffix == ".gz"
    content = header + body
    p.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    return p
