"""`crop_normalize_torch` as one Triton kernel, for the pose steps of the CUDA-graph hot path.

Why: the torch version computes the crops of all persons with ~40 full-size elementwise kernels (source
coordinates, four int64 index computations and gathers, weights, sums, rounding, normalisation). On the
H100 those kernels took ~1.2 ms of the 5.9 ms of GPU time of an 8-frame video step (64 crops; profile in
docs/benchmarks.md); one kernel reads each source pixel once and writes each output value once.

Results are bit-identical to `crop_normalize_torch`: every float operation is the same one in the same
order, rounded as torch rounds it (`rtpose.triton_exact`); rounding to grey levels is round-half-to-even
as `torch.round`.
"""

from __future__ import annotations

import functools

import torch

from rtpose.errors import RtposeError
from rtpose.triton_exact import ROUND_EACH_OP, available, triton

__all__ = ["available", "crop_inverse_matrices_triton", "crop_normalize_triton"]

_BLOCK = 256

if triton is not None:
    import triton.language as tl
    from triton.language.extra import libdevice

    from rtpose.triton_exact import add as _add
    from rtpose.triton_exact import div as _div
    from rtpose.triton_exact import mul as _mul
    from rtpose.triton_exact import sub as _sub

    @triton.jit
    def _round_half_even(x, RN: tl.constexpr):
        if RN:
            return libdevice.rint(x)
        return (x + 12582912.0) - 12582912.0  # 1.5 * 2**23: exact for |x| < 2**22 in float32

    @triton.jit
    def _crop_normalize_kernel(
        frames_ptr,  # uint8 (B, H, W, 3)
        image_ptr,  # int64 (N,)
        inverse_ptr,  # float32 (N, 6): crop pixel -> image pixel
        mean_ptr,  # float32 (3,), network channel order
        std_ptr,
        out_ptr,  # float32 (N, 3, OH, OW)
        height,
        width,
        out_h,
        out_w,
        RGB: tl.constexpr,
        RN: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        crop = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < out_h * out_w
        ox = (offs % out_w).to(tl.float32)
        oy = (offs // out_w).to(tl.float32)
        row = inverse_ptr + crop * 6
        i0, i1, i2 = tl.load(row), tl.load(row + 1), tl.load(row + 2)
        i3, i4, i5 = tl.load(row + 3), tl.load(row + 4), tl.load(row + 5)
        src_x = _add(_add(_mul(i0, ox, RN), _mul(i1, oy, RN), RN), i2, RN)
        src_y = _add(_add(_mul(i3, ox, RN), _mul(i4, oy, RN), RN), i5, RN)
        floor_x, floor_y = tl.floor(src_x), tl.floor(src_y)
        fx, fy = _sub(src_x, floor_x, RN), _sub(src_y, floor_y, RN)
        x0, y0 = floor_x.to(tl.int64), floor_y.to(tl.int64)
        base = tl.load(image_ptr + crop) * height * width * 3
        acc0 = tl.zeros((BLOCK,), tl.float32)
        acc1 = tl.zeros((BLOCK,), tl.float32)
        acc2 = tl.zeros((BLOCK,), tl.float32)
        for dy in tl.static_range(2):
            wy = fy if dy == 1 else _sub(1.0, fy, RN)
            yi = y0 + dy
            valid_y = (yi >= 0) & (yi < height)
            for dx in tl.static_range(2):
                wx = fx if dx == 1 else _sub(1.0, fx, RN)
                xi = x0 + dx
                valid = valid_y & (xi >= 0) & (xi < width) & inside
                weight = tl.where(valid, _mul(wy, wx, RN), 0.0)
                pixel = frames_ptr + base + (yi * width + xi) * 3
                blue = tl.load(pixel, mask=valid, other=0).to(tl.float32)
                green = tl.load(pixel + 1, mask=valid, other=0).to(tl.float32)
                red = tl.load(pixel + 2, mask=valid, other=0).to(tl.float32)
                acc0 = _add(acc0, _mul(weight, blue, RN), RN)
                acc1 = _add(acc1, _mul(weight, green, RN), RN)
                acc2 = _add(acc2, _mul(weight, red, RN), RN)
        plane = out_h * out_w
        target = out_ptr + crop * 3 * plane + offs
        for channel in tl.static_range(3):
            source = 2 - channel if RGB else channel  # the frames are BGR
            acc = acc0 if source == 0 else (acc1 if source == 1 else acc2)
            value = tl.minimum(tl.maximum(_round_half_even(acc, RN), 0.0), 255.0)
            mean, std = tl.load(mean_ptr + channel), tl.load(std_ptr + channel)
            normalised = _sub(value, mean, RN)
            normalised = _div(normalised, std, RN)
            tl.store(target + channel * plane, normalised, mask=inside)

    @triton.jit
    def _crop_inverse_kernel(
        boxes_ptr,  # float32 (N, 4) x1y1x2y2
        out_ptr,  # float64 (N, 2, 3): crop pixel -> image pixel
        c_ptr,  # float64 (5,): padding, aspect, out_w, half_w, half_h (the torch version's floats)
        n,
        RN: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        x1 = tl.load(boxes_ptr + offs * 4, mask=inside, other=0.0).to(tl.float64)
        y1 = tl.load(boxes_ptr + offs * 4 + 1, mask=inside, other=0.0).to(tl.float64)
        x2 = tl.load(boxes_ptr + offs * 4 + 2, mask=inside, other=1.0).to(tl.float64)
        y2 = tl.load(boxes_ptr + offs * 4 + 3, mask=inside, other=1.0).to(tl.float64)
        # Python float arguments would arrive as float32 scalars (which libdevice's float64 functions do
        # not take, and which would round the values): the constants come as float64 from memory
        padding, aspect, out_w = tl.load(c_ptr), tl.load(c_ptr + 1), tl.load(c_ptr + 2)
        half_w, half_h = tl.load(c_ptr + 3), tl.load(c_ptr + 4)
        half = tl.full([BLOCK], 0.5, tl.float64)
        nought = tl.full([BLOCK], 0.0, tl.float64)
        one = tl.full([BLOCK], 1.0, tl.float64)
        minus_one = tl.full([BLOCK], -1.0, tl.float64)
        # bbox_xyxy_to_center_scale, fix_aspect_ratio (its height is not used below), crop_affine_matrices
        cx, cy = _mul(_add(x1, x2, RN), half, RN), _mul(_add(y1, y2, RN), half, RN)
        w, h = _mul(_sub(x2, x1, RN), padding, RN), _mul(_sub(y2, y1, RN), padding, RN)
        h_wide = _mul(h, aspect, RN)
        # torch computes `out_w / tensor` as tensor.reciprocal() * out_w: two roundings
        s = _mul(_div(one, tl.where(w > h_wide, w, h_wide), RN), out_w, RN)
        zero = _mul(s, nought, RN)
        t0, t1 = _sub(half_w, _mul(s, cx, RN), RN), _sub(half_h, _mul(s, cy, RN), RN)
        # invert_affine_matrices of [[s, zero, t0], [zero, s, t1]]
        det = _sub(_mul(s, s, RN), _mul(zero, zero, RN), RN)
        # negation as a product with -1: Triton's unary minus is 0 - x, which loses the sign of a zero
        minus_zero = _mul(zero, minus_one, RN)
        ia, ib = _div(s, det, RN), _div(minus_zero, det, RN)
        id_, ie = _div(minus_zero, det, RN), _div(s, det, RN)
        row = out_ptr + offs * 6
        tl.store(row, ia, mask=inside)
        tl.store(row + 1, ib, mask=inside)
        tl.store(row + 2, _mul(_add(_mul(ia, t0, RN), _mul(ib, t1, RN), RN), minus_one, RN), mask=inside)
        tl.store(row + 3, id_, mask=inside)
        tl.store(row + 4, ie, mask=inside)
        tl.store(row + 5, _mul(_add(_mul(id_, t0, RN), _mul(ie, t1, RN), RN), minus_one, RN), mask=inside)


@functools.lru_cache(maxsize=64)
def _matrix_constants(device: torch.device, out_size: tuple[int, int], padding: float) -> torch.Tensor:
    """The float64 constants of `_crop_inverse_kernel`, made once per device and crop setting (a graph
    step's warm-up makes them, so its capture copies nothing from the host)."""
    out_h, out_w = out_size
    values = [float(padding), out_w / out_h, float(out_w), out_w * 0.5, out_h * 0.5]
    return torch.tensor(values, dtype=torch.float64, device=device)


def crop_inverse_matrices_triton(
    boxes: torch.Tensor, out_size: tuple[int, int], padding: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`invert_affine_matrices(boxes_to_affine_matrices(boxes.double(), out_size, padding))` in one kernel:
    the (N, 2, 3) float64 crop -> image matrices of float32 x1y1x2y2 `boxes` (N, 4), the same values."""
    if triton is None:
        raise RtposeError("crop_inverse_matrices_triton needs Triton (pip install triton)")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype != torch.float32 or not boxes.is_contiguous():
        raise RtposeError(f"need contiguous (N, 4) float32 boxes, got {tuple(boxes.shape)} {boxes.dtype}")
    n = int(boxes.shape[0])
    if out is None:
        out = torch.empty((n, 2, 3), dtype=torch.float64, device=boxes.device)
    if tuple(out.shape) != (n, 2, 3) or out.dtype != torch.float64 or not out.is_contiguous():
        raise RtposeError(f"output buffer {tuple(out.shape)} {out.dtype} does not fit ({n}, 2, 3) float64")
    if n == 0:
        return out
    constants = _matrix_constants(boxes.device, (int(out_size[0]), int(out_size[1])), float(padding))
    _crop_inverse_kernel[(triton.cdiv(n, _BLOCK),)](boxes, out, constants, n, RN=ROUND_EACH_OP, BLOCK=_BLOCK)
    return out


def crop_normalize_triton(
    frames: torch.Tensor,
    image_index: torch.Tensor,
    inverse: torch.Tensor,
    out_size: tuple[int, int],
    mean: torch.Tensor,
    std: torch.Tensor,
    channel_order: str,
    out: torch.Tensor,
) -> torch.Tensor:
    """Crops of N persons from the (B, H, W, 3) uint8 BGR `frames`, normalised into `out` (N, 3, out_h,
    out_w) float32: crop i reads image `image_index[i]` through `inverse[i]` (2, 3), the crop -> image
    affine map. Same values as `crop_normalize_torch` with the matrices whose inverses these are."""
    if triton is None:
        raise RtposeError("crop_normalize_triton needs Triton (pip install triton)")
    n = int(inverse.shape[0])
    out_h, out_w = out_size
    ok = frames.ndim == 4 and frames.shape[3] == 3 and frames.dtype == torch.uint8 and frames.is_contiguous()
    if not ok or tuple(inverse.shape[1:]) != (2, 3) or tuple(image_index.shape) != (n,):
        raise RtposeError(
            f"need contiguous (B, H, W, 3) uint8 frames, inverses (N, 2, 3) and image indices (N,); got "
            f"{tuple(frames.shape)} {frames.dtype}, {tuple(inverse.shape)}, {tuple(image_index.shape)}"
        )
    if tuple(out.shape) != (n, 3, out_h, out_w) or out.dtype != torch.float32 or not out.is_contiguous():
        want = (n, 3, out_h, out_w)
        raise RtposeError(f"output buffer {tuple(out.shape)} {out.dtype} does not fit {want} float32")
    if channel_order not in ("RGB", "BGR"):
        raise RtposeError(f"channel order must be 'RGB' or 'BGR', not {channel_order!r}")
    if n == 0:
        return out
    inverse32 = inverse.to(torch.float32).contiguous()
    grid = (triton.cdiv(out_h * out_w, _BLOCK), n)
    _crop_normalize_kernel[grid](
        frames, image_index.to(torch.int64), inverse32, mean.to(torch.float32), std.to(torch.float32), out,
        int(frames.shape[1]), int(frames.shape[2]), out_h, out_w,
        RGB=channel_order == "RGB", RN=ROUND_EACH_OP, BLOCK=_BLOCK,
    )  # fmt: skip
    return out
