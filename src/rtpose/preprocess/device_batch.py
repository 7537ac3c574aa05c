"""Batched preprocessing for the device hot path: many images in, one normalised network batch out.

The single-image torch functions (`letterbox.letterbox_torch`, `affine.warp_crops_torch`,
`normalize.normalize_torch`) are the readable versions; these do the same arithmetic for a whole batch,
in place of their glue:

* `letterbox_normalize_torch`: B images of any sizes -> one (B, 3, H, W) detector input, letterboxed
  and normalised, written into `out` (e.g. a compiled engine's CUDA-graph input rows);
* `crop_normalize_torch`: the affine crops of *all* persons of *all* images in one bilinear gather,
  normalised straight into the pose engine's input `out`.

They never copy small host values to the device with a blocking copy (which synchronises the stream):
per-crop parameters travel in one non-blocking copy from pinned memory, per-image values as Python
scalars. Results equal the single-image functions exactly (same operations in the same order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rtpose.errors import RtposeError
from rtpose.preprocess.affine import invert_affine_matrices
from rtpose.preprocess.letterbox import letterbox_size


def to_device_async(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A small host array on `device` without stalling the stream (pinned + non-blocking on CUDA)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def normalize_into(
    batch: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    channel_order: str,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, H, W, 3) BGR (uint8 or float) -> `out` (N, 3, H, W) float32 = (x - mean) / std.

    mean, std: (3,) float32 tensors on the batch's device, in the network's channel order (as in the
    spec). Same arithmetic as `normalize.normalize_torch`, without its temporaries.
    """
    if channel_order == "RGB":
        batch = batch.flip(-1)
    elif channel_order != "BGR":
        raise RtposeError(f"channel order must be 'RGB' or 'BGR', not {channel_order!r}")
    source = batch.permute(0, 3, 1, 2)
    if out is None:
        out = torch.empty(source.shape, dtype=torch.float32, device=batch.device)
    elif tuple(out.shape) != tuple(source.shape) or out.dtype != torch.float32:
        raise RtposeError(f"output buffer {tuple(out.shape)} {out.dtype} does not fit {tuple(source.shape)}")
    torch.sub(source.to(torch.float32), mean.view(1, 3, 1, 1), out=out)
    return out.div_(std.view(1, 3, 1, 1))


def letterbox_normalize_torch(
    images: Sequence[torch.Tensor] | torch.Tensor,
    size: tuple[int, int],
    pad_value: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    channel_order: str,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """Letterbox + normalise B (h_i, w_i, 3) uint8 images -> ((B, 3, H, W) float32, scales [(sx, sy)]).

    Same canvases as `letterbox_torch` (bilinear, half-pixel centres, rounded to uint8, padded with
    `pad_value` at the bottom/right); the scales are Python floats (no device round trip). `images` may
    also be one (B, h, w, 3) tensor (images of one size, resized without stacking them first).
    """
    if len(images) == 0:
        raise RtposeError("letterbox_normalize_torch got no images")
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        shape = tuple(images.shape[1:])
        return _letterbox_groups(images, {shape: list(range(len(images)))}, size, pad_value, mean, std,
                                 channel_order, out, stacked=images)  # fmt: skip
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    return _letterbox_groups(images, groups, size, pad_value, mean, std, channel_order, out)


def _letterbox_groups(
    images: Sequence[torch.Tensor],
    groups: dict[tuple[int, ...], list[int]],
    size: tuple[int, int],
    pad_value: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    channel_order: str,
    out: torch.Tensor | None,
    stacked: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """`letterbox_normalize_torch` for images grouped by shape (one resize call per group)."""
    device = images[0].device
    canvas = torch.full((len(images), size[0], size[1], 3), pad_value, dtype=torch.uint8, device=device)
    scales: list[tuple[float, float]] = [(1.0, 1.0)] * len(images)
    for shape, indices in groups.items():
        if len(shape) != 3 or shape[2] != 3 or images[indices[0]].dtype != torch.uint8:
            raise RtposeError(f"expected (H, W, 3) uint8 images, got {shape} {images[indices[0]].dtype}")
        new_h, new_w = letterbox_size(shape[:2], size)
        if stacked is not None:
            stack = stacked
        elif len(indices) > 1:
            stack = torch.stack([images[i] for i in indices])
        else:
            stack = images[indices[0]][None]
        resized = F.interpolate(
            stack.permute(0, 3, 1, 2).float(), size=(new_h, new_w), mode="bilinear",
            align_corners=False, antialias=False,
        )  # fmt: skip
        resized = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        if indices == list(range(len(images))):
            canvas[:, :new_h, :new_w] = resized
        else:
            for position, index in enumerate(indices):  # basic indexing: no index tensor to upload
                canvas[index, :new_h, :new_w] = resized[position]
        for index in indices:
            scales[index] = (new_w / shape[1], new_h / shape[0])
    return normalize_into(canvas, mean, std, channel_order, out), scales


class ImagePack:
    """Images of any sizes as one flat (P, 3) uint8 pixel tensor, so one gather can read them all."""

    def __init__(self, images: Sequence[torch.Tensor]) -> None:
        if not images:
            raise RtposeError("ImagePack needs at least one image")
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
                raise RtposeError(f"expected (H, W, 3) uint8 images, got {tuple(image.shape)} {image.dtype}")
        flat = [image.reshape(-1, 3) for image in images]
        self.pixels = flat[0] if len(flat) == 1 else torch.cat(flat)
        self.heights = [int(image.shape[0]) for image in images]
        self.widths = [int(image.shape[1]) for image in images]
        self.offsets = np.cumsum([0] + [h * w for h, w in zip(self.heights, self.widths, strict=True)])[:-1]
        self.device = self.pixels.device

    @classmethod
    def from_batch(cls, images: torch.Tensor) -> ImagePack:
        """A (B, H, W, 3) uint8 tensor of images of one size, viewed in place (no copy)."""
        shape_ok = images.ndim == 4 and images.shape[3] == 3 and images.dtype == torch.uint8
        if not shape_ok or not images.is_contiguous():
            raise RtposeError(f"expected a contiguous (B, H, W, 3) uint8 tensor, got {tuple(images.shape)}")
        self = cls.__new__(cls)
        batch, height, width = (int(d) for d in images.shape[:3])
        self.pixels = images.view(-1, 3)
        self.heights, self.widths = [height] * batch, [width] * batch
        self.offsets = np.arange(batch, dtype=np.int64) * height * width
        self.device = images.device
        return self

    def param_table(self) -> torch.Tensor:
        """(B, 3) int64 [pixel offset, height, width] per image on the device (index it per crop)."""
        table = np.stack([self.offsets, self.heights, self.widths], axis=1).astype(np.int64)
        return to_device_async(table, self.device)

    def crop_params(self, image_of_crop: Sequence[int]) -> torch.Tensor:
        """(N, 3) int64 [pixel offset, height, width] of each crop's image, on the device."""
        index = np.asarray(image_of_crop, dtype=np.int64)
        params = np.stack(
            [self.offsets[index], np.asarray(self.heights)[index], np.asarray(self.widths)[index]], axis=1
        ).astype(np.int64)
        return to_device_async(params, self.device)


def crop_normalize_torch(
    pack: ImagePack,
    crop_params: torch.Tensor,
    matrices: torch.Tensor,
    out_size: tuple[int, int],
    mean: torch.Tensor,
    std: torch.Tensor,
    channel_order: str,
    out: torch.Tensor | None = None,
    inverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every crop of every image in one gather, normalised into `out` (N, 3, out_h, out_w) float32.

    crop_params: (N, 3) from `pack.crop_params`. matrices: (N, 2, 3) image -> crop (float64 preferred,
    as the NumPy reference builds them); `inverse`: their inverses when the caller has them already
    (each op counts on a GPU). Pixels equal `warp_crops_torch` of each crop's own image (bilinear,
    neighbours outside the image count as 0, rounded to uint8 values), then normalised as
    `normalize_torch` does.
    """
    n = int(matrices.shape[0])
    out_h, out_w = out_size
    if tuple(matrices.shape[1:]) != (2, 3) or tuple(crop_params.shape) != (n, 3):
        raise RtposeError(
            f"need matrices (N, 2, 3) and crop params (N, 3); got {tuple(matrices.shape)}, "
            f"{tuple(crop_params.shape)}"
        )
    device = pack.device
    if n == 0:
        empty = torch.zeros((0, out_h, out_w, 3), dtype=torch.uint8, device=device)
        return normalize_into(empty, mean, std, channel_order, out)
    if inverse is None:
        inverse = invert_affine_matrices(matrices.to(device=device, dtype=torch.float64))
    inverse = inverse.to(device=device, dtype=torch.float32)
    ys = torch.arange(out_h, device=device, dtype=torch.float32).view(1, out_h, 1)
    xs = torch.arange(out_w, device=device, dtype=torch.float32).view(1, 1, out_w)
    inv = inverse.view(n, 6, 1, 1)
    src_x = inv[:, 0] * xs + inv[:, 1] * ys + inv[:, 2]  # (N, out_h, out_w)
    src_y = inv[:, 3] * xs + inv[:, 4] * ys + inv[:, 5]
    x0, y0 = torch.floor(src_x), torch.floor(src_y)
    fx, fy = src_x - x0, src_y - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)

    offset = crop_params[:, 0].view(n, 1, 1)
    height = crop_params[:, 1].view(n, 1, 1)
    width = crop_params[:, 2].view(n, 1, 1)
    result = torch.zeros((n, out_h, out_w, 3), dtype=torch.float32, device=device)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        yi = y0 + dy
        valid_y = (yi >= 0) & (yi < height)
        row = torch.minimum(yi.clamp(min=0), height - 1) * width
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi = x0 + dx
            valid = valid_y & (xi >= 0) & (xi < width)
            index = (offset + row + torch.minimum(xi.clamp(min=0), width - 1)).reshape(-1)
            weight = (wy * wx * valid).unsqueeze(-1)
            result += weight * pack.pixels.index_select(0, index).view(n, out_h, out_w, 3).to(torch.float32)
    return normalize_into(result.round_().clamp_(0, 255), mean, std, channel_order, out)
