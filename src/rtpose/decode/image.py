"""Bytes or a file -> one `(H, W, 3) uint8` BGR image, or an `ImageDecodeError` saying why not.

OpenCV decodes with `IMREAD_UNCHANGED` so that we see what the file really holds and normalise it
ourselves, the same way for every format:

- grayscale (2-D or 1 channel) -> replicated to 3 channels;
- BGRA -> the alpha channel is **dropped** (not composited): this gives the same pixels as
  `cv2.imread(..., IMREAD_COLOR)`, which is what the reference MMPose/mmdeploy pipelines feed their models;
- 16-bit -> 8-bit by scaling (`round(v / 257)`, so 65535 -> 255), never by clipping;
- other sample types (float, 32-bit) are refused with a clear message.

`IMREAD_UNCHANGED` does not apply the EXIF orientation tag, so pixels are used as stored (COCO's
annotations refer to the stored pixel layout too).

Images larger than a pixel limit are refused *before* decoding when the header can be read (PNG, JPEG,
BMP), so a hostile 50000x50000 file never allocates gigabytes; other formats are checked after decoding.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from rtpose.errors import ImageDecodeError

#: Default limit on width * height: 100 megapixels (a 100 MP BGR image is 300 MB of memory).
DEFAULT_MAX_PIXELS = 100_000_000

ImageData = bytes | bytearray | memoryview | Path | str


def decode_image(
    data: ImageData, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> np.ndarray:
    """Decode an image file or encoded bytes into `(H, W, 3) uint8` BGR.

    data: a path (str or Path) or the encoded bytes of an image file.
    max_pixels: images with more than this many pixels (width * height) are refused.
    name: what to call the image in error messages (defaults to the path, or "<bytes>").

    Raises ImageDecodeError with the name and the reason for anything unusable.
    """
    if isinstance(data, str | Path):
        label = name or str(data)
        raw = _read_file(Path(data), label)
    elif isinstance(data, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        raw = bytes(data)
    else:
        raise ImageDecodeError(f"{name or '<input>'}: expected a path or bytes, got {type(data).__name__}")

    if not raw:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    size = read_header_size(raw)
    if size is not None:
        _check_size(size[0], size[1], max_pixels, label)

    try:
        decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV refuses some inputs with an exception rather than None
        raise ImageDecodeError(f"{label}: cannot decode image ({_first_line(str(exc))})") from None
    if decoded is None:
        raise ImageDecodeError(f"{label}: not an image, or corrupt/truncated data (OpenCV cannot decode it)")
    _check_size(decoded.shape[1], decoded.shape[0], max_pixels, label)
    return to_bgr8(decoded, label)


def to_bgr8(image: np.ndarray, label: str = "<image>") -> np.ndarray:
    """Normalise any decoded array (gray, BGRA, 16-bit) to a contiguous `(H, W, 3) uint8` BGR array."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageDecodeError(f"{label}: unsupported image layout with shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageDecodeError(f"{label}: zero-size image ({image.shape[1]}x{image.shape[0]})")

    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"{label}: unsupported sample type {image.dtype} (8- and 16-bit images only)")

    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]  # drop alpha, as cv2.imread(IMREAD_COLOR) does
    return np.ascontiguousarray(image)


def read_header_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or BMP header without decoding; None when unknown."""
    try:
        if raw.startswith(b"\x89PNG\r\n\x1a\n") and len(raw) >= 24:
            width, height = struct.unpack(">II", raw[16:24])
            return width, height
        if raw.startswith(b"\xff\xd8"):
            return _jpeg_size(raw)
        if raw.startswith(b"BM") and len(raw) >= 26:
            width, height = struct.unpack("<ii", raw[18:26])
            return abs(width), abs(height)
    except struct.error:
        return None
    return None


def _jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the first start-of-frame marker."""
    # SOF0..SOF15 carry the frame size, except DHT (C4), JPG (C8) and DAC (CC).
    sof_markers = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            return None
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", raw[pos + 2 : pos + 4])
        if marker in sof_markers:
            if pos + 9 > len(raw):
                return None
            height, width = struct.unpack(">HH", raw[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header: give up
            return None
        pos += 2 + length
    return None


def _read_file(path: Path, label: str) -> bytes:
    if not path.exists():
        raise ImageDecodeError(f"{label}: file not found")
    if path.is_dir():
        raise ImageDecodeError(
            f"{label}: is a folder, not an image file (no images with a known extension in it?)"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{label}: cannot read file ({exc.strerror or exc})") from None


def _check_size(width: int, height: int, max_pixels: int, label: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{label}: zero-size image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{label}: image too large ({width}x{height} = {width * height / 1e6:.1f} MP; "
            f"the pixel limit max_pixels is {max_pixels / 1e6:.1f} MP)"
        )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
