"""Fake pipelines that answer with the ground truth (optionally perturbed), to test the evaluation plumbing.

A correct plumbing must give AP 1.0 for exact ground truth; noise must lower it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtpose.decode.image import decode_image
from rtpose.types import Person

LABELLED_SCORE = 0.9


def _valid_gt(ann_file: Path) -> tuple[dict[int, dict], list[dict]]:
    data = json.loads(ann_file.read_text())
    images = {img["id"]: img for img in data["images"]}
    anns = [
        a
        for a in data["annotations"]
        if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0 and max(a["keypoints"]) > 0
    ]
    return images, anns


def _clipped_box(ann: dict, image: dict) -> np.ndarray:
    x, y, w, h = ann["bbox"]
    xs = np.clip([x, x + w], 0, image["width"] - 1)
    ys = np.clip([y, y + h], 0, image["height"] - 1)
    return np.array([xs[0], ys[0], xs[1], ys[1]], dtype=np.float64)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


class GroundTruthPoses:
    """The annotated pose of each person, moved by Gaussian noise of `noise` x the box diagonal.

    Unlabelled keypoints get a random place inside the box and score 0 (so rescoring ignores them).
    """

    def __init__(self, ann_file: Path, *, noise: float = 0.0, seed: int = 0) -> None:
        self.images, anns = _valid_gt(ann_file)
        self.boxes = np.stack([_clipped_box(a, self.images[a["image_id"]]) for a in anns])
        self.keypoints = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)
        self.image_ids = np.array([a["image_id"] for a in anns])
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def pose_for(self, index: int, box: np.ndarray, box_score: float) -> Person:
        kpts = self.keypoints[index]
        labelled = kpts[:, 2] > 0
        diag = float(np.hypot(box[2] - box[0], box[3] - box[1]))
        xy = kpts[:, :2] + self.rng.normal(0, self.noise * diag, size=(len(kpts), 2))
        xy[~labelled] = self.random_inside(box, int((~labelled).sum()))
        scores = np.where(labelled, LABELLED_SCORE, 0.0)
        return Person(
            bbox=box.astype(np.float32),
            score=box_score,
            keypoints=xy.astype(np.float32),
            keypoint_scores=scores.astype(np.float32),
        )

    def random_inside(self, box: np.ndarray, n: int) -> np.ndarray:
        return self.rng.uniform(box[:2], np.maximum(box[2:], box[:2] + 1), size=(n, 2))


class FakeTopDown(GroundTruthPoses):
    """`predict_on_boxes`: each box gets the pose of the annotation it overlaps best (IoU > 0.5), else a
    random low-confidence pose; `duplicate=True` answers every person twice (for the OKS-NMS)."""

    def __init__(self, ann_file: Path, *, noise: float = 0.0, seed: int = 0, duplicate: bool = False) -> None:
        super().__init__(ann_file, noise=noise, seed=seed)
        self.duplicate = duplicate
        self.calls = 0

    def __call__(self, image: np.ndarray) -> list[Person]:
        raise AssertionError("the detector must not run when boxes are given")

    def predict_on_boxes(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> list[Person]:
        assert image.ndim == 3 and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.shape == (len(scores), 4)
        self.calls += 1
        people = []
        for box, score in zip(boxes.astype(np.float64), scores, strict=True):
            overlaps = _iou(box, self.boxes)
            best = int(np.argmax(overlaps))
            if overlaps[best] > 0.5:
                person = self.pose_for(best, box, float(score))
                people.append(person)
                if self.duplicate:  # the same pose again, half a pixel off, scored a little lower
                    assert person.keypoints is not None
                    jitter = self.rng.normal(0, 0.5, size=person.keypoints.shape).astype(np.float32)
                    people.append(
                        Person(
                            bbox=person.bbox,
                            score=person.score * 0.9,
                            keypoints=person.keypoints + jitter,
                            keypoint_scores=person.keypoint_scores,
                        )
                    )
            else:
                xy = self.random_inside(box, self.keypoints.shape[1]).astype(np.float32)
                people.append(
                    Person(
                        bbox=box.astype(np.float32),
                        score=float(score),
                        keypoints=xy,
                        keypoint_scores=np.full(len(xy), 0.3, np.float32),
                    )
                )
        return people


class FakeBottomUp(GroundTruthPoses):
    """`__call__` only: recognises the image by its pixels and returns all its annotated people."""

    def __init__(self, ann_file: Path, images_dir: Path) -> None:
        super().__init__(ann_file)
        self.by_pixels = {}
        for image_id, info in self.images.items():
            path = images_dir / info["file_name"]
            if path.is_file():
                self.by_pixels[decode_image(path).tobytes()[::997]] = image_id

    def __call__(self, image: np.ndarray) -> list[Person]:
        image_id = self.by_pixels[image.tobytes()[::997]]
        indices = np.flatnonzero(self.image_ids == image_id)
        return [self.pose_for(int(i), self.boxes[i], 1.0) for i in indices]
