"""The top-down pipeline, stage by stage, for timing: decode -> pre -> infer -> post.

`TopDown.__call__` interleaves the detector and pose stages inside one call, so this class runs the
same public building blocks (`decode_image`, letterbox, `normalize_*`, `select_detections_*`, affine
crops, `decode_pose`, `transform_points`) with a clock around each stage: both detector and pose work
count towards "pre" (letterbox + crops + normalisation), "infer" (both networks) and "post" (NMS,
box mapping, pose decoding, mapping to image pixels, results back on the host). On CUDA every stage
ends with a synchronisation so that the time is charged to the stage that caused it. The detector's
thresholds come from `Detector` itself, and a test checks that the people found are the ones
`TopDown` finds with the same engines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from rtpose.decode.image import decode_image
from rtpose.engines.base import Engine
from rtpose.models.spec import ModelSpec
from rtpose.pipelines.detector import Detector
from rtpose.pipelines.processing import choose_processing, outputs_as, to_numpy
from rtpose.postprocess.detection import select_detections_numpy, select_detections_torch
from rtpose.postprocess.pose_codecs import decode_pose
from rtpose.preprocess.affine import (
    boxes_to_affine_matrices,
    invert_affine_matrices,
    transform_points,
    warp_crops_numpy,
    warp_crops_torch,
)
from rtpose.preprocess.letterbox import (
    letterbox_numpy,
    letterbox_torch,
    unletterbox_boxes,
    unletterbox_boxes_torch,
)
from rtpose.preprocess.normalize import normalize_numpy, normalize_torch
from rtpose.types import Person

STAGES: tuple[str, ...] = ("decode", "pre", "infer", "post")


class StageClock:
    """Accumulates wall-clock milliseconds per stage; `sync` runs at the end of each stage."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.sync()
        self.ms[name] += (time.perf_counter() - start) * 1e3


def _cuda_sync(device: str) -> Callable[[], None]:
    if not str(device).startswith("cuda"):
        return lambda: None
    import torch

    return torch.cuda.synchronize


class StagedTopDown:
    """Detector + top-down pose model on one encoded image, with per-stage timings."""

    def __init__(
        self,
        det_engine: Engine,
        det_spec: ModelSpec,
        pose_engine: Engine,
        pose_spec: ModelSpec,
        *,
        max_batch: int = 64,
    ) -> None:
        self.detector = Detector.from_engine(det_engine, det_spec)
        self.pose_engine, self.pose_spec = pose_engine, pose_spec
        self.max_batch = max_batch
        self.bbox_padding = float(pose_spec.extra.get("bbox_padding", 1.25))
        self.processing = choose_processing("auto", pose_engine.backend, pose_engine.device)
        self.device = pose_engine.device if self.processing == "torch" else "cpu"
        self._sync = _cuda_sync(self.device)

    def __call__(self, encoded: bytes) -> tuple[list[Person], dict[str, float]]:
        """People found in the encoded image, and milliseconds per stage of this call."""
        clock = StageClock(self._sync)
        with clock.stage("decode"):
            image = decode_image(encoded, name="<bench image>")
        if self.processing == "torch":
            people = self._run_torch(image, clock)
        else:
            people = self._run_numpy(image, clock)
        return people, clock.ms

    # -- NumPy + OpenCV on the host ------------------------------------------------------------------
    def _run_numpy(self, image: np.ndarray, clock: StageClock) -> list[Person]:
        det, pose = self.detector, self.pose_spec
        with clock.stage("pre"):
            canvas, scale = letterbox_numpy(image, det.spec.input_size, det.pad_value)
            det_batch = normalize_numpy(canvas[None], det.spec.mean, det.spec.std, det.spec.channel_order)
        with clock.stage("infer"):
            det_out = outputs_as("numpy", det.engine(det_batch))
        with clock.stage("post"):
            (found,) = select_detections_numpy(
                det_out["scores"], det_out["boxes"], det.score_thr, det.iou_thr, det.pre_top_k, det.max_det
            )
            boxes = unletterbox_boxes(found.boxes, scale, image.shape[:2]).astype(np.float64)
            scores = np.asarray(found.scores, dtype=np.float32)
            matrices = boxes_to_affine_matrices(boxes, pose.input_size, self.bbox_padding)
            inverse = invert_affine_matrices(matrices)
        keypoints, keypoint_scores = [], []
        for start in range(0, len(boxes), self.max_batch):
            chunk = slice(start, start + self.max_batch)
            with clock.stage("pre"):
                crops = warp_crops_numpy(image, matrices[chunk], pose.input_size)
                batch = normalize_numpy(crops, pose.mean, pose.std, pose.channel_order)
            with clock.stage("infer"):
                raw = self.pose_engine(batch)
            with clock.stage("post"):
                points, point_scores = decode_pose(pose, outputs_as("numpy", raw))
                keypoints.append(transform_points(points, inverse[chunk]))
                keypoint_scores.append(point_scores)
        with clock.stage("post"):
            return _people(boxes, scores, keypoints, keypoint_scores)

    # -- torch on the engine's device ----------------------------------------------------------------
    def _run_torch(self, image: np.ndarray, clock: StageClock) -> list[Person]:
        import torch

        det, pose = self.detector, self.pose_spec
        with clock.stage("pre"):
            frame = torch.from_numpy(image).to(self.device)
            canvases, scales = letterbox_torch(frame[None], det.spec.input_size, det.pad_value)
            det_batch = normalize_torch(canvases, det.spec.mean, det.spec.std, det.spec.channel_order)
        with clock.stage("infer"):
            det_out = outputs_as("torch", det.engine(det_batch), self.device)
        with clock.stage("post"):
            (found,) = select_detections_torch(
                det_out["scores"], det_out["boxes"], det.score_thr, det.iou_thr, det.pre_top_k, det.max_det
            )
            boxes = unletterbox_boxes_torch(found.boxes, scales[0], (image.shape[0], image.shape[1]))
            scores = found.scores.to(torch.float32)
            matrices = boxes_to_affine_matrices(boxes, pose.input_size, self.bbox_padding)
            inverse = invert_affine_matrices(matrices)
        keypoints, keypoint_scores = [], []
        for start in range(0, int(boxes.shape[0]), self.max_batch):
            chunk = slice(start, start + self.max_batch)
            with clock.stage("pre"):
                crops = warp_crops_torch(frame, matrices[chunk], pose.input_size)
                batch = normalize_torch(crops, pose.mean, pose.std, pose.channel_order)
            with clock.stage("infer"):
                raw = self.pose_engine(batch)
            with clock.stage("post"):
                points, point_scores = decode_pose(pose, outputs_as("torch", raw, self.device))
                keypoints.append(transform_points(points, inverse[chunk]))
                keypoint_scores.append(point_scores)
        with clock.stage("post"):
            return _people(boxes, scores, keypoints, keypoint_scores)


def _people(boxes: Any, scores: Any, keypoints: list[Any], keypoint_scores: list[Any]) -> list[Person]:
    """Host-side `Person`s (the cost of bringing results back is part of "post")."""
    boxes, scores = to_numpy(boxes).astype(np.float32), to_numpy(scores).astype(np.float32)
    if len(boxes) == 0:
        return []
    points = np.concatenate([to_numpy(k).astype(np.float32) for k in keypoints])
    point_scores = np.concatenate([to_numpy(s).astype(np.float32) for s in keypoint_scores])
    return [
        Person(bbox=boxes[i], score=float(scores[i]), keypoints=points[i], keypoint_scores=point_scores[i])
        for i in range(len(boxes))
    ]
