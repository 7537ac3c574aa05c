"""COCO keypoint evaluation: box sources, MMPose-style rescoring and OKS-NMS, pycocotools scoring."""

from rtpose.evaluation.box_sources import BoxSource, detection_file_boxes, gt_person_boxes, load_box_source
from rtpose.evaluation.coco import (
    STAT_NAMES,
    evaluate,
    evaluate_results,
    nms_area,
    people_to_coco_results,
    pose_nms_people,
    rescore_person,
)

__all__ = [
    "STAT_NAMES",
    "BoxSource",
    "detection_file_boxes",
    "evaluate",
    "evaluate_results",
    "gt_person_boxes",
    "load_box_source",
    "nms_area",
    "people_to_coco_results",
    "pose_nms_people",
    "rescore_person",
]
