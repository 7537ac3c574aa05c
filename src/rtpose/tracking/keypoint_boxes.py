"""Person boxes from the last frame's keypoints: what replaces the detector between detection frames.

A confident pose says where its person is better than a stale detector box: the box is the extent of
the keypoints scoring above `kpt_thr`, grown by `padding` around its centre (keypoints stop at the
joints, a detector box includes the head top and the feet), at least `min_size` pixels wide and tall,
and clipped to the image. Poses with fewer than `min_keypoints` confident keypoints give no box: the
person is considered gone until the detector sees it again.
"""

from __future__ import annotations

import numpy as np

from rtpose.types import Person


def box_from_keypoints(
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    *,
    kpt_thr: float = 0.3,
    padding: float = 1.2,
    min_keypoints: int = 3,
    min_size: float = 8.0,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """(4,) float32 x1y1x2y2 around the confident keypoints (K, 2), or None when too few are confident.

    image_size: (height, width) to clip to.
    """
    points = np.asarray(keypoints, dtype=np.float64).reshape(1, -1, 2)
    kpt_scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(1, -1)
    boxes, valid = boxes_from_keypoints(
        points, kpt_scores, kpt_thr=kpt_thr, padding=padding, min_keypoints=min_keypoints,
        min_size=min_size, image_size=image_size,
    )  # fmt: skip
    return boxes[0] if valid[0] else None


def boxes_from_keypoints(
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    *,
    kpt_thr: float = 0.3,
    padding: float = 1.2,
    min_keypoints: int = 3,
    min_size: float = 8.0,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`box_from_keypoints` for N poses at once: keypoints (N, K, 2), scores (N, K) or None.

    Returns boxes (N, 4) float32 and valid (N,) bool; rows that are not valid (None from
    `box_from_keypoints`) hold no meaningful box.
    """
    points = np.asarray(keypoints, dtype=np.float64)
    points = points.reshape(len(points), -1, 2)
    confident = np.isfinite(points).all(axis=2)
    if scores is not None:
        confident &= np.asarray(scores, dtype=np.float64).reshape(len(points), -1) > kpt_thr
    valid = confident.sum(axis=1) >= max(1, min_keypoints)
    low = np.where(confident[..., None], points, np.inf).min(axis=1, initial=np.inf)
    high = np.where(confident[..., None], points, -np.inf).max(axis=1, initial=-np.inf)
    with np.errstate(invalid="ignore"):  # rows without confident points are not valid anyway
        centre = (low + high) / 2
        half = np.maximum((high - low) * padding, min_size) / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        if image_size is not None:
            height, width = image_size
            boxes = np.minimum(np.maximum(boxes, 0.0), np.array([width, height, width, height], np.float64))
            valid &= (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return boxes.astype(np.float32), valid


def boxes_from_people(
    people: list[Person],
    *,
    kpt_thr: float = 0.3,
    padding: float = 1.2,
    min_keypoints: int = 3,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Person]]:
    """Boxes (M, 4), their scores (M,) (each person's score carried over) and the people they came from."""
    posed = [p for p in people if p.keypoints is not None]
    if not posed:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), []
    shape = np.shape(posed[0].keypoints)
    uniform = all(np.shape(p.keypoints) == shape for p in posed) and all(
        p.keypoint_scores is not None and np.size(p.keypoint_scores) == shape[0] for p in posed
    )
    if uniform and len(shape) == 2 and shape[1] == 2:
        all_boxes, valid = boxes_from_keypoints(
            np.array([p.keypoints for p in posed]),
            np.array([np.ravel(p.keypoint_scores) for p in posed]),
            kpt_thr=kpt_thr, padding=padding, min_keypoints=min_keypoints, image_size=image_size,
        )  # fmt: skip
        sources = [p for p, v in zip(posed, valid.tolist(), strict=True) if v]
        if not sources:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), []
        return all_boxes[valid], np.array([float(p.score) for p in sources], np.float32), sources
    else:  # mixed keypoint layouts, or poses without keypoint scores: one at a time
        boxes, sources = [], []
        for person in posed:
            box = box_from_keypoints(
                person.keypoints, person.keypoint_scores, kpt_thr=kpt_thr, padding=padding,
                min_keypoints=min_keypoints, image_size=image_size,
            )  # fmt: skip
            if box is not None:
                boxes.append(box)
                sources.append(person)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), []
    return np.array(boxes), np.asarray([float(p.score) for p in sources], np.float32), sources
