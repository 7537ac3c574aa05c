"""decode_image: every usable image becomes (H, W, 3) uint8 BGR; everything else a clear ImageDecodeError."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtpose.decode.image import decode_image, read_header_size
from rtpose.errors import ImageDecodeError


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit RGB) with a tiny, wrong data stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def real_jpeg(coco_val: tuple[Path, Path]) -> Path:
    return coco_val[1] / "000000000785.jpg"


def test_real_jpeg_matches_imread(real_jpeg: Path) -> None:
    image = decode_image(real_jpeg)
    assert image.dtype == np.uint8 and image.shape == (425, 640, 3)
    assert np.array_equal(image, cv2.imread(str(real_jpeg), cv2.IMREAD_COLOR))
    # bytes and str paths give the same pixels
    assert np.array_equal(decode_image(real_jpeg.read_bytes()), image)
    assert np.array_equal(decode_image(str(real_jpeg)), image)


def test_grayscale_png_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    image = decode_image(path)
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    for channel in range(3):
        assert np.array_equal(image[:, :, channel], gray)


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bgra = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    bgra[..., 3] = 0  # fully transparent: dropping alpha keeps the colour, compositing would make it black
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), bgra)
    image = decode_image(path)
    assert image.shape == (9, 7, 3)
    assert np.array_equal(image, bgra[..., :3])


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000], [32768, 65280, 65535]], dtype=np.uint16)
    color = np.stack([values, values // 2, 65535 - values], axis=-1)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), color)
    image = decode_image(path)
    assert image.dtype == np.uint8
    expected = np.round(color.astype(np.float64) / 257).astype(np.uint8)
    assert np.array_equal(image, expected)
    assert image[1, 2, 0] == 255 and image[0, 1, 0] == 1  # clipping would give 255 for every value >= 255

    gray_path = tmp_path / "deep_gray.png"
    cv2.imwrite(str(gray_path), values)
    gray = decode_image(gray_path)
    assert gray.shape == (2, 3, 3)
    assert np.array_equal(gray[..., 1], np.round(values / 257).astype(np.uint8))


def test_one_pixel_image_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), np.full((1, 1, 3), 200, np.uint8))
    assert decode_image(path).shape == (1, 1, 3)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"nothere\.jpg: file not found"):
        decode_image(tmp_path / "nothere.jpg")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="is a folder"):
        decode_image(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg: empty file"):
        decode_image(path)


def test_truncated_jpeg(tmp_path: Path, real_jpeg: Path) -> None:
    data = real_jpeg.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"truncated\.jpg: .*corrupt/truncated"):
        decode_image(path)


def test_random_bytes_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageDecodeError, match=r"noise\.jpg"):
        decode_image(path)


def test_zero_size_png(tmp_path: Path) -> None:
    path = tmp_path / "zero.png"
    path.write_bytes(_png_header_only(0, 5))
    with pytest.raises(ImageDecodeError, match=r"zero\.png: zero-size image \(0x5\)"):
        decode_image(path)


def test_huge_image_refused_from_header_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(
        ImageDecodeError, match=r"huge\.png: image too large \(20000x20000 .*max_pixels is 100\.0 MP"
    ):
        decode_image(path)


def test_pixel_limit_applies_to_real_jpeg(real_jpeg: Path) -> None:
    with pytest.raises(ImageDecodeError, match="image too large"):
        decode_image(real_jpeg, max_pixels=640 * 424)
    assert decode_image(real_jpeg, max_pixels=640 * 425).shape == (425, 640, 3)


def test_header_sizes_of_real_formats(tmp_path: Path, real_jpeg: Path) -> None:
    assert read_header_size(real_jpeg.read_bytes()) == (640, 425)
    image = np.zeros((31, 17, 3), np.uint8)
    for ext in (".png", ".bmp", ".jpg"):
        ok, encoded = cv2.imencode(ext, image)
        assert ok
        assert read_header_size(encoded.tobytes()) == (17, 31), ext
    assert read_header_size(b"not an image at all") is None


def test_wrong_argument_type() -> None:
    with pytest.raises(ImageDecodeError, match="expected a path or bytes"):
        decode_image(123)  # type: ignore[arg-type]


def test_gpu_decoders_only_get_whole_jpegs(real_jpeg: Path) -> None:
    """nvJPEG decodes truncated files silently: those must go to OpenCV, which refuses them."""
    from rtpose.decode.gpu import _checked

    raw = real_jpeg.read_bytes()
    assert _checked(raw, "whole.jpg", 10**8)
    assert not _checked(raw[: len(raw) // 2], "cut.jpg", 10**8)
