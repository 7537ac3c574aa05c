"""Greedy NMS of the detector's score-sorted candidates in one Triton kernel, for the CUDA-graph
detector step (`select_detections_fixed(..., one_kernel=True)`).

Why: the torch version gathers the candidate boxes, builds a K x K IoU matrix and runs a fixed number of
Cluster-NMS rounds (~80 small kernels for 12 rounds). On the H100 those kernels cost more GPU time than
the RTMDet-nano network itself in a one-frame video step (docs/benchmarks.md). Here one program per
image gathers its candidates and runs the greedy loop itself (the candidate's own box against all later
ones, over the candidates still alive): the answer is greedy NMS exactly, so unlike the round-limited
torch version it never needs a fallback for chains longer than its rounds.

The IoU of two boxes is computed with the operations of `box_iou_torch` in the same order, each rounded
as torch rounds it (`rtpose.triton_exact`), so the same pairs pass `iou > iou_thr`: the kept boxes are
those of `select_detections_torch`, bit for bit.
"""

from __future__ import annotations

import torch

from rtpose.errors import RtposeError
from rtpose.triton_exact import ROUND_EACH_OP, available, triton

__all__ = ["available", "greedy_nms_triton"]

if triton is not None:
    import triton.language as tl

    from rtpose.triton_exact import add as _add
    from rtpose.triton_exact import div as _div
    from rtpose.triton_exact import mul as _mul
    from rtpose.triton_exact import sub as _sub

    @triton.jit
    def _visit(i, image, alive, label, x0, y0, x1, y1, area, offs, row, inside, order_ptr, boxes_ptr,
               alive_ptr, K, A, C, iou_thr, RN: tl.constexpr):  # fmt: skip
        """Candidate i, if still alive, is kept: it suppresses the later ones it overlaps."""
        if tl.load(alive_ptr + image * K + i) != 0:
            flat_i = tl.load(order_ptr + image * K + i)
            box_i = boxes_ptr + (image * A + flat_i // C) * 4
            c0, c1 = tl.load(box_i), tl.load(box_i + 1)
            c2, c3 = tl.load(box_i + 2), tl.load(box_i + 3)
            ix0, iy0 = tl.minimum(c0, c2), tl.minimum(c1, c3)
            ix1, iy1 = tl.maximum(c0, c2), tl.maximum(c1, c3)
            area_i = _mul(_sub(ix1, ix0, RN), _sub(iy1, iy0, RN), RN)
            w = tl.maximum(_sub(tl.minimum(ix1, x1), tl.maximum(ix0, x0), RN), 0.0)
            h = tl.maximum(_sub(tl.minimum(iy1, y1), tl.maximum(iy0, y0), RN), 0.0)
            inter = _mul(w, h, RN)
            union = _sub(_add(area_i, area, RN), inter, RN)
            # area_i > 0 as a vector comparison: Triton's interpreter cannot `&` a scalar bool into a vector
            valid = (inter > 0) & (area > 0) & (union > 0) & (tl.zeros_like(area) < area_i)
            iou = tl.where(valid, _div(inter, tl.where(valid, union, 1.0), RN), 0.0)
            suppressed = (iou > iou_thr) & (label == flat_i % C) & (offs > i)
            alive = alive & ~suppressed
            tl.store(alive_ptr + row, alive.to(tl.int32), mask=inside)
            tl.debug_barrier()
        return alive

    @triton.jit
    def _greedy_nms_kernel(
        scores_ptr,  # float32 (B, K): each image's best candidates, descending
        order_ptr,  # int64 (B, K): their flat (anchor * C + class) indices
        boxes_ptr,  # float32 (B, A, 4): the detector's boxes per anchor
        cand_ptr,  # out float32 (B, K, 4): the candidates' boxes
        labels_ptr,  # out int64 (B, K)
        keep_ptr,  # out int8 (B, K)
        alive_ptr,  # scratch int32 (B, K): which candidates are not suppressed (so far)
        count_ptr,  # scratch int32 (B,): how many are above the score threshold
        K: tl.constexpr,
        A,
        C,
        score_thr,
        iou_thr,
        max_det,
        RN: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        image = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        inside = offs < K
        row = image * K + offs
        score = tl.load(scores_ptr + row, mask=inside, other=0.0)
        flat = tl.load(order_ptr + row, mask=inside, other=0)
        label = flat % C
        box = boxes_ptr + (image * A + flat // C) * 4
        b0 = tl.load(box, mask=inside, other=0.0)
        b1 = tl.load(box + 1, mask=inside, other=0.0)
        b2 = tl.load(box + 2, mask=inside, other=0.0)
        b3 = tl.load(box + 3, mask=inside, other=0.0)
        out = cand_ptr + row * 4
        tl.store(out, b0, mask=inside)
        tl.store(out + 1, b1, mask=inside)
        tl.store(out + 2, b2, mask=inside)
        tl.store(out + 3, b3, mask=inside)
        tl.store(labels_ptr + row, label, mask=inside)
        x0, y0 = tl.minimum(b0, b2), tl.minimum(b1, b3)
        x1, y1 = tl.maximum(b0, b2), tl.maximum(b1, b3)
        area = _mul(_sub(x1, x0, RN), _sub(y1, y0, RN), RN)
        alive = (score > score_thr) & inside
        tl.store(alive_ptr + row, alive.to(tl.int32), mask=inside)
        tl.store(count_ptr + image, tl.sum(alive.to(tl.int32), axis=0))
        tl.debug_barrier()
        # sorted by score, the candidates above the threshold come first: the loop ends after them (the
        # interpreter's loops cannot take a loaded bound: there it goes on to K, past candidates not alive)
        if RN:
            for i in range(tl.load(count_ptr + image)):
                alive = _visit(i, image, alive, label, x0, y0, x1, y1, area, offs, row, inside, order_ptr,
                               boxes_ptr, alive_ptr, K, A, C, iou_thr, RN)  # fmt: skip
        else:
            for i in range(K):
                alive = _visit(i, image, alive, label, x0, y0, x1, y1, area, offs, row, inside, order_ptr,
                               boxes_ptr, alive_ptr, K, A, C, iou_thr, RN)  # fmt: skip
        kept = alive.to(tl.int32)
        kept = kept * (tl.cumsum(kept, axis=0) <= max_det).to(tl.int32)
        tl.store(keep_ptr + row, kept.to(tl.int8), mask=inside)


def greedy_nms_triton(
    sorted_scores: torch.Tensor,
    order: torch.Tensor,
    boxes: torch.Tensor,
    num_classes: int,
    score_thr: float,
    iou_thr: float,
    max_det: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, greedy class-wise NMS over its K best candidates (`sorted_scores` (B, K) descending,
    `order` (B, K) their flat anchor * num_classes + class indices into `boxes` (B, A, 4)): the candidate
    boxes (B, K, 4), labels (B, K) and keep mask (B, K) bool (above `score_thr`, not suppressed, within
    the first `max_det` kept). Device tensors only; no host sync."""
    if triton is None:
        raise RtposeError("greedy_nms_triton needs Triton (pip install triton)")
    batch, width = (int(v) for v in sorted_scores.shape)
    boxes_ok = boxes.ndim == 3 and boxes.shape[0] == batch and boxes.shape[2] == 4
    if tuple(order.shape) != (batch, width) or not boxes_ok:
        raise RtposeError(
            f"need sorted scores (B, K), order (B, K) and boxes (B, A, 4); got {tuple(sorted_scores.shape)}, "
            f"{tuple(order.shape)}, {tuple(boxes.shape)}"
        )
    device = boxes.device
    cand_boxes = torch.empty((batch, width, 4), dtype=torch.float32, device=device)
    labels = torch.empty((batch, width), dtype=torch.int64, device=device)
    keep = torch.empty((batch, width), dtype=torch.int8, device=device)
    if batch == 0 or width == 0:
        return cand_boxes, labels, keep.bool()
    alive = torch.empty((batch, width), dtype=torch.int32, device=device)
    count = torch.empty(batch, dtype=torch.int32, device=device)
    _greedy_nms_kernel[(batch,)](
        sorted_scores.to(torch.float32).contiguous(), order.to(torch.int64).contiguous(),
        boxes.to(torch.float32).contiguous(), cand_boxes, labels, keep, alive, count,
        width, int(boxes.shape[1]), int(num_classes), float(score_thr), float(iou_thr), int(max_det),
        RN=ROUND_EACH_OP, BLOCK=triton.next_power_of_2(width), num_warps=4,
    )  # fmt: skip
    return cand_boxes, labels, keep.bool()
