"""Decoding straight onto the GPU: bytes or a file -> `(H, W, 3) uint8` BGR tensor on a CUDA device.

Which decoder runs depends on what is installed, best first (none of them is a dependency of rtpose):

1. torchvision's nvJPEG decoder (`torchvision.io.decode_jpeg(..., device="cuda")`), batched;
2. NVIDIA nvImageCodec (`nvidia.nvimgcodec`);
3. OpenCV on the CPU, then one asynchronous upload through a pinned buffer (`PinnedUploader`).

GPU decoders only take baseline/progressive JPEG; any other format, and any file a GPU decoder refuses
(CMYK, corrupt data, ...), goes through OpenCV, so that errors are exactly `decode_image`'s: the same
`ImageDecodeError` messages for missing, empty, corrupt or too large files, the size limit checked from
the header before anything is decoded. nvJPEG rounds its IDCT/colour conversion differently from
libjpeg, so pixels may differ from `decode_image` by a few grey levels (measured in the GPU tests).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtpose.decode.image import (
    DEFAULT_MAX_PIXELS,
    ImageData,
    _check_size,
    _read_file,
    decode_image,
    read_header_size,
)
from rtpose.errors import ImageDecodeError

JPEG_MAGIC = b"\xff\xd8"
JPEG_END = b"\xff\xd9"


@functools.cache
def gpu_decoder_name() -> str:
    """ "torchvision", "nvimgcodec" or "cv2" (CPU decode + pinned upload): what `decode_images_gpu` uses.

    `RTPOSE_GPU_DECODER` forces one of them.
    """
    forced = os.environ.get("RTPOSE_GPU_DECODER")
    if forced:
        if forced not in ("torchvision", "nvimgcodec", "cv2"):
            raise ImageDecodeError(f"RTPOSE_GPU_DECODER={forced!r}: use torchvision, nvimgcodec or cv2")
        return forced
    try:
        import torchvision.io  # noqa: F401

        return "torchvision"
    except Exception:  # an installed but broken torchvision (ABI mismatch) must not break decoding
        pass
    try:
        from nvidia import nvimgcodec  # noqa: F401

        return "nvimgcodec"
    except Exception:
        return "cv2"


class PinnedUploader:
    """Host images -> device tensors: one copy into a reused pinned buffer, one async copy on a side stream.

    Two pinned buffers alternate, so filling one waits only for the copy of the one before last. The
    device memory is allocated on the side stream and handed to the current stream with an event, so
    the upload overlaps whatever the current stream is still computing.
    """

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ImageDecodeError(f"PinnedUploader needs a CUDA device, not {self.device}")
        self._stream = torch.cuda.Stream(self.device)
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._slot = 0

    def upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Contiguous device copies of `arrays` (any shapes, uint8), in one host-to-device transfer."""
        if not arrays:
            return []
        arrays = [np.ascontiguousarray(a, dtype=np.uint8) for a in arrays]
        sizes = [a.size for a in arrays]
        total = int(sum(sizes))
        slot = self._slot
        self._slot = 1 - slot
        event = self._events[slot]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer is done
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < total:
            buffer = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=True)
            self._buffers[slot] = buffer
        host = buffer.numpy()
        offsets = np.cumsum([0, *sizes])
        for array, start, stop in zip(arrays, offsets[:-1], offsets[1:], strict=True):
            host[start:stop] = array.reshape(-1)
        current = torch.cuda.current_stream(self.device)
        done = torch.cuda.Event()
        with torch.cuda.stream(self._stream):
            target = torch.empty(total, dtype=torch.uint8, device=self.device)
            target.copy_(buffer[:total], non_blocking=True)
            done.record(self._stream)
        self._events[slot] = done
        current.wait_event(done)
        target.record_stream(current)  # freed memory is reused only after the current stream's work
        return [
            target[start:stop].view(array.shape)
            for array, start, stop in zip(arrays, offsets[:-1], offsets[1:], strict=True)
        ]


_UPLOADERS: dict[str, PinnedUploader] = {}


def default_uploader(device: torch.device | str) -> PinnedUploader:
    """One shared uploader per device (its pinned buffers are reused from call to call)."""
    key = str(torch.device(device))
    if key not in _UPLOADERS:
        _UPLOADERS[key] = PinnedUploader(device)
    return _UPLOADERS[key]


def _raw_bytes(data: ImageData, name: str | None) -> tuple[bytes, str]:
    if isinstance(data, str | Path):
        label = name or str(data)
        return _read_file(Path(data), label), label
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data), name or "<bytes>"
    raise ImageDecodeError(f"{name or '<input>'}: expected a path or bytes, got {type(data).__name__}")


def _checked(raw: bytes, label: str, max_pixels: int) -> bool:
    """Size checks before decoding, as `decode_image` does them; True when a GPU decoder may take it."""
    if not raw:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    size = read_header_size(raw)
    if size is not None:
        _check_size(size[0], size[1], max_pixels, label)
    # nvJPEG decodes a truncated file without complaint (grey rows): a JPEG without its end-of-image
    # marker goes to OpenCV, which decides (and refuses it the way `decode_image` does)
    return raw.startswith(JPEG_MAGIC) and size is not None and JPEG_END in raw[-64:]


def _chw_rgb_to_hwc_bgr(image: torch.Tensor) -> torch.Tensor:
    return image.flip(0).permute(1, 2, 0).contiguous()


def _decode_torchvision(raws: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.from_numpy(np.frombuffer(raw, np.uint8).copy()) for raw in raws]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        return [_chw_rgb_to_hwc_bgr(image) for image in decoded]
    except Exception:  # one bad file fails the batched call: retry one by one to isolate it
        pass
    out: list[torch.Tensor | None] = []
    for tensor in tensors:
        try:
            out.append(_chw_rgb_to_hwc_bgr(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device)))
        except Exception:
            out.append(None)
    return out


def _decode_nvimgcodec(raws: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    decoder = _nvimgcodec_decoder(device.index or 0)
    out: list[torch.Tensor | None] = []
    for raw in raws:
        try:
            image = decoder.decode(raw)  # None when it cannot decode
            if image is None:
                out.append(None)
                continue
            tensor = torch.from_dlpack(image.to_dlpack()).to(device)  # (H, W, C) RGB, zero-copy
            if tensor.ndim == 2:
                tensor = tensor[:, :, None]
            if tensor.shape[2] == 1:
                tensor = tensor.expand(-1, -1, 3)
            out.append(tensor[:, :, :3].flip(-1).contiguous())  # RGB -> BGR
        except Exception:  # nvImageCodec raises its own exception types; OpenCV gets the file then
            out.append(None)
    return out


@functools.cache
def _nvimgcodec_decoder(device_id: int) -> Any:
    from nvidia import nvimgcodec

    return nvimgcodec.Decoder(device_id=device_id)


def decode_images_gpu(
    items: Sequence[ImageData],
    *,
    device: torch.device | str = "cuda",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    names: Sequence[str | None] | None = None,
    uploader: PinnedUploader | None = None,
) -> list[torch.Tensor]:
    """Decode several images onto `device`; JPEGs in one batched GPU call where the decoder allows it.

    names: what to call each item in error messages (default: its path, or "<bytes>"). Raises
    `ImageDecodeError` (as `decode_image` would) for the first item that cannot be decoded; decode
    items one by one to keep going after a bad one.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ImageDecodeError(f"GPU decoding needs a CUDA device, not {dev}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    names = list(names) if names is not None else [None] * len(items)
    if len(names) != len(items):
        raise ImageDecodeError(f"got {len(items)} images but {len(names)} names")
    raws, labels, gpu_ok = [], [], []
    for item, name in zip(items, names, strict=True):
        raw, label = _raw_bytes(item, name)
        raws.append(raw)
        labels.append(label)
        gpu_ok.append(_checked(raw, label, max_pixels))
    decoded: list[torch.Tensor | None] = [None] * len(raws)
    gpu_indices = [i for i, ok in enumerate(gpu_ok) if ok]
    decoder = gpu_decoder_name()
    if gpu_indices and decoder != "cv2":
        decode = _decode_torchvision if decoder == "torchvision" else _decode_nvimgcodec
        for index, image in zip(gpu_indices, decode([raws[i] for i in gpu_indices], dev), strict=True):
            if image is not None:
                _check_size(int(image.shape[1]), int(image.shape[0]), max_pixels, labels[index])
                decoded[index] = image
    cpu_indices = [i for i, image in enumerate(decoded) if image is None]
    if cpu_indices:
        host = [decode_image(raws[i], max_pixels=max_pixels, name=labels[i]) for i in cpu_indices]
        uploaded = (uploader or default_uploader(dev)).upload(host)
        for index, image in zip(cpu_indices, uploaded, strict=True):
            decoded[index] = image
    return decoded  # type: ignore[return-value]


def decode_image_gpu(
    data: ImageData,
    *,
    device: torch.device | str = "cuda",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    uploader: PinnedUploader | None = None,
) -> torch.Tensor:
    """`decode_image` onto the GPU: a path or encoded bytes -> `(H, W, 3) uint8` BGR tensor on `device`."""
    (image,) = decode_images_gpu(
        [data], device=device, max_pixels=max_pixels, names=[name], uploader=uploader
    )
    return image


def upload_images(
    images: Sequence[np.ndarray], device: torch.device | str, uploader: PinnedUploader | None = None
) -> list[torch.Tensor]:
    """Host `(H, W, 3) uint8` BGR images on `device`: one pinned async transfer for all on CUDA."""
    if torch.device(device).type != "cuda":
        return [torch.from_numpy(np.ascontiguousarray(image)).to(device) for image in images]
    return (uploader or default_uploader(device)).upload(images)
