"""Detector post-processing: score threshold, top-k, class-aware NMS, max detections.

Two implementations with the same results:

* NumPy (`nms_numpy`, `select_detections_numpy`): the plain greedy algorithm, the reference.
* torch (`nms_torch`, `select_detections_torch`): batched and loop-free over boxes, for CPU or CUDA.
  Greedy NMS is computed as Cluster-NMS (Zheng et al. 2020): with A the upper-triangular matrix
  "box i (higher score) overlaps box j by more than the threshold", iterate
  keep_{t+1}[j] = not any_i(keep_t[i] and A[i, j]) from keep_0 = all. After t rounds the first t boxes
  are final, so it reaches the greedy answer exactly; in practice in a handful of rounds.

IoU follows ONNX Runtime's NonMaxSuppression (the runtime of mmdeploy exports): box corners may come in
any order, boxes without area never suppress, and a box is suppressed when IoU > threshold strictly.
Ties in score keep the lower anchor index first (stable sort).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rtpose.errors import RtposeError
from rtpose.postprocess import nms_triton


@dataclass
class Detections:
    """Boxes (K, 4) x1y1x2y2, scores (K,), labels (K,) of one image, best first (NumPy or torch)."""

    boxes: Any
    scores: Any
    labels: Any

    def __len__(self) -> int:
        return len(self.scores)


def _check_inputs(scores_shape: tuple[int, ...], boxes_shape: tuple[int, ...], iou_thr: float) -> None:
    if len(scores_shape) != 3 or len(boxes_shape) != 3 or boxes_shape[-1] != 4:
        raise RtposeError(
            f"expected scores (N, A, C) and boxes (N, A, 4), got {scores_shape} and {boxes_shape}"
        )
    if scores_shape[:2] != boxes_shape[:2]:
        raise RtposeError(f"scores {scores_shape} and boxes {boxes_shape} disagree on N or A")
    if not 0.0 <= iou_thr <= 1.0:
        raise RtposeError(f"iou_thr must lie in [0, 1], got {iou_thr}")


# --------------------------------------------------------------------------------------------- NumPy
def box_iou_numpy(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU, ONNX Runtime conventions (see module docstring)."""
    a = np.concatenate(
        [np.minimum(boxes_a[:, :2], boxes_a[:, 2:]), np.maximum(boxes_a[:, :2], boxes_a[:, 2:])], 1
    )
    b = np.concatenate(
        [np.minimum(boxes_b[:, :2], boxes_b[:, 2:]), np.maximum(boxes_b[:, :2], boxes_b[:, 2:])], 1
    )
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    width = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0)
    height = np.maximum(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0
    )
    inter = width * height
    union = area_a[:, None] + area_b[None, :] - inter
    valid = (inter > 0) & (area_a[:, None] > 0) & (area_b[None, :] > 0) & (union > 0)
    return np.where(valid, inter / np.where(valid, union, 1), 0).astype(boxes_a.dtype)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy NMS; indices of kept boxes, highest score first."""
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for position, index in enumerate(order):
        if suppressed[index]:
            continue
        keep.append(int(index))
        rest = order[position + 1 :]
        suppressed[rest[box_iou_numpy(boxes[index : index + 1], boxes[rest])[0] > iou_thr]] = True
    return np.asarray(keep, dtype=np.int64)


def _select_one_numpy(
    scores: np.ndarray, boxes: np.ndarray, score_thr: float, iou_thr: float, pre_top_k: int, max_det: int
) -> Detections:
    num_classes = scores.shape[1]
    flat = scores.reshape(-1)
    candidates = np.nonzero(flat > score_thr)[0]
    candidates = candidates[np.argsort(-flat[candidates], kind="stable")][:pre_top_k]
    anchors, labels = candidates // num_classes, candidates % num_classes
    kept: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.nonzero(labels == label)[0]  # positions in the score-sorted candidate list
        kept.append(members[nms_numpy(boxes[anchors[members]], flat[candidates[members]], iou_thr)])
    positions = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    positions = positions[:max_det]  # candidate list is sorted by score, so this keeps the best
    return Detections(boxes[anchors[positions]], flat[candidates[positions]], labels[positions])


def select_detections_numpy(
    scores: np.ndarray,
    boxes: np.ndarray,
    score_thr: float,
    iou_thr: float,
    pre_top_k: int = 1000,
    max_det: int = 100,
) -> list[Detections]:
    """Per image: scores > score_thr, best pre_top_k, class-wise greedy NMS, best max_det.

    scores (N, A, C) in [0, 1], boxes (N, A, 4). Returns one `Detections` per image.
    """
    scores, boxes = np.asarray(scores), np.asarray(boxes)
    _check_inputs(scores.shape, boxes.shape, iou_thr)
    return [
        _select_one_numpy(s, b, score_thr, iou_thr, pre_top_k, max_det)
        for s, b in zip(scores, boxes, strict=True)
    ]


# --------------------------------------------------------------------------------------------- torch
def box_iou_torch(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(..., n, m) IoU for boxes (..., n, 4) and (..., m, 4); same arithmetic as `box_iou_numpy`."""
    a = torch.cat(
        [
            torch.minimum(boxes_a[..., :2], boxes_a[..., 2:]),
            torch.maximum(boxes_a[..., :2], boxes_a[..., 2:]),
        ],
        -1,
    )
    b = torch.cat(
        [
            torch.minimum(boxes_b[..., :2], boxes_b[..., 2:]),
            torch.maximum(boxes_b[..., :2], boxes_b[..., 2:]),
        ],
        -1,
    )
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lo = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (hi - lo).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    valid = (inter > 0) & (area_a[..., :, None] > 0) & (area_b[..., None, :] > 0) & (union > 0)
    return torch.where(
        valid, inter / torch.where(valid, union, torch.ones_like(union)), torch.zeros_like(union)
    )


def _cluster_keep(overlaps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Greedy-NMS keep mask from `overlaps` (..., K, K) bool, upper-triangular, rows sorted by score."""
    keep = valid.clone()
    for _ in range(overlaps.shape[-1] + 1):
        suppressed = (overlaps & keep.unsqueeze(-1)).any(dim=-2)
        new_keep = valid & ~suppressed
        if torch.equal(new_keep, keep):  # a host sync per round
            break
        keep = new_keep
    return keep


def _cluster_keep_fixed(
    overlaps: torch.Tensor, valid: torch.Tensor, rounds: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_cluster_keep` with a fixed number of rounds and no host sync: (keep, converged). Once a round
    changes nothing the mask is the greedy answer and further rounds keep it; `converged` (a 0-d bool
    tensor) says whether the last round changed nothing."""
    keep, previous = valid, valid
    for _ in range(max(1, rounds)):
        previous = keep
        keep = valid & ~(overlaps & keep.unsqueeze(-1)).any(dim=-2)
    return keep, (keep == previous).all()


def nms_torch(boxes: torch.Tensor, scores: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Greedy NMS without a loop over boxes; indices of kept boxes, highest score first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    overlaps = torch.triu(box_iou_torch(sorted_boxes, sorted_boxes) > iou_thr, diagonal=1)
    keep = _cluster_keep(overlaps, torch.ones(len(order), dtype=torch.bool, device=boxes.device))
    return order[keep]


def _candidate_overlaps(
    boxes: torch.Tensor, order: torch.Tensor, num_classes: int, iou_thr: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For candidates given as score-sorted flat (anchor, class) indices `order` (B, K): their boxes
    (B, K, 4), labels (B, K) and which later candidate each one suppresses (B, K, K): same class and
    IoU > iou_thr, upper triangle only."""
    anchors, labels = order // num_classes, order % num_classes
    cand_boxes = torch.gather(boxes, 1, anchors.unsqueeze(-1).expand(-1, -1, 4))
    same_class = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    overlaps = torch.triu((box_iou_torch(cand_boxes, cand_boxes) > iou_thr) & same_class, diagonal=1)
    return cand_boxes, labels, overlaps


def select_detections_torch(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    score_thr: float,
    iou_thr: float,
    pre_top_k: int = 1000,
    max_det: int = 100,
) -> list[Detections]:
    """Batched twin of `select_detections_numpy`: same results, tensors on the inputs' device."""
    _check_inputs(tuple(scores.shape), tuple(boxes.shape), iou_thr)
    batch, _, num_classes = scores.shape
    if batch == 0:
        return []
    flat = scores.reshape(batch, -1)
    sorted_scores, order = torch.sort(flat, dim=1, descending=True, stable=True)
    valid = sorted_scores > score_thr
    # one host sync: how many candidates the fullest image has (bounds the K x K IoU matrices)
    width = min(int(valid.sum(dim=1).max().item()), pre_top_k)
    sorted_scores, order, valid = sorted_scores[:, :width], order[:, :width], valid[:, :width]
    cand_boxes, labels, overlaps = _candidate_overlaps(boxes, order, num_classes, iou_thr)
    keep = _cluster_keep(overlaps, valid)
    keep &= torch.cumsum(keep, dim=1) <= max_det  # the best max_det of each image (rows are by score)
    # all images at once: one nonzero (and, for several images, one copy of the counts) instead of a
    # nonzero, hence a host sync, per image
    rows, cols = torch.nonzero(keep, as_tuple=True)  # image-major, by score within an image
    counts = [len(rows)] if batch == 1 else torch.bincount(rows, minlength=batch).tolist()
    return [
        Detections(b, s, c)
        for b, s, c in zip(
            torch.split(cand_boxes[rows, cols], counts),
            torch.split(sorted_scores[rows, cols], counts),
            torch.split(labels[rows, cols], counts),
            strict=True,
        )
    ]


@dataclass
class FixedSelection:
    """`select_detections_fixed`'s answer: the best `width` candidates of every image, by score, with a
    keep mask. All device tensors; nothing was synchronised to make them."""

    boxes: torch.Tensor  # (B, width, 4)
    scores: torch.Tensor  # (B, width)
    labels: torch.Tensor  # (B, width)
    keep: torch.Tensor  # (B, width) bool: kept by NMS, within max_det
    exact: torch.Tensor  # () bool: keep equals select_detections_torch (else run that instead)


def select_detections_fixed(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    score_thr: float,
    iou_thr: float,
    pre_top_k: int = 1000,
    max_det: int = 100,
    candidates: int = 256,
    rounds: int = 12,
    one_kernel: bool = False,
) -> FixedSelection:
    """`select_detections_torch` with fixed sizes, so that it can run inside a CUDA graph.

    The candidate list has a fixed width (`candidates`, instead of the count the fullest image needs,
    which costs a host sync) and NMS runs a fixed number of Cluster-NMS rounds (instead of stopping when a
    round changes nothing, a sync per round). `exact` is False when that cannot be the answer of
    `select_detections_torch`: an image had more candidates above the threshold than the width holds, or
    NMS had not converged after `rounds` rounds. Otherwise keep, boxes and scores equal it exactly.

    one_kernel: run the NMS as greedy NMS in one Triton kernel (`postprocess.nms_triton`) where it can run
    (Triton, float32 inputs on CUDA): the same answer, always converged, in one kernel instead of ~80.
    """
    _check_inputs(tuple(scores.shape), tuple(boxes.shape), iou_thr)
    batch, _, num_classes = scores.shape
    flat = scores.reshape(batch, -1)
    full_width = min(pre_top_k, flat.shape[1])
    width = min(candidates, full_width)
    sorted_scores, order = torch.sort(flat, dim=1, descending=True, stable=True)
    overflow = (sorted_scores[:, width] > score_thr).any() if width < full_width else None
    sorted_scores, order = sorted_scores[:, :width], order[:, :width]
    if one_kernel and scores.dtype == boxes.dtype == torch.float32 and nms_triton.available(scores.device):
        cand_boxes, labels, keep = nms_triton.greedy_nms_triton(
            sorted_scores, order, boxes, num_classes, score_thr, iou_thr, max_det
        )
        exact = torch.ones((), dtype=torch.bool, device=scores.device) if overflow is None else ~overflow
        return FixedSelection(cand_boxes, sorted_scores, labels, keep, exact)
    valid = sorted_scores > score_thr
    cand_boxes, labels, overlaps = _candidate_overlaps(boxes, order, num_classes, iou_thr)
    keep, converged = _cluster_keep_fixed(overlaps, valid, rounds)
    keep = keep & (torch.cumsum(keep, dim=1) <= max_det)
    exact = converged if overflow is None else converged & ~overflow
    return FixedSelection(cand_boxes, sorted_scores, labels, keep, exact)


def select_detections(
    scores: Any, boxes: Any, score_thr: float, iou_thr: float, pre_top_k: int = 1000, max_det: int = 100
) -> list[Detections]:
    """`select_detections_torch` for tensors, `select_detections_numpy` for anything else."""
    if isinstance(scores, torch.Tensor):
        return select_detections_torch(scores, boxes, score_thr, iou_thr, pre_top_k, max_det)
    return select_detections_numpy(scores, boxes, score_thr, iou_thr, pre_top_k, max_det)
