"""Person boxes -> affine crops for top-down pose models, and the way back for keypoints.

The recipe is MMPose's standard top-down one (non-UDP, no rotation):

1. box (x1, y1, x2, y2) -> centre and size, the size grown by `padding` (1.25 for RTMPose);
2. the short side of the size is grown so that w / h equals the network input's aspect ratio;
3. an affine transform maps the box centre to the centre of the output, (out_w / 2, out_h / 2), with
   the isotropic scale s = out_w / w (MMPose's `get_warp_matrix` derives the scale from the width only):
   `M = [[s, 0, out_w/2 - s*cx], [0, s, out_h/2 - s*cy]]`;
4. `cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT 0)`.

Keypoints predicted in crop pixels go back to the image with the inverse of each crop's M.

The small maths (boxes, matrices, points) works on NumPy arrays and on torch tensors alike (same kind
out as in), so a GPU pipeline keeps everything on its device. The warp itself has a NumPy/OpenCV
reference (`warp_crops_numpy`) and a torch version (`warp_crops_torch`) that does every crop of an image
in one batched gather. OpenCV >= 4.11 samples INTER_LINEAR at float source coordinates (no 1/32-pixel
grid any more), which is what the torch version does, so the two agree to about one grey level.

Sizes are `(height, width)` throughout, like `ModelSpec.input_size`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from rtpose.errors import RtposeError

if TYPE_CHECKING:
    import torch

Array = Any  # np.ndarray or torch.Tensor: the functions below return the kind they are given


def is_torch(value: object) -> bool:
    """True for a torch tensor, without importing torch."""
    return type(value).__module__.startswith("torch")


def _xp(value: object) -> Any:
    if is_torch(value):
        import torch

        return torch
    return np


def _as_float(value: Array) -> Array:
    if is_torch(value):
        return value if value.is_floating_point() else value.float()
    array = np.asarray(value)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)


def bbox_xyxy_to_center_scale(boxes: Array, padding: float = 1.25) -> tuple[Array, Array]:
    """(N, 4) x1y1x2y2 boxes -> centres (N, 2) and padded sizes (N, 2) as (w, h)."""
    boxes = _as_float(boxes)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise RtposeError(f"boxes must have shape (N, 4) as x1, y1, x2, y2; got {tuple(boxes.shape)}")
    xp = _xp(boxes)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    centers = xp.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5], axis=-1)
    scales = xp.stack([(x2 - x1) * padding, (y2 - y1) * padding], axis=-1)
    return centers, scales


def fix_aspect_ratio(scales: Array, aspect: float) -> Array:
    """Grow the short side of each (w, h) so that w / h == aspect (MMPose `_fix_aspect_ratio`)."""
    xp = _xp(scales)
    scales = _as_float(scales)
    w, h = scales[:, 0], scales[:, 1]
    wider = w > h * aspect
    new_w = xp.where(wider, w, h * aspect)
    new_h = xp.where(wider, w / aspect, h)
    return xp.stack([new_w, new_h], axis=-1)


def crop_affine_matrices(centers: Array, scales: Array, out_size: tuple[int, int]) -> Array:
    """(N, 2, 3) matrices mapping image pixels to crop pixels (box centre -> crop centre).

    out_size: (height, width) of the crop. The scale is out_w / w for both axes, so call
    `fix_aspect_ratio` first to keep the whole box in view.
    """
    xp = _xp(centers)
    centers, scales = _as_float(centers), _as_float(scales)
    out_h, out_w = out_size
    s = out_w / scales[:, 0]
    zero = s * 0
    row0 = xp.stack([s, zero, out_w * 0.5 - s * centers[:, 0]], axis=-1)
    row1 = xp.stack([zero, s, out_h * 0.5 - s * centers[:, 1]], axis=-1)
    return xp.stack([row0, row1], axis=1)


def boxes_to_affine_matrices(boxes: Array, out_size: tuple[int, int], padding: float = 1.25) -> Array:
    """All steps at once: x1y1x2y2 boxes -> (N, 2, 3) crop matrices for an (h, w) network input."""
    centers, scales = bbox_xyxy_to_center_scale(boxes, padding)
    scales = fix_aspect_ratio(scales, out_size[1] / out_size[0])
    return crop_affine_matrices(centers, scales, out_size)


def invert_affine_matrices(matrices: Array) -> Array:
    """Inverse of each (2, 3) affine matrix (general 2x2 part, not only scale + shift)."""
    xp = _xp(matrices)
    m = _as_float(matrices)
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    row0 = xp.stack([ia, ib, -(ia * c + ib * f)], axis=-1)
    row1 = xp.stack([id_, ie, -(id_ * c + ie * f)], axis=-1)
    return xp.stack([row0, row1], axis=1)


def transform_points(points: Array, matrices: Array) -> Array:
    """Apply one (2, 3) matrix per instance to its points: (N, K, 2) x (N, 2, 3) -> (N, K, 2)."""
    xp = _xp(points)
    points, matrices = _as_float(points), _as_float(matrices)
    matrices = matrices.to(points.dtype) if is_torch(points) else matrices.astype(points.dtype, copy=False)
    x, y = points[..., 0], points[..., 1]
    new_x = matrices[:, 0, 0, None] * x + matrices[:, 0, 1, None] * y + matrices[:, 0, 2, None]
    new_y = matrices[:, 1, 0, None] * x + matrices[:, 1, 1, None] * y + matrices[:, 1, 2, None]
    return xp.stack([new_x, new_y], axis=-1)


def _check_image_and_matrices(shape: tuple[int, ...], matrices_shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or shape[2] != 3:
        raise RtposeError(f"image must have shape (H, W, 3); got {tuple(shape)}")
    if len(matrices_shape) != 3 or tuple(matrices_shape[1:]) != (2, 3):
        raise RtposeError(f"affine matrices must have shape (N, 2, 3); got {tuple(matrices_shape)}")


def warp_crops_numpy(image: np.ndarray, matrices: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Reference crops: `cv2.warpAffine` per matrix -> (N, out_h, out_w, 3) uint8, border 0."""
    _check_image_and_matrices(image.shape, np.shape(matrices))
    out_h, out_w = out_size
    crops = np.empty((len(matrices), out_h, out_w, 3), dtype=np.uint8)
    for i, matrix in enumerate(np.asarray(matrices, dtype=np.float64)):
        cv2.warpAffine(
            image, matrix, (out_w, out_h), dst=crops[i], flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )  # fmt: skip
    return crops


def warp_crops_torch(image: torch.Tensor, matrices: Array, out_size: tuple[int, int]) -> torch.Tensor:
    """All crops of one image in one batched bilinear gather, on the image's device.

    image: (H, W, 3) uint8 tensor (BGR, like the NumPy images). matrices: (N, 2, 3) image -> crop.
    Returns (N, out_h, out_w, 3) uint8, like `warp_crops_numpy`: each output pixel samples the image at
    the inverse-mapped float position with bilinear weights; neighbours outside the image count as 0.
    """
    import torch

    _check_image_and_matrices(tuple(image.shape), tuple(np.shape(matrices)))
    device = image.device
    height, width = int(image.shape[0]), int(image.shape[1])
    out_h, out_w = out_size
    n = int(matrices.shape[0])
    if n == 0:
        return torch.zeros((0, out_h, out_w, 3), dtype=torch.uint8, device=device)

    matrices_t = torch.as_tensor(matrices, device=device).to(torch.float64)
    inverse = invert_affine_matrices(matrices_t).to(torch.float32)  # (N, 2, 3)
    ys = torch.arange(out_h, device=device, dtype=torch.float32).view(1, out_h, 1)
    xs = torch.arange(out_w, device=device, dtype=torch.float32).view(1, 1, out_w)
    inv = inverse.view(n, 6, 1, 1)
    src_x = inv[:, 0] * xs + inv[:, 1] * ys + inv[:, 2]  # (N, out_h, out_w)
    src_y = inv[:, 3] * xs + inv[:, 4] * ys + inv[:, 5]

    x0 = torch.floor(src_x)
    y0 = torch.floor(src_y)
    fx = src_x - x0
    fy = src_y - y0
    x0 = x0.to(torch.int64)
    y0 = y0.to(torch.int64)

    flat = image.reshape(height * width, 3)
    result = torch.zeros((n, out_h, out_w, 3), dtype=torch.float32, device=device)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        yi = y0 + dy
        valid_y = (yi >= 0) & (yi < height)
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi = x0 + dx
            valid = valid_y & (xi >= 0) & (xi < width)
            index = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).reshape(-1)
            weight = (wy * wx * valid).unsqueeze(-1)
            result += weight * flat.index_select(0, index).view(n, out_h, out_w, 3).to(torch.float32)
    return result.round_().clamp_(0, 255).to(torch.uint8)
