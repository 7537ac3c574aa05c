"""Letterbox for detectors: mmdet's `Resize(keep_ratio=True)` then `Pad` to the network size.

The image is scaled by s = min(H / h, W / w) to (int(w * s + 0.5), int(h * s + 0.5)) with bilinear
interpolation (half-pixel centres, no antialiasing: cv2.INTER_LINEAR), placed in the top-left corner and
the rest filled with `pad_value`. As in mmdet, the returned scale is per axis, (new_w / w, new_h / h),
which is what maps network-input boxes back exactly: `boxes / (sx, sy, sx, sy)`.

For square network sizes s equals mmdet's min(long-edge, short-edge) rule; for other sizes this rule
is the one that always fits the canvas.

NumPy (cv2) is the reference; the torch version is batched and runs on the images' device. Both give
uint8 HWC canvases in the input's channel order; normalisation is a separate step.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from rtpose.errors import ImageDecodeError


def letterbox_size(image_hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(new_h, new_w) of the resized image inside a `size` (H, W) canvas."""
    height, width = image_hw
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"cannot letterbox an empty image of size {width}x{height}")
    scale = min(size[0] / height, size[1] / width)
    return min(int(height * scale + 0.5), size[0]), min(int(width * scale + 0.5), size[1])


def _check_image(shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or shape[2] != 3:
        raise ImageDecodeError(f"expected an (H, W, 3) image, got shape {shape}")


def letterbox_numpy(
    image: np.ndarray, size: tuple[int, int], pad_value: int = 114
) -> tuple[np.ndarray, np.ndarray]:
    """(canvas (H, W, 3) uint8, scale (2,) float64 = (sx, sy)) for one HWC uint8 image."""
    _check_image(image.shape)
    if image.dtype != np.uint8:
        raise ImageDecodeError(f"expected a uint8 image, got {image.dtype}")
    new_h, new_w = letterbox_size(image.shape[:2], size)
    canvas = np.full((size[0], size[1], 3), pad_value, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, np.array([new_w / image.shape[1], new_h / image.shape[0]])


def letterbox_torch(
    images: torch.Tensor | Sequence[torch.Tensor], size: tuple[int, int], pad_value: int = 114
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched letterbox: (canvases (N, H, W, 3) uint8, scales (N, 2) float64) on the images' device.

    `images`: a uint8 (N, h, w, 3) tensor, or a list of (h_i, w_i, 3) uint8 tensors of any sizes.
    """
    batch = list(images) if not isinstance(images, torch.Tensor) else list(images.unbind(0))
    if not batch:
        raise ImageDecodeError("letterbox_torch got no images")
    device = batch[0].device
    canvas = torch.full((len(batch), size[0], size[1], 3), pad_value, dtype=torch.uint8, device=device)
    scales = torch.empty(len(batch), 2, dtype=torch.float64)
    # images of one shape share one interpolate call
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(batch):
        _check_image(tuple(image.shape))
        if image.dtype != torch.uint8:
            raise ImageDecodeError(f"expected uint8 images, got {image.dtype}")
        groups.setdefault(tuple(image.shape), []).append(index)
    for shape, indices in groups.items():
        new_h, new_w = letterbox_size(shape[:2], size)
        stack = torch.stack([batch[i] for i in indices]).permute(0, 3, 1, 2).float()
        resized = F.interpolate(
            stack, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False
        )
        resized = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        canvas[indices, :new_h, :new_w] = resized
        scales[indices] = torch.tensor([new_w / shape[1], new_h / shape[0]], dtype=torch.float64)
    return canvas, scales


def unletterbox_boxes(boxes: np.ndarray, scale: np.ndarray | float, image_hw: tuple[int, int]) -> np.ndarray:
    """Network-input boxes (K, 4) x1y1x2y2 -> image pixels: divide by the scale, clip to the image."""
    factors = np.broadcast_to(np.asarray(scale, dtype=np.float64), (2,))
    out = np.asarray(boxes, dtype=np.float64) / np.tile(factors, 2)
    out[:, 0::2] = out[:, 0::2].clip(0, image_hw[1])
    out[:, 1::2] = out[:, 1::2].clip(0, image_hw[0])
    return out.astype(np.float32)


def unletterbox_boxes_torch(
    boxes: torch.Tensor, scale: torch.Tensor, image_hw: tuple[int, int]
) -> torch.Tensor:
    """Torch twin of `unletterbox_boxes` for one image (scale (2,) or scalar)."""
    factors = torch.as_tensor(scale, dtype=torch.float64, device=boxes.device).expand(2).repeat(2)
    out = boxes.double() / factors
    out[:, 0::2] = out[:, 0::2].clamp(0, image_hw[1])
    out[:, 1::2] = out[:, 1::2].clamp(0, image_hw[0])
    return out.float()
