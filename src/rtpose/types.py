"""Plain typed results: what every pipeline returns.

Coordinates are always in pixels of the original image; boxes are (x1, y1, x2, y2) in memory and
(x, y, w, h) in JSON, as COCO writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

# 0-based pairs of COCO keypoints drawn as the skeleton.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


@dataclass
class Person:
    """One person: a box and, for pose pipelines, keypoints.

    bbox: (4,) float32 x1, y1, x2, y2. keypoints: (K, 2) float32 x, y. keypoint_scores: (K,) float32.
    """

    bbox: np.ndarray
    score: float
    keypoints: np.ndarray | None = None
    keypoint_scores: np.ndarray | None = None
    track_id: int | None = None

    def to_json(self) -> dict:
        x1, y1, x2, y2 = (float(v) for v in self.bbox)
        out: dict = {
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(self.score), 4),
        }
        if self.track_id is not None:
            out = {"id": int(self.track_id), **out}
        if self.keypoints is not None:
            out["keypoints"] = _keypoints_json(self.keypoints, self.keypoint_scores)
        return out


_KEYPOINT_SCALE = np.array([100.0, 100.0, 10000.0])  # 2, 2 and 4 decimals


def _keypoints_json(keypoints: np.ndarray, scores: np.ndarray | None) -> list[list[float]]:
    """[[x, y, score], ...] rounded to 2 / 2 / 4 decimals (a score of 1 where there are none).

    NumPy rounds by scaling, `rint` and unscaling. For float32 (and smaller) inputs the scaled float64
    value is exact (24 + 14 bits < 53), so that gives the same doubles as Python's correctly rounded
    `round(float(v), n)`, in one array operation; other dtypes are rounded one number at a time.
    """
    points = np.asarray(keypoints)
    kpt_scores = np.ones(len(points), np.float32) if scores is None else np.asarray(scores)
    if not (_rounds_exactly(points) and _rounds_exactly(kpt_scores)):
        return [
            [round(float(x), 2), round(float(y), 2), round(float(s), 4)]
            for (x, y), s in zip(points, kpt_scores, strict=True)
        ]
    if points.ndim != 2 or points.shape[1] != 2 or kpt_scores.size != len(points):
        raise ValueError(f"keypoints must be (K, 2) with K scores, got {points.shape} and {kpt_scores.shape}")
    table = np.empty((len(points), 3))
    table[:, :2] = points
    table[:, 2] = kpt_scores.reshape(len(points))
    table *= _KEYPOINT_SCALE  # np.round(table, decimals) column by column, in three operations
    np.rint(table, out=table)
    table /= _KEYPOINT_SCALE
    return table.tolist()


def _rounds_exactly(values: np.ndarray) -> bool:
    return values.dtype.kind == "f" and values.dtype.itemsize <= 4


@dataclass
class ImageResult:
    """Everything a pipeline found in one image, or why it could not look."""

    file: str
    width: int = 0
    height: int = 0
    people: list[Person] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        out: dict = {
            "file": self.file,
            "width": self.width,
            "height": self.height,
            "people": [p.to_json() for p in self.people],
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def people_from_rows(rows: np.ndarray, counts: list[int]) -> list[list[Person]]:
    """People from pose rows (m, 5 + 3K): box x1, y1, x2, y2, score, then x, y, score per keypoint;
    `counts[i]` rows belong to image i, in order."""
    if len(rows) == 0:
        return [[] for _ in counts]
    keypoints = rows[:, 5:].reshape(len(rows), -1, 3)
    people: list[list[Person]] = []
    start = 0
    for count in counts:
        people.append([
            Person(
                bbox=rows[i, :4].copy(), score=float(rows[i, 4]),
                keypoints=keypoints[i, :, :2].copy(), keypoint_scores=keypoints[i, :, 2].copy(),
            )
            for i in range(start, start + count)
        ])  # fmt: skip
        start += count
    return people
