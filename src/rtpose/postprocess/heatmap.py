"""Heatmap decoding for top-down heatmap models, NumPy reference and torch (CPU/CUDA).

Every function takes either NumPy arrays or torch tensors and returns the same kind (torch results stay
on the input's device), so a GPU pipeline never round-trips through the host. The NumPy code is the
reference the torch code is tested against.

Coordinate convention (MMPose's heatmap codec): heatmap cell ``j`` is input pixel ``j * stride``. When the
heatmaps are first resized to the input size (what the seed product did before refining), resized pixel
``i`` lies at heatmap coordinate ``(i + 0.5) / s - 0.5`` (half-pixel centres, as OpenCV and torch resize),
so both paths map a peak to the same input pixel.

Resizing is a product with two small interpolation matrices (``rows @ maps @ cols.T``): the same
matrices serve NumPy and torch, bilinear and bicubic (Keys, A = -0.75, clamped borders: OpenCV's
INTER_CUBIC and torch's ``interpolate(mode="bicubic", align_corners=False)``), which keeps both backends
numerically in step and is a single batched matmul on the GPU.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch

from rtpose.errors import RtposeError

Array = Any  # np.ndarray or torch.Tensor
ResizeMode = Literal["bilinear", "bicubic"]
Refine = Literal["quadratic", "dark"] | None

_CUBIC_A = -0.75


def is_torch(array: Any) -> bool:
    return isinstance(array, torch.Tensor)


def _check_maps(heatmaps: Array, name: str = "heatmaps") -> None:
    if not isinstance(heatmaps, np.ndarray | torch.Tensor):
        raise RtposeError(f"{name} must be a NumPy array or a torch tensor, got {type(heatmaps).__name__}")
    if heatmaps.ndim < 3:
        raise RtposeError(f"{name} must be (..., K, H, W), got shape {tuple(heatmaps.shape)}")
    if heatmaps.shape[-1] < 1 or heatmaps.shape[-2] < 1:
        raise RtposeError(f"{name} have an empty spatial size {tuple(heatmaps.shape)}")


# --------------------------------------------------------------------------------------------- resize
def _cubic_weights(t: float) -> tuple[float, float, float, float]:
    a = _CUBIC_A

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


@lru_cache(maxsize=64)
def interpolation_matrix(size_in: int, size_out: int, mode: ResizeMode) -> np.ndarray:
    """(size_out, size_in) float32 matrix M with ``resized = M @ signal`` (half-pixel centres)."""
    if mode not in ("bilinear", "bicubic"):
        raise RtposeError(f"unknown resize mode {mode!r}; use 'bilinear' or 'bicubic'")
    scale = size_in / size_out
    matrix = np.zeros((size_out, size_in), np.float64)
    for i in range(size_out):
        src = (i + 0.5) * scale - 0.5
        if mode == "bilinear":
            src = max(src, 0.0)
            left = math.floor(src)
            t = src - left
            taps, weights = (left, left + 1), (1 - t, t)
        else:
            left = math.floor(src)
            t = src - left
            taps, weights = (left - 1, left, left + 1, left + 2), _cubic_weights(t)
        for tap, weight in zip(taps, weights, strict=True):
            matrix[i, min(max(tap, 0), size_in - 1)] += weight
    return matrix.astype(np.float32)


@lru_cache(maxsize=64)
def _matrix_on(size_in: int, size_out: int, mode: ResizeMode, device: torch.device) -> torch.Tensor:
    # cached per device: a fresh host-to-device copy per call costs more than the resize on a GPU
    return torch.from_numpy(interpolation_matrix(size_in, size_out, mode)).to(device)


def resize_heatmaps(heatmaps: Array, size: tuple[int, int], mode: ResizeMode = "bicubic") -> Array:
    """Resize (..., H, W) maps to ``size`` = (height, width)."""
    _check_maps(heatmaps)
    height, width = heatmaps.shape[-2:]
    rows = interpolation_matrix(height, int(size[0]), mode)
    cols = interpolation_matrix(width, int(size[1]), mode)
    lead = tuple(heatmaps.shape[:-2])
    count = int(np.prod(lead, dtype=np.int64))
    out_h, out_w = rows.shape[0], cols.shape[0]
    # Two plain 2-D GEMMs (one BLAS call each) instead of a broadcast batched matmul, which NumPy runs
    # as a slow loop of small products: first along the width, then along the height.
    if is_torch(heatmaps):
        maps = heatmaps.float().reshape(count * height, width)
        rows_t = _matrix_on(height, out_h, mode, maps.device)
        cols_t = _matrix_on(width, out_w, mode, maps.device)
        along_w = (maps @ cols_t.T).reshape(count, height, out_w).transpose(0, 1).reshape(height, -1)
        out = (rows_t @ along_w).reshape(out_h, count, out_w).transpose(0, 1)
        return out.reshape(*lead, out_h, out_w).contiguous()
    maps = np.asarray(heatmaps, np.float32).reshape(count * height, width)
    along_w = (maps @ cols.T).reshape(count, height, out_w).transpose(1, 0, 2).reshape(height, -1)
    out = (rows @ along_w).reshape(out_h, count, out_w).transpose(1, 0, 2)
    return np.ascontiguousarray(out.reshape(*lead, out_h, out_w))


# --------------------------------------------------------------------------------------------- maxima
def get_heatmap_maximum(heatmaps: Array) -> tuple[Array, Array]:
    """Per-map argmax. (..., K, H, W) -> (locations (..., K, 2) float32 x, y; max values (..., K)).

    Ties go to the first maximum in row-major order in both backends.
    """
    _check_maps(heatmaps)
    width = heatmaps.shape[-1]
    if is_torch(heatmaps):
        flat = heatmaps.float().flatten(-2)
        values, index = flat.max(dim=-1)
        locations = torch.stack([index % width, torch.div(index, width, rounding_mode="floor")], dim=-1)
        return locations.float(), values
    flat = np.asarray(heatmaps, np.float32).reshape(*heatmaps.shape[:-2], -1)
    index = flat.argmax(axis=-1)
    values = np.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
    locations = np.stack([index % width, index // width], axis=-1).astype(np.float32)
    return locations, values


def _sample_at(heatmaps: Array, x: Array, y: Array) -> Array:
    """Values of (..., K, H, W) maps at integer (..., K) positions, clamped to the map (edge padding)."""
    height, width = heatmaps.shape[-2:]
    if is_torch(heatmaps):
        xi = x.long().clamp(0, width - 1)
        yi = y.long().clamp(0, height - 1)
        flat = heatmaps.flatten(-2)
        return torch.gather(flat, -1, (yi * width + xi).unsqueeze(-1)).squeeze(-1)
    xi = np.clip(x.astype(np.int64), 0, width - 1)
    yi = np.clip(y.astype(np.int64), 0, height - 1)
    flat = heatmaps.reshape(*heatmaps.shape[:-2], -1)
    return np.take_along_axis(flat, (yi * width + xi)[..., None], axis=-1)[..., 0]


def refine_quadratic(heatmaps: Array, locations: Array) -> Array:
    """Classic refinement: move 0.25 px towards the higher neighbour along x and y.

    Only where both neighbours exist (not on the map border), as MMPose's classic refine.
    """
    _check_maps(heatmaps)
    height, width = heatmaps.shape[-2:]
    lib = torch if is_torch(heatmaps) else np
    maps = heatmaps.float() if is_torch(heatmaps) else np.asarray(heatmaps, np.float32)
    x, y = locations[..., 0], locations[..., 1]
    dx = _sample_at(maps, x + 1, y) - _sample_at(maps, x - 1, y)
    dy = _sample_at(maps, x, y + 1) - _sample_at(maps, x, y - 1)
    inside_x = (x > 0) & (x < width - 1)
    inside_y = (y > 0) & (y < height - 1)
    shift = lib.stack([lib.sign(dx) * inside_x, lib.sign(dy) * inside_y], -1) * 0.25
    return locations + shift


def _gaussian_kernel(size: int) -> np.ndarray:
    # OpenCV's sigma for GaussianBlur(ksize, 0).
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(heatmaps: Array, kernel_size: int) -> Array:
    """Separable Gaussian blur of (..., H, W) maps with zero padding (MMPose's DARK modulation)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise RtposeError(f"blur kernel size must be odd and positive, got {kernel_size}")
    kernel = _gaussian_kernel(kernel_size)
    half = kernel_size // 2
    if is_torch(heatmaps):
        shape = heatmaps.shape
        maps = heatmaps.float().reshape(-1, 1, *shape[-2:])
        k = torch.from_numpy(kernel).to(maps.device)
        maps = torch.nn.functional.conv2d(maps, k.view(1, 1, 1, -1), padding=(0, half))
        maps = torch.nn.functional.conv2d(maps, k.view(1, 1, -1, 1), padding=(half, 0))
        return maps.reshape(shape)
    maps = np.asarray(heatmaps, np.float32)
    height, width = maps.shape[-2:]
    pad = [(0, 0)] * (maps.ndim - 2) + [(half, half), (half, half)]
    padded = np.pad(maps, pad)
    rows = sum(kernel[i] * padded[..., :, i : i + width] for i in range(kernel_size))
    return sum(kernel[i] * rows[..., i : i + height, :] for i in range(kernel_size))


def refine_dark(heatmaps: Array, locations: Array, kernel_size: int = 11) -> Array:
    """DARK: Gaussian-modulate the maps, then one Newton step on the log-heatmap at the maximum.

    offset = -H^-1 g with derivatives from central differences (step 2 for the second derivatives,
    as MMPose); where the Hessian is singular nothing moves, and the step is clipped to 1 cell.
    """
    _check_maps(heatmaps)
    torch_in = is_torch(heatmaps)
    lib = torch if torch_in else np
    maps = heatmaps.float() if torch_in else np.asarray(heatmaps, np.float32)
    blurred = gaussian_blur(maps, kernel_size)
    # Keep each map's maximum after blurring; this only matters through the clip below.
    if torch_in:
        peak_before = maps.flatten(-2).amax(-1)[..., None, None]
        peak_after = blurred.flatten(-2).amax(-1)[..., None, None]
        log_maps = torch.log((blurred * (peak_before / peak_after.clamp_min(1e-12))).clamp(1e-3, 50.0))
    else:
        peak_before = maps.reshape(*maps.shape[:-2], -1).max(-1)[..., None, None]
        peak_after = blurred.reshape(*maps.shape[:-2], -1).max(-1)[..., None, None]
        scaled = blurred * (peak_before / np.maximum(peak_after, 1e-12))
        log_maps = np.log(np.clip(scaled, 1e-3, 50.0)).astype(np.float32)
    x, y = locations[..., 0], locations[..., 1]

    def at(dx: int, dy: int) -> Array:
        return _sample_at(log_maps, x + dx, y + dy)

    center = at(0, 0)
    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    hxx = 0.25 * (at(2, 0) - 2 * center + at(-2, 0))
    hyy = 0.25 * (at(0, 2) - 2 * center + at(0, -2))
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy * hxy
    usable = lib.abs(det) > 1e-6
    safe_det = lib.where(usable, det, lib.ones_like(det))
    off_x = -(hyy * gx - hxy * gy) / safe_det
    off_y = -(hxx * gy - hxy * gx) / safe_det
    offset = lib.stack([off_x, off_y], -1) * usable[..., None]
    offset = offset.clamp(-1.0, 1.0) if torch_in else np.clip(offset, -1.0, 1.0)
    return locations + offset


# --------------------------------------------------------------------------------------------- decode
def decode_heatmaps(
    heatmaps: Array,
    *,
    stride: float,
    refine: Refine = "dark",
    resize_to: tuple[int, int] | None = None,
    resize_mode: ResizeMode = "bicubic",
    dark_kernel: int = 11,
) -> tuple[Array, Array]:
    """(N, K, H, W) heatmaps -> (keypoints (N, K, 2) in network-input pixels, scores (N, K)).

    resize_to: (height, width) of the network input to resize the maps to before taking the maximum
    (the seed's path); refinement then runs on the resized maps, where DARK's kernel is scaled by the
    stride. scores are the maps' maximum values.
    """
    _check_maps(heatmaps)
    if heatmaps.ndim != 4:
        raise RtposeError(f"heatmaps must be (N, K, H, W), got shape {tuple(heatmaps.shape)}")
    if refine not in (None, "quadratic", "dark"):
        raise RtposeError(f"unknown heatmap refinement {refine!r}; use None, 'quadratic' or 'dark'")
    if stride <= 0:
        raise RtposeError(f"heatmap stride must be positive, got {stride}")
    maps = heatmaps
    scale = 1.0
    if resize_to is not None:
        maps = resize_heatmaps(heatmaps, resize_to, resize_mode)
        scale = resize_to[0] / heatmaps.shape[-2]
        dark_kernel = round(dark_kernel * scale) | 1
    locations, scores = get_heatmap_maximum(maps)
    if refine == "quadratic":
        locations = refine_quadratic(maps, locations)
    elif refine == "dark":
        locations = refine_dark(maps, locations, dark_kernel)
    if resize_to is not None:
        # resized pixel -> heatmap cell (half-pixel centres) -> input pixel
        locations = (locations + 0.5) / scale - 0.5
    return locations * stride, scores


def decode(outputs: dict[str, Array], spec: Any) -> tuple[Array, Array]:
    """Codec entry point for a top-down heatmap model spec (``extra["codec"] == "heatmap"``).

    spec.extra: ``heatmap_stride`` (required), ``refine`` ("dark" default, "quadratic" or None),
    ``heatmap_output`` (output name, default: the only output or "heatmaps"), ``heatmap_resize``
    (None, "bilinear" or "bicubic": resize to spec.input_size first), ``dark_kernel`` (default 11).
    """
    extra = getattr(spec, "extra", {}) or {}
    if "heatmap_stride" not in extra:
        raise RtposeError(f"model spec {getattr(spec, 'name', '?')!r} has no extra['heatmap_stride']")
    name = extra.get("heatmap_output")
    if name is None:
        name = next(iter(outputs)) if len(outputs) == 1 else "heatmaps"
    if name not in outputs:
        raise RtposeError(f"heatmap output {name!r} not among the model outputs {sorted(outputs)}")
    resize = extra.get("heatmap_resize")
    return decode_heatmaps(
        outputs[name],
        stride=float(extra["heatmap_stride"]),
        refine=extra.get("refine", "dark"),
        resize_to=tuple(spec.input_size) if resize else None,
        resize_mode=resize or "bicubic",
        dark_kernel=int(extra.get("dark_kernel", 11)),
    )
