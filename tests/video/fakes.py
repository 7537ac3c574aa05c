"""Synthetic scenes and a fake pose model for the video tests: fast, and with known answers.

A scene is black with white rectangles ("people") moving at constant speed. `BlobModel` finds them
for real: its detector is connected components of bright pixels, its pose model puts 17 keypoints on a
fixed grid over the bright pixels inside each box. So boxes-from-keypoints, tracking and smoothing are
exercised on frames that went through an actual encoder and decoder.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from rtpose.sinks.video_writer import Mp4Writer
from rtpose.types import Person

# 17 keypoints: a 4 x 4 grid plus the centre, in fractions of the blob box
_GRID = np.array([[x, y] for y in (0.1, 0.4, 0.6, 0.9) for x in (0.1, 0.4, 0.6, 0.9)] + [[0.5, 0.5]])


def scene_frame(
    index: int,
    size: tuple[int, int] = (120, 160),
    movers: list[tuple[float, float, float, float]] | None = None,
) -> np.ndarray:
    """Frame `index` (H, W, 3) with one white 16x32 rectangle per mover (x0, y0, vx, vy) in pixels/frame."""
    height, width = size
    movers = movers if movers is not None else [(10.0, 20.0, 1.5, 0.0), (120.0, 60.0, -1.0, 0.5)]
    image = np.zeros((height, width, 3), np.uint8)
    for x0, y0, vx, vy in movers:
        x, y = round(x0 + vx * index), round(y0 + vy * index)
        image[max(0, y) : max(0, y + 32), max(0, x) : max(0, x + 16)] = 255
    return image


def write_scene(path: Path, frames: int, fps: float = 25.0, **kwargs: object) -> Path:
    with Mp4Writer(path, fps) as writer:
        for index in range(frames):
            writer.write(scene_frame(index, **kwargs))  # type: ignore[arg-type]
    return path


class BlobModel:
    """A `FramePoseModel` that finds bright rectangles (see the module docstring)."""

    def __init__(self) -> None:
        self.detect_calls: list[int] = []
        self.pose_calls: list[int] = []

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        self.detect_calls.append(len(images))
        out = []
        for image in images:
            mask = (image.max(axis=2) > 128).astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, area in stats[1:count] if area >= 20]
            out.append((np.asarray(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.9, np.float32)))
        return out

    def pose(
        self, images: list[np.ndarray], boxes: list[np.ndarray], scores: list[np.ndarray]
    ) -> list[list[Person]]:
        self.pose_calls.append(sum(len(b) for b in boxes))
        results = []
        for image, frame_boxes, frame_scores in zip(images, boxes, scores, strict=True):
            people = []
            for box, score in zip(frame_boxes, frame_scores, strict=True):
                # look at the box grown by 1.25, as TopDown's crops do
                centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) * 1.25 / 2
                x1, y1 = (max(round(float(v)), 0) for v in centre - half)
                x2, y2 = (round(float(v)) for v in centre + half)
                ys, xs = np.nonzero(image[y1:y2, x1:x2].max(axis=2) > 128)
                if len(xs) == 0:
                    keypoints = np.repeat([[(x1 + x2) / 2, (y1 + y2) / 2]], 17, axis=0)
                    kpt_scores = np.full(17, 0.05)
                else:
                    low = np.array([xs.min() + x1, ys.min() + y1], np.float64)
                    high = np.array([xs.max() + x1 + 1, ys.max() + y1 + 1], np.float64)
                    keypoints = low + _GRID * (high - low)
                    kpt_scores = np.full(17, 0.9)
                people.append(
                    Person(np.asarray(box, np.float32), float(score), keypoints.astype(np.float32),
                           kpt_scores.astype(np.float32))
                )  # fmt: skip
            results.append(people)
        return results
