"""The IDX reader: round trips, and one test per error message with its rendered values."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnlab.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    IdxFormatError,
    check_same_count,
    read_idx,
    read_idx_header,
    read_idx_images,
    read_idx_labels,
    write_idx,
)

# Integer payloads: every torch.equal on what is read back is exact (bytes decoded, no
# arithmetic), also for the float types of the round trip (their bytes are copied).
IMAGES = torch.arange(60, dtype=torch.uint8).reshape(3, 4, 5)  # 16 + 60 = 76 bytes
LABELS = torch.tensor([1, 2, 3], dtype=torch.uint8)  # 8 + 3 = 11 bytes
IMAGES_SIZE = "16-byte header + 3 x 4 x 5 uint8 values"


def raw_images() -> bytes:
    return bytes([0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5]) + IMAGES.numpy().tobytes()


def put(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- good files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images", "images.gz"])
def test_reads_images_raw_and_gzip(tmp_path: Path, name: str) -> None:
    data = raw_images()
    path = put(tmp_path, name, gzip.compress(data) if name.endswith(".gz") else data)
    images = read_idx_images(path, count=3, rows=4, cols=5)
    assert images.dtype == torch.uint8
    assert images.shape == (3, 4, 5)
    assert torch.equal(images, IMAGES)


def test_header_decodes_the_magic_number(tmp_path: Path) -> None:
    header = read_idx_header(put(tmp_path, "images.gz", gzip.compress(raw_images())))
    assert header.magic == IMAGES_MAGIC == 2051
    assert (header.type_code, header.ndim, header.dims) == (0x08, 3, (3, 4, 5))
    assert (header.header_size, header.file_size, header.type_name) == (16, 76, "uint8")
    labels = read_idx_header(write_idx(tmp_path / "labels", LABELS))
    assert labels.magic == LABELS_MAGIC == 2049


def test_labels(tmp_path: Path) -> None:
    labels = read_idx_labels(write_idx(tmp_path / "labels.gz", LABELS), count=3)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [1, 2, 3]


def test_uint8_result_is_writable_without_warning(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "images", IMAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = read_idx(path)
    images[0, 0, 0] = 200  # a private buffer: writing is allowed and touches no file
    assert path.read_bytes() == raw_images()


def test_gzip_content_without_gz_name_is_decompressed(tmp_path: Path) -> None:
    path = put(tmp_path, "images-idx3-ubyte", gzip.compress(raw_images()))
    assert torch.equal(read_idx(path), IMAGES)


def test_multi_member_gzip_and_zero_padding(tmp_path: Path) -> None:
    data = raw_images()
    packed = gzip.compress(data[:30]) + gzip.compress(data[30:]) + bytes(7)
    assert torch.equal(read_idx(put(tmp_path, "x.gz", packed)), IMAGES)


def test_big_endian_types_are_decoded(tmp_path: Path) -> None:
    values = torch.tensor([[1, -2, 70000], [-(2**31), 2**31 - 1, 0]], dtype=torch.int32)
    path = write_idx(tmp_path / "ints", values)
    assert path.read_bytes()[:4] == bytes([0, 0, 0x0C, 2])
    assert path.read_bytes()[12:16] == (1).to_bytes(4, "big")
    assert torch.equal(read_idx(path), values)


@given(
    array=st.sampled_from(["u1", "i1", ">i2", ">i4", ">f4", ">f8"]).flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
            elements={"allow_nan": False} if "f" in dtype else None,
        )
    ),
    compress=st.booleans(),
)
def test_round_trip_any_type_and_shape(
    tmp_path_factory: pytest.TempPathFactory, array: np.ndarray, compress: bool
) -> None:
    tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("=")))
    path = write_idx(tmp_path_factory.mktemp("rt") / "x", tensor, compress=compress)
    back = read_idx(path)
    assert back.dtype == tensor.dtype
    assert back.shape == tensor.shape
    assert torch.equal(back, tensor)


# --- bad files: one test per message, checking the values in it --------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = put(tmp_path, "images", b"")
    with pytest.raises(IdxFormatError) as exc:
        read_idx(path)
    assert str(exc.value) == f"{path}: the file is empty (0 bytes)"
    assert exc.value.path == path
    assert exc.value.reason == "the file is empty (0 bytes)"


def test_empty_gzip_content(tmp_path: Path) -> None:
    path = put(tmp_path, "images.gz", gzip.compress(b""))
    with pytest.raises(IdxFormatError, match=r"expected at least 4 bytes .*, got 0$"):
        read_idx(path)


def test_truncated_raw_file(tmp_path: Path) -> None:
    path = put(tmp_path, "images", raw_images()[:40])
    with pytest.raises(IdxFormatError) as exc:
        read_idx_images(path)
    assert str(exc.value) == f"{path}: truncated: expected 76 bytes ({IMAGES_SIZE}), got 40"


def test_truncated_content_in_a_valid_gzip(tmp_path: Path) -> None:
    path = put(tmp_path, "images.gz", gzip.compress(raw_images()[:75]))
    with pytest.raises(IdxFormatError) as exc:
        read_idx_images(path)
    assert exc.value.reason == f"truncated: expected 76 bytes ({IMAGES_SIZE}), got 75"


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    data = torch.randint(
        0, 256, (50, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    packed = write_idx(tmp_path / "full.gz", data).read_bytes()
    path = put(tmp_path, "cut.gz", packed[: len(packed) // 2])
    with pytest.raises(IdxFormatError) as exc:
        read_idx_images(path)
    message = exc.value.reason
    assert message.startswith("truncated: expected 39216 bytes (16-byte header + 50 x 28 x 28")
    got = int(message.split("got ")[1].split(" ")[0])
    assert 0 < got < 39216
    assert message.endswith("(the gzip stream ends early too: the .gz file was cut short)")


def test_gzip_cut_inside_its_trailer(tmp_path: Path) -> None:
    path = put(tmp_path, "cut.gz", gzip.compress(raw_images())[:-4])
    with pytest.raises(IdxFormatError) as exc:
        read_idx(path)
    assert exc.value.reason.startswith(
        "truncated gzip stream: all 76 bytes of content are there but the gzip end-of-stream "
        "marker and checksum are missing"
    )


def test_gzip_checksum_mismatch(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(raw_images()))
    packed[-8] ^= 0xFF  # the CRC32 of the content
    with pytest.raises(IdxFormatError, match=r"corrupt gzip stream \(.*incorrect data check\)"):
        read_idx(put(tmp_path, "bad.gz", bytes(packed)))


def test_garbage_after_the_gzip_stream(tmp_path: Path) -> None:
    path = put(tmp_path, "x.gz", gzip.compress(raw_images()) + b"junk")
    with pytest.raises(IdxFormatError) as exc:
        read_idx(path)
    assert exc.value.reason == (
        "corrupt gzip stream (4 bytes after the end of the gzip data do not start a new gzip "
        "member: 0x6a 0x75 0x6e 0x6b) after 76 bytes of content; the file is damaged, fetch it "
        "again"
    )


def test_trailing_data_raw(tmp_path: Path) -> None:
    path = put(tmp_path, "images", raw_images() + b"1234")
    with pytest.raises(IdxFormatError) as exc:
        read_idx(path)
    assert exc.value.reason == f"trailing data: expected 76 bytes ({IMAGES_SIZE}), got 80"


def test_trailing_data_gzip(tmp_path: Path) -> None:
    path = put(tmp_path, "images.gz", gzip.compress(raw_images() + bytes(100)))
    with pytest.raises(IdxFormatError) as exc:
        read_idx(path)
    assert exc.value.reason == f"trailing data: expected 76 bytes ({IMAGES_SIZE}), got 176"


def test_not_gzip_although_named_gz(tmp_path: Path) -> None:
    path = put(tmp_path, "images.gz", raw_images())
    with pytest.raises(IdxFormatError) as exc:
        read_idx(path)
    assert exc.value.reason == (
        "not gzip-compressed although named .gz: it starts with 0x00 0x00, a gzip file starts "
        "with 0x1f 0x8b; if it is a raw IDX file, remove the '.gz' from its name"
    )


def test_compressed_twice(tmp_path: Path) -> None:
    path = put(tmp_path, "images.gz", gzip.compress(gzip.compress(raw_images())))
    with pytest.raises(IdxFormatError, match=r"was it compressed twice\?"):
        read_idx(path)


def test_magic_without_leading_zero_bytes(tmp_path: Path) -> None:
    path = put(tmp_path, "x", b"\x12\x34\x08\x03" + raw_images()[4:])
    with pytest.raises(IdxFormatError) as exc:
        read_idx(path)
    assert exc.value.reason == (
        "wrong magic number: an IDX file starts with two zero bytes, got 0x12 0x34 0x08 0x03 "
        "(magic 305399811); is this an IDX file?"
    )


def test_unknown_type_code(tmp_path: Path) -> None:
    path = put(tmp_path, "x", b"\x00\x00\x07\x01\x00\x00\x00\x01\x05")
    with pytest.raises(IdxFormatError) as exc:
        read_idx(path)
    assert exc.value.reason.startswith(
        "wrong magic number 1793: unknown IDX type code 0x07 in byte 2; expected one of "
        "0x08 (uint8), 0x09 (int8), 0x0B (int16), 0x0C (int32), 0x0D (float32), 0x0E (float64)"
    )


def test_zero_dimensions(tmp_path: Path) -> None:
    with pytest.raises(IdxFormatError, match=r"wrong magic number 2048: 0 dimensions in byte 3"):
        read_idx(put(tmp_path, "x", b"\x00\x00\x08\x00\x05"))


def test_labels_file_read_as_images(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels.gz", LABELS)
    with pytest.raises(IdxFormatError) as exc:
        read_idx_images(path)
    assert exc.value.reason == (
        "wrong magic number 2049 (0x00000801: uint8, 1 dim, an IDX labels file), expected 2051 "
        "(0x00000803: uint8, 3 dims, an IDX images file)"
    )


def test_images_file_read_as_labels(tmp_path: Path) -> None:
    with pytest.raises(IdxFormatError, match=r"wrong magic number 2051 .* expected 2049 "):
        read_idx_labels(write_idx(tmp_path / "images", IMAGES))


def test_wrong_count(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "images.gz", IMAGES)
    with pytest.raises(IdxFormatError) as exc:
        read_idx_images(path, count=60000)
    assert exc.value.reason == "wrong image count: the header says 3 (3 x 4 x 5), expected 60000"
    with pytest.raises(IdxFormatError, match=r"wrong label count: the header says 3 \(3\)"):
        read_idx_labels(write_idx(tmp_path / "labels", LABELS), count=4)


def test_wrong_image_size(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "images", IMAGES)
    with pytest.raises(IdxFormatError) as exc:
        read_idx_images(path, rows=28, cols=28)
    assert exc.value.reason == "wrong number of rows: the header says 4 (3 x 4 x 5), expected 28"


def test_wrong_number_of_dimensions(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", IMAGES)
    with pytest.raises(IdxFormatError, match=r"announces 3, expected 2$"):
        read_idx(path, expected_dims=(3, 20))


def test_header_cut_short(tmp_path: Path) -> None:
    with pytest.raises(IdxFormatError) as exc:
        read_idx(put(tmp_path, "x", raw_images()[:6]))
    assert exc.value.reason == (
        "truncated: the magic number announces 3 dimensions, so the header has 16 bytes, got 6"
    )
    with pytest.raises(IdxFormatError) as exc:
        read_idx(put(tmp_path, "y", b"\x00\x00"))
    assert exc.value.reason == "truncated: expected at least 4 bytes (the IDX magic number), got 2"


def test_images_and_labels_count_mismatch(tmp_path: Path) -> None:
    images_path, labels_path = tmp_path / "train-images", tmp_path / "train-labels"
    labels = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)
    with pytest.raises(IdxFormatError) as exc:
        check_same_count(IMAGES, labels, images_path, labels_path)
    assert str(exc.value) == (
        f"{images_path}: holds 3 images but {labels_path} holds 4 labels; a split needs one "
        "label per image (are the files from two different splits or datasets?)"
    )
    check_same_count(IMAGES, LABELS, images_path, labels_path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope: no such file$"):
        read_idx(tmp_path / "nope")
    with pytest.raises(IsADirectoryError, match=r"is a folder, expected an IDX file"):
        read_idx(tmp_path)


def test_idx_format_error_is_a_value_error() -> None:
    assert issubclass(IdxFormatError, ValueError)


def test_write_idx_rejects_what_idx_cannot_store(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"IDX cannot store torch.int64; use one of"):
        write_idx(tmp_path / "x", torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"expected a torch.Tensor, got list"):
        write_idx(tmp_path / "x", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        write_idx(tmp_path / "x", torch.tensor(3, dtype=torch.uint8))
