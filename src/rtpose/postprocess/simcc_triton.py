"""SimCC decoding, back-transform to image pixels and row packing in one Triton kernel, for the pose steps
of the CUDA-graph hot path (`pipelines.graphed.PoseStep`).

Why: after the pose network, the torch path runs ~25 small kernels per step (two max/argmax reductions,
location scaling, the float32 cast of the crop matrices, four multiply-adds per coordinate, stacks and
concatenations into rows). In a one-frame video step every kernel costs ~2-3 us of mostly idle GPU.

Bit-identical to `_pack_rows(torch, boxes, scores, transform_points(locations / ratio, inverse), scores)`
with `locations, scores = get_simcc_maximum(simcc_x, simcc_y)`: ties go to the first bin (as torch's
`max(dim)`), the crop matrices are rounded to float32 before use (as `transform_points` does), and each
product and sum is rounded on its own (`rtpose.triton_exact`). NaN logits are not handled as torch does
(torch's maximum propagates them); the networks we compile do not produce them.
"""

from __future__ import annotations

import torch

from rtpose.errors import RtposeError
from rtpose.triton_exact import ROUND_EACH_OP, available, triton

__all__ = ["available", "simcc_rows_triton"]

if triton is not None:
    import triton.language as tl

    from rtpose.triton_exact import add as _add
    from rtpose.triton_exact import div as _div
    from rtpose.triton_exact import mul as _mul

    @triton.jit
    def _axis_maximum(ptr, person, K, W, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr):
        k = tl.arange(0, BLOCK_K)[:, None]
        w = tl.arange(0, BLOCK_W)[None, :]
        logits = tl.load(ptr + (person * K + k) * W + w, mask=(k < K) & (w < W), other=float("-inf"))
        return tl.max(logits, axis=1), tl.argmax(logits, axis=1, tie_break_left=True)

    @triton.jit
    def _simcc_rows_kernel(
        x_ptr,  # float32 (N, K, WX) logits
        y_ptr,  # float32 (N, K, WY)
        inverse_ptr,  # float64 (N, 2, 3): crop pixel -> image pixel
        boxes_ptr,  # float32 (N, 4)
        scores_ptr,  # float32 (N,)
        out_ptr,  # float32 (N, 5 + 3K): box, score, then (x, y, score) per keypoint
        K,
        WX,
        WY,
        ratio,
        RN: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        person = tl.program_id(0)
        max_x, bin_x = _axis_maximum(x_ptr, person, K, WX, BLOCK_K, BLOCK_W)
        max_y, bin_y = _axis_maximum(y_ptr, person, K, WY, BLOCK_K, BLOCK_W)
        score = tl.minimum(max_x, max_y)
        lx = _div(bin_x.to(tl.float32), ratio, RN)
        ly = _div(bin_y.to(tl.float32), ratio, RN)
        m = inverse_ptr + person * 6
        m0, m1, m2 = tl.load(m).to(tl.float32), tl.load(m + 1).to(tl.float32), tl.load(m + 2).to(tl.float32)
        m3, m4, m5 = (
            tl.load(m + 3).to(tl.float32),
            tl.load(m + 4).to(tl.float32),
            tl.load(m + 5).to(tl.float32),
        )
        kx = _add(_add(_mul(m0, lx, RN), _mul(m1, ly, RN), RN), m2, RN)
        ky = _add(_add(_mul(m3, lx, RN), _mul(m4, ly, RN), RN), m5, RN)
        row = out_ptr + person * (5 + 3 * K)
        for i in tl.static_range(4):
            tl.store(row + i, tl.load(boxes_ptr + person * 4 + i))
        tl.store(row + 4, tl.load(scores_ptr + person))
        k = tl.arange(0, BLOCK_K)
        keypoint = row + 5 + 3 * k
        tl.store(keypoint, kx, mask=k < K)
        tl.store(keypoint + 1, ky, mask=k < K)
        tl.store(keypoint + 2, score, mask=k < K)


def simcc_rows_triton(
    simcc_x: torch.Tensor,
    simcc_y: torch.Tensor,
    split_ratio: float,
    inverse: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One float32 row per person (box, score, then x, y, score per keypoint in image pixels) from SimCC
    logits `simcc_x` (N, K, Wx), `simcc_y` (N, K, Wy) float32, the crop -> image matrices `inverse`
    (N, 2, 3) float64 and the persons' float32 `boxes` (N, 4) and `scores` (N,)."""
    if triton is None:
        raise RtposeError("simcc_rows_triton needs Triton (pip install triton)")
    n, k = (int(v) for v in simcc_x.shape[:2])
    tensors = {"simcc_x": simcc_x, "simcc_y": simcc_y, "boxes": boxes, "scores": scores}
    shapes_ok = (
        simcc_x.ndim == 3 and simcc_y.ndim == 3 and tuple(simcc_y.shape[:2]) == (n, k)
        and tuple(inverse.shape) == (n, 2, 3) and tuple(boxes.shape) == (n, 4) and tuple(scores.shape) == (n,)
    )  # fmt: skip
    types_ok = inverse.dtype == torch.float64 and all(t.dtype == torch.float32 for t in tensors.values())
    if not shapes_ok or not types_ok:
        raise RtposeError(
            "need float32 simcc_x (N, K, Wx), simcc_y (N, K, Wy), boxes (N, 4), scores (N,) and float64 "
            f"inverse (N, 2, 3); got {[(tuple(t.shape), t.dtype) for t in (*tensors.values(), inverse)]}"
        )
    if out is None:
        out = torch.empty((n, 5 + 3 * k), dtype=torch.float32, device=simcc_x.device)
    if tuple(out.shape) != (n, 5 + 3 * k) or out.dtype != torch.float32 or not out.is_contiguous():
        raise RtposeError(
            f"output buffer {tuple(out.shape)} {out.dtype} does not fit ({n}, {5 + 3 * k}) float32"
        )
    if n == 0:
        return out
    wx, wy = int(simcc_x.shape[2]), int(simcc_y.shape[2])
    _simcc_rows_kernel[(n,)](
        simcc_x.contiguous(), simcc_y.contiguous(), inverse.contiguous(), boxes.contiguous(),
        scores.contiguous(), out, k, wx, wy, float(split_ratio), RN=ROUND_EACH_OP,
        BLOCK_K=triton.next_power_of_2(k), BLOCK_W=triton.next_power_of_2(max(wx, wy)),
    )  # fmt: skip
    return out
