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
    points = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    confident = np.isfinite(points).all(axis=1)
    if scores is not None:
        confident &= np.asarray(scores, dtype=np.float64).reshape(-1) > kpt_thr
    if confident.sum() < max(1, min_keypoints):
        return None
    chosen = points[confident]
    low, high = chosen.min(axis=0), chosen.max(axis=0)
    centre = (low + high) / 2
    half = np.maximum((high - low) * padding, min_size) / 2
    box = np.concatenate([centre - half, centre + half])
    if image_size is not None:
        height, width = image_size
        box = np.clip(box, 0, [width, height, width, height])
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            return None
    return box.astype(np.float32)


def boxes_from_people(
    people: list[Person],
    *,
    kpt_thr: float = 0.3,
    padding: float = 1.2,
    min_keypoints: int = 3,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Person]]:
    """Boxes (M, 4), their scores (M,) (each person's score carried over) and the people they came from."""
    boxes, scores, sources = [], [], []
    for person in people:
        if person.keypoints is None:
            continue
        box = box_from_keypoints(
            person.keypoints, person.keypoint_scores, kpt_thr=kpt_thr, padding=padding,
            min_keypoints=min_keypoints, image_size=image_size,
        )  # fmt: skip
        if box is not None:
            boxes.append(box)
            scores.append(float(person.score))
            sources.append(person)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), []
    return np.stack(boxes), np.asarray(scores, np.float32), sources
