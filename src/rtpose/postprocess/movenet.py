"""MoveNet SinglePose decoding: raw heads -> one person's keypoints, as the TFLite graph does it.

The official graph ends with its own decoder, reproduced here step by step:

1. centre: argmax over the 48x48 cells of sigmoid(centre) / (distance to the middle cell (24, 24) + 1.8),
   which favours the person in the middle of the crop;
2. regression at that cell gives every keypoint a rough position (centre + (dy, dx), in cells);
3. per keypoint: argmax over sigmoid(heatmap) / (distance to the rough position + 1.8);
4. the offsets at that peak refine it; position / 48 is normalised to the input, score = heatmap there.

Step 2..4 of the INT8 graph run on int8 tensors with coarse scales (the squared distance, e.g., has a
step of 11 cells^2), so many cells tie and the first one (row-major) wins. With `spec.extra["decode_quant"]`
(the graph's scales and zero points) every step is quantised as in the graph, rounding half to even
as TFLite's default CPU runtime (XNNPACK) does, which is what reproduces the file's outputs; without it
the same steps run in plain float.

One function for NumPy and torch (CPU or CUDA): the arithmetic is the same elementwise float32
operations in the same order, so both give identical results. Keypoints come back as (x, y) in pixels
of the network input: normalised position x input size (TensorFlow's convention, as MoveNet's users
scale its output).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rtpose.errors import RtposeError

HEAD_NAMES = ("heatmaps", "centers", "regression", "offsets")


class _Ops:
    """The handful of array operations the decoder needs, for NumPy or torch."""

    def __init__(self, like: Any) -> None:
        self.torch = None
        if not isinstance(like, np.ndarray):
            import torch

            self.torch = torch
            self.device = like.device

    def asarray(self, x: Any) -> Any:
        if self.torch is not None:
            return self.torch.as_tensor(x, dtype=self.torch.float32, device=self.device)
        return np.asarray(x, dtype=np.float32)

    def arange(self, n: int) -> Any:
        return self.asarray(np.arange(n, dtype=np.float32))

    def round_half_even(self, x: Any) -> Any:
        return self.torch.round(x) if self.torch is not None else np.round(x)

    def clip(self, x: Any, lo: float, hi: float) -> Any:
        return self.torch.clamp(x, lo, hi) if self.torch is not None else np.clip(x, lo, hi)

    def sqrt(self, x: Any) -> Any:
        return self.torch.sqrt(x) if self.torch is not None else np.sqrt(x)

    def argmax_last(self, x: Any) -> Any:
        """Index of the first maximum along the last axis (ties: the first, as TFLite's ARG_MAX)."""
        return self.torch.argmax(x, dim=-1) if self.torch is not None else np.argmax(x, axis=-1)

    def take(self, x: Any, index: Any) -> Any:
        """x[..., index[...]] along the last axis (index has x's leading shape)."""
        if self.torch is not None:
            return self.torch.gather(x, -1, index[..., None])[..., 0]
        return np.take_along_axis(x, index[..., None], axis=-1)[..., 0]

    def repeat_last(self, index: Any, count: int) -> Any:
        """(N,) -> (N, count), every row repeating its index."""
        if self.torch is not None:
            return index[:, None].expand(index.shape[0], count)
        return np.repeat(index[:, None], count, axis=1)

    def stack_last(self, arrays: list[Any]) -> Any:
        return self.torch.stack(arrays, dim=-1) if self.torch is not None else np.stack(arrays, axis=-1)


class _Quantizer:
    """Rounds a step of the decoder to the graph's int8 grid (identity when there is no grid)."""

    def __init__(self, ops: _Ops, params: Mapping[str, tuple[float, int]] | None) -> None:
        self.ops, self.params = ops, params

    def __call__(self, x: Any, name: str) -> Any:
        if self.params is None:
            return x
        scale, zero_point = self.params[name]
        scale32 = np.float32(scale)
        q = self.ops.clip(self.ops.round_half_even(x / scale32) + zero_point, -128, 127)
        return (q - zero_point) * scale32


def _check_heads(outputs: Mapping[str, Any], num_keypoints: int) -> tuple[Any, Any, Any, Any]:
    missing = [n for n in HEAD_NAMES if n not in outputs]
    if missing:
        raise RtposeError(f"MoveNet decoding needs outputs {HEAD_NAMES}, missing {missing}")
    heads = tuple(outputs[n] for n in HEAD_NAMES)
    heat = heads[0]
    if len(heat.shape) != 4 or heat.shape[1] != num_keypoints:
        raise RtposeError(f"MoveNet heatmaps must be (N, {num_keypoints}, H, W), got {tuple(heat.shape)}")
    n, _, h, w = heat.shape
    expected = (1, 2 * num_keypoints, 2 * num_keypoints)
    for name, head, channels in zip(HEAD_NAMES[1:], heads[1:], expected, strict=True):
        if tuple(head.shape) != (n, channels, h, w):
            raise RtposeError(f"MoveNet {name} must be {(n, channels, h, w)}, got {tuple(head.shape)}")
    if len({type(x) for x in heads}) != 1:
        raise RtposeError("MoveNet heads must be all NumPy arrays or all torch tensors")
    return heads  # type: ignore[return-value]


def decode(outputs: Mapping[str, Any], spec: Any = None, *, quantized: bool | None = None) -> tuple[Any, Any]:
    """Raw MoveNet heads -> (keypoints (N, K, 2) x, y in input pixels, scores (N, K)).

    outputs: {"heatmaps" (N, K, H, W) after sigmoid, "centers" (N, 1, H, W) after sigmoid,
    "regression" (N, 2K, H, W), "offsets" (N, 2K, H, W)}, all NumPy or all torch (any device).
    spec: the model's ModelSpec (input size, num_keypoints, distance bias, decode quantisation).
    quantized: quantise every step as the INT8 graph does; default: when the spec carries
    `extra["decode_quant"]`. Returns arrays of the same kind (and device) as the inputs, float32.
    """
    extra = dict(getattr(spec, "extra", {}) or {})
    input_h, input_w = getattr(spec, "input_size", (192, 192))
    num_keypoints = int(extra.get("num_keypoints", 17))
    bias = float(extra.get("distance_bias", 1.8))
    heat, center, regression, offsets = _check_heads(outputs, num_keypoints)
    params = extra.get("decode_quant")
    if quantized is None:
        quantized = params is not None
    if quantized and params is None:
        raise RtposeError("quantized MoveNet decoding needs spec.extra['decode_quant']")

    ops = _Ops(heat)
    quant = _Quantizer(ops, params if quantized else None)
    heat, center = ops.asarray(heat), ops.asarray(center)
    regression, offsets = ops.asarray(regression), ops.asarray(offsets)
    n, k, h, w = heat.shape
    rows, cols = ops.arange(h), ops.arange(w)

    # 1. the centre cell, weighted towards the middle of the crop
    center_dist = ops.sqrt((rows[:, None] - h // 2) ** 2 + (cols[None, :] - w // 2) ** 2)
    center_weight = quant(1.0 / (center_dist + np.float32(bias)), "center_weight")
    weighted = quant(center[:, 0] * center_weight, "weighted_center").reshape(n, h * w)
    center_index = ops.argmax_last(weighted)  # (N,)
    cy, cx = center_index // w, center_index % w

    # 2. rough keypoints from the regression at the centre: (N, K)
    reg = ops.take(regression.reshape(n, 2 * k, h * w), ops.repeat_last(center_index, 2 * k))
    rough_y = quant(quant(ops.asarray(cy)[:, None] * 1.0, "center_y") + reg[:, 0::2], "keypoint_y")
    rough_x = quant(quant(ops.asarray(cx)[:, None] * 1.0, "center_x") + reg[:, 1::2], "keypoint_x")

    # 3. heatmap peaks, weighted by the distance to the rough keypoints: (N, K, H, W)
    grid_y, grid_x = quant(rows, "grid"), quant(cols, "grid")
    delta_y = quant(grid_y[None, None, :, None] - rough_y[:, :, None, None], "delta_y")
    delta_x = quant(grid_x[None, None, None, :] - rough_x[:, :, None, None], "delta_x")
    dist_sq = quant(
        quant(delta_y * delta_y, "delta_y_sq") + quant(delta_x * delta_x, "delta_x_sq"), "dist_sq"
    )
    denominator = quant(quant(ops.sqrt(dist_sq), "dist") + quant(ops.asarray(bias), "bias"), "denominator")
    weighted_heat = quant(heat / denominator, "weighted_heatmap").reshape(n, k, h * w)
    peak = ops.argmax_last(weighted_heat)  # (N, K)
    peak_y, peak_x = peak // w, peak % w

    # 4. sub-cell offsets at the peaks, normalised position, score
    flat_offsets = offsets.reshape(n, k, 2, h * w)
    offset_y = ops.take(flat_offsets[:, :, 0], peak)
    offset_x = ops.take(flat_offsets[:, :, 1], peak)
    y = quant(quant(ops.asarray(peak_y) * 1.0, "peak") + offset_y, "refined")
    x = quant(quant(ops.asarray(peak_x) * 1.0, "peak") + offset_x, "refined")
    y_norm = quant(y * quant(ops.asarray(1.0 / h), "inv_size"), "output")
    x_norm = quant(x * quant(ops.asarray(1.0 / w), "inv_size"), "output")
    scores = quant(ops.take(heat.reshape(n, k, h * w), peak), "output")
    keypoints = ops.stack_last([x_norm * np.float32(input_w), y_norm * np.float32(input_h)])
    return keypoints, scores
