"""OKS non-maximum suppression of whole poses (MMPose semantics), NumPy reference and torch matrix form.

Top-down pipelines can put two boxes on one person and get the same pose twice; COCO evaluation (and the
video pipeline) removes such duplicates by object keypoint similarity (OKS) instead of box IoU.

OKS between poses i and j, as MMPose computes it (`mmpose.evaluation.functional.oks_iou`):

    e_k = |p_ik - p_jk|^2 / (2 sigma_k)^2 / ((area_i + area_j) / 2 + eps) / 2
    oks = mean_k exp(-e_k)

It is symmetric in i and j. Visibility handling: with `vis_thr=None` (what MMPose's `CocoMetric` uses)
every keypoint counts, whatever its score. With a `vis_thr`, only keypoints whose score is above
`vis_thr` in *both* poses count, and a pair with no such keypoint has OKS 0 (never suppresses).

Greedy NMS: visit poses by descending score; keep one, drop every later pose whose OKS with it is above
`thr` (poses with OKS exactly `thr` survive). Ties in score are visited highest index first
(`argsort(kind="stable")[::-1]`), so the result is deterministic; MMPose's default quicksort leaves that
order unspecified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rtpose.errors import RtposeError

if TYPE_CHECKING:
    import torch

#: Per-keypoint OKS sigmas of the 17 COCO keypoints (the values pycocotools uses).
COCO_SIGMAS: np.ndarray = np.array(
    [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
     0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089],
    dtype=np.float64,
)  # fmt: skip

#: Added to the mean area as MMPose does (np.spacing(1)), so zero-area poses do not divide by zero.
_AREA_EPS = float(np.spacing(1))


def _check_inputs(
    keypoints_shape: tuple, n_scores: int, n_areas: int, n_kpt_scores: tuple | None, n_sigmas: int
) -> None:
    if len(keypoints_shape) != 3 or keypoints_shape[2] != 2:
        raise RtposeError(f"pose NMS: keypoints must have shape (N, K, 2), got {tuple(keypoints_shape)}")
    n, k = keypoints_shape[:2]
    if n_scores != n or n_areas != n:
        raise RtposeError(f"pose NMS: {n} poses but {n_scores} scores and {n_areas} areas")
    if n_kpt_scores is not None and tuple(n_kpt_scores) != (n, k):
        raise RtposeError(f"pose NMS: keypoint scores must have shape ({n}, {k}), got {tuple(n_kpt_scores)}")
    if n_sigmas != k:
        raise RtposeError(f"pose NMS: {k} keypoints per pose but {n_sigmas} sigmas")


#: Up to this many poses `oks_nms` computes all pairwise OKS values at once (N x N x K floats); above it,
#: one row per kept pose, so memory stays linear for images with very many candidates.
_FULL_MATRIX_MAX = 256


def oks_matrix(
    keypoints_a: np.ndarray,
    keypoints_b: np.ndarray,
    areas_a: np.ndarray,
    areas_b: np.ndarray,
    *,
    sigmas: np.ndarray = COCO_SIGMAS,
    kpt_scores_a: np.ndarray | None = None,
    kpt_scores_b: np.ndarray | None = None,
    vis_thr: float | None = None,
) -> np.ndarray:
    """OKS of every pose in `keypoints_a` (R, K, 2) with every pose in `keypoints_b` (C, K, 2) -> (R, C).

    areas_a (R,) and areas_b (C,), or arrays of any shape broadcasting to (R, C) (the tracker scales both
    sides by the new pose's area). Keypoint scores (R, K) and (C, K) are only needed with `vis_thr`.
    """
    a = np.asarray(keypoints_a, dtype=np.float64)
    b = np.asarray(keypoints_b, dtype=np.float64)
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2
    areas_a = np.asarray(areas_a, dtype=np.float64)
    areas_b = np.asarray(areas_b, dtype=np.float64)
    areas_a = areas_a[:, None] if areas_a.ndim == 1 else areas_a
    areas_b = areas_b[None, :] if areas_b.ndim == 1 else areas_b
    sq_dist = ((b[None] - a[:, None]) ** 2).sum(axis=3)  # (R, C, K)
    mean_area = (areas_a + areas_b) / 2.0 + _AREA_EPS
    similarity = np.exp(-(sq_dist / variances / mean_area[..., None] / 2.0))
    if vis_thr is None:
        if similarity.shape[2] == 0:
            return np.zeros(similarity.shape[:2])
        return similarity.mean(axis=2)
    if kpt_scores_a is None or kpt_scores_b is None:
        raise RtposeError("oks_iou: vis_thr needs the keypoint scores of both sides")
    visible = (np.asarray(kpt_scores_a)[:, None] > vis_thr) & (np.asarray(kpt_scores_b)[None] > vis_thr)
    counts = visible.sum(axis=2)
    sums = (similarity * visible).sum(axis=2)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def oks_iou(
    keypoints: np.ndarray,
    others: np.ndarray,
    area: float,
    other_areas: np.ndarray,
    *,
    sigmas: np.ndarray = COCO_SIGMAS,
    kpt_scores: np.ndarray | None = None,
    other_kpt_scores: np.ndarray | None = None,
    vis_thr: float | None = None,
) -> np.ndarray:
    """OKS of one pose (K, 2) against M others (M, K, 2) -> (M,) float64.

    `kpt_scores` (K,) and `other_kpt_scores` (M, K) are only needed when `vis_thr` is given.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    others = np.asarray(others, dtype=np.float64).reshape(-1, *keypoints.shape)
    other_areas = np.asarray(other_areas, dtype=np.float64).reshape(-1)
    return oks_matrix(
        keypoints[None], others, np.array([float(area)]), other_areas, sigmas=sigmas,
        kpt_scores_a=None if kpt_scores is None else np.asarray(kpt_scores)[None],
        kpt_scores_b=other_kpt_scores, vis_thr=vis_thr,
    )[0]  # fmt: skip


def oks_nms(
    keypoints: np.ndarray,
    kpt_scores: np.ndarray | None,
    scores: np.ndarray,
    areas: np.ndarray,
    thr: float = 0.9,
    sigmas: np.ndarray = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> np.ndarray:
    """Greedy OKS-NMS, NumPy reference.

    keypoints (N, K, 2), kpt_scores (N, K) (used only with `vis_thr`), scores (N,) pose scores, areas (N,)
    the object areas OKS is normalised by. Returns the kept indices (int64) in descending score order.
    The pairwise OKS values are computed in one go (row by row above `_FULL_MATRIX_MAX` poses); the
    greedy visit is MMPose's.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if keypoints.size == 0 and keypoints.ndim < 3:
        keypoints = keypoints.reshape(0, len(sigmas), 2)
    kpt_shape = None if kpt_scores is None else np.shape(kpt_scores)
    _check_inputs(keypoints.shape, len(scores), len(areas), kpt_shape, len(sigmas))
    if vis_thr is not None and kpt_scores is None:
        raise RtposeError("oks_nms: vis_thr needs keypoint scores")
    kpt_scores_arr = None if kpt_scores is None else np.asarray(kpt_scores, dtype=np.float64)

    def overlaps(rows: np.ndarray | slice, cols: np.ndarray | slice) -> np.ndarray:
        return oks_matrix(
            keypoints[rows], keypoints[cols], areas[rows], areas[cols], sigmas=sigmas,
            kpt_scores_a=None if kpt_scores_arr is None else kpt_scores_arr[rows],
            kpt_scores_b=None if kpt_scores_arr is None else kpt_scores_arr[cols], vis_thr=vis_thr,
        )  # fmt: skip

    full = overlaps(slice(None), slice(None)) if 1 < len(scores) <= _FULL_MATRIX_MAX else None
    order = np.argsort(scores, kind="stable")[::-1]
    if full is not None:
        suppresses = full > thr
        np.fill_diagonal(suppresses, False)
        if not suppresses.any():  # no pair overlaps: every pose is kept (most video frames)
            return order.astype(np.int64)
    keep: list[int] = []
    while len(order) > 0:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        if len(rest) == 0:
            break
        overlap = full[best, rest] if full is not None else overlaps(slice(best, best + 1), rest)[0]
        order = rest[overlap <= thr]
    return np.asarray(keep, dtype=np.int64)


def oks_matrix_torch(
    keypoints: torch.Tensor,
    areas: torch.Tensor,
    sigmas: torch.Tensor,
    kpt_scores: torch.Tensor | None = None,
    vis_thr: float | None = None,
) -> torch.Tensor:
    """All pairwise OKS values (N, N) of N poses (N, K, 2) in one tensor expression."""
    import torch

    variances = (2.0 * sigmas) ** 2  # (K,)
    sq_dist = ((keypoints[:, None] - keypoints[None]) ** 2).sum(-1)  # (N, N, K)
    mean_area = (areas[:, None] + areas[None]) / 2.0 + _AREA_EPS  # (N, N)
    similarity = torch.exp(-(sq_dist / variances / mean_area[..., None] / 2.0))
    if vis_thr is None:
        return similarity.mean(-1)
    if kpt_scores is None:
        raise RtposeError("oks_matrix_torch: vis_thr needs keypoint scores")
    above = kpt_scores > vis_thr
    visible = (above[:, None] & above[None]).to(similarity.dtype)
    counts = visible.sum(-1)
    return torch.where(counts > 0, (similarity * visible).sum(-1) / counts.clamp(min=1), 0.0)


def oks_nms_torch(
    keypoints: torch.Tensor,
    kpt_scores: torch.Tensor | None,
    scores: torch.Tensor,
    areas: torch.Tensor,
    thr: float = 0.9,
    sigmas: np.ndarray | torch.Tensor = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> torch.Tensor:
    """Greedy OKS-NMS in matrix form on the tensors' device; same result as `oks_nms`.

    The N x N OKS matrix is computed at once. Greedy keeping is the unique solution of
    keep[j] = not any(keep[i] and oks[i, j] > thr for i ranked before j); it is found by iterating that
    rule from "keep everything" until it stops changing. Each iteration is one matrix operation, and the
    number of iterations is the length of the longest suppression chain plus one (1-3 on real images), not
    the number of candidates. Returns kept indices (int64, on the same device) in descending score order.
    """
    import torch

    sigmas_t = torch.as_tensor(sigmas, dtype=keypoints.dtype, device=keypoints.device).reshape(-1)
    kpt_shape = None if kpt_scores is None else tuple(kpt_scores.shape)
    _check_inputs(tuple(keypoints.shape), scores.numel(), areas.numel(), kpt_shape, sigmas_t.numel())
    n = keypoints.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=keypoints.device)

    order = torch.argsort(scores.reshape(-1), stable=True).flip(0)
    ranked_kpts = keypoints[order]
    ranked_areas = areas.reshape(-1)[order].to(keypoints.dtype)
    ranked_kpt_scores = None if kpt_scores is None else kpt_scores[order]
    overlap = oks_matrix_torch(ranked_kpts, ranked_areas, sigmas_t, ranked_kpt_scores, vis_thr)
    # suppresses[i, j]: pose i (ranked earlier) would remove pose j if i is kept.
    suppresses = torch.triu(overlap > thr, diagonal=1)
    keep = torch.ones(n, dtype=torch.bool, device=keypoints.device)
    for _ in range(n):
        updated = ~(suppresses & keep[:, None]).any(0)
        if torch.equal(updated, keep):
            break
        keep = updated
    return order[keep]
