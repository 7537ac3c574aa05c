"""Where the person boxes of a top-down COCO evaluation come from: ground truth, a detection file, or the
pipeline's own detector.

The choices follow MMPose (1.x `BaseCocoStyleDataset`, same as 0.x `TopDownCocoDataset`), so that our
numbers are comparable with the published ones:

- "gt": one box per annotation that is not a crowd, has keypoints (`num_keypoints > 0` and some non-zero
  keypoint value) and a box of positive size after clipping to the image: x1 = clip(x, 0, W-1),
  x2 = clip(x + w, 0, W-1) (same for y). Every box has score 1.0. Persons without keypoint annotations
  are left out: COCOeval ignores them anyway, and MMPose does not crop them.
- a detection result file (COCO format: a list of {image_id, category_id, bbox [x, y, w, h], score}):
  category 1 (person) only, every score kept (MMPose's `det_bbox_thr` default is 0.0), x2 = x + w.
  Detections of images that are not in the annotation file are dropped (the shared AP-56 file covers the
  first 1000 val images; our annotation subsets hold fewer).
- "det": None, meaning the pipeline runs its own detector.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rtpose.errors import RtposeError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

#: image_id -> (boxes (M, 4) float32 x1y1x2y2, scores (M,) float32)
BoxSource = dict[int, tuple[np.ndarray, np.ndarray]]

PERSON_CATEGORY_ID = 1


def load_box_source(boxes: str | os.PathLike[str], coco: COCO) -> BoxSource | None:
    """Resolve `boxes` ("gt", "det" or a detection JSON path) into per-image boxes; "det" gives None.

    Every image of `coco` gets an entry (possibly with zero boxes).
    """
    if isinstance(boxes, str) and boxes == "gt":
        return gt_person_boxes(coco)
    if isinstance(boxes, str) and boxes == "det":
        return None
    path = Path(boxes)
    if not path.is_file():
        raise RtposeError(
            f"boxes must be 'gt', 'det' or a detection result JSON file; {str(boxes)!r} is none"
        )
    return detection_file_boxes(path, coco)


def _empty_source(coco: COCO) -> dict[int, tuple[list[list[float]], list[float]]]:
    return {int(image_id): ([], []) for image_id in coco.getImgIds()}


def _to_arrays(collected: dict[int, tuple[list[list[float]], list[float]]]) -> BoxSource:
    return {
        image_id: (
            np.asarray(b, dtype=np.float32).reshape(-1, 4),
            np.asarray(s, dtype=np.float32).reshape(-1),
        )
        for image_id, (b, s) in collected.items()
    }


def gt_person_boxes(coco: COCO) -> BoxSource:
    """The ground-truth person boxes MMPose crops in GT-box evaluation (see the module docstring)."""
    collected = _empty_source(coco)
    for ann in coco.dataset.get("annotations", []):
        image_id = int(ann["image_id"])
        if image_id not in collected or ann.get("iscrowd", 0):
            continue
        keypoints = ann.get("keypoints")
        if not keypoints or max(keypoints) == 0 or ann.get("num_keypoints", 1) == 0 or "bbox" not in ann:
            continue
        image = coco.imgs[image_id]
        width, height = image["width"], image["height"]
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, x2 = np.clip([x, x + w], 0, width - 1)
        y1, y2 = np.clip([y, y + h], 0, height - 1)
        if x2 <= x1 or y2 <= y1:
            continue
        collected[image_id][0].append([float(x1), float(y1), float(x2), float(y2)])
        collected[image_id][1].append(1.0)
    return _to_arrays(collected)


def detection_file_boxes(path: str | os.PathLike[str], coco: COCO, *, score_thr: float = 0.0) -> BoxSource:
    """Person boxes of a COCO detection result file, for the images of `coco` only."""
    try:
        detections = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RtposeError(f"cannot read detection file {path}: {exc}") from None
    if not isinstance(detections, list):
        raise RtposeError(
            f"detection file {path}: expected a JSON list of detections, got {type(detections).__name__}"
        )
    collected = _empty_source(coco)
    for index, det in enumerate(detections):
        try:
            image_id, category_id = int(det["image_id"]), int(det.get("category_id", PERSON_CATEGORY_ID))
            x, y, w, h = (float(v) for v in det["bbox"][:4])
            score = float(det["score"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RtposeError(
                f"detection file {path}: entry {index} is not "
                f"{{image_id, category_id, bbox [x, y, w, h], score}} ({type(exc).__name__}: {exc})"
            ) from None
        if category_id != PERSON_CATEGORY_ID or image_id not in collected or score < score_thr:
            continue
        collected[image_id][0].append([x, y, x + w, y + h])
        collected[image_id][1].append(score)
    return _to_arrays(collected)
