"""Top-down pose: detector -> one affine crop per person -> pose model -> keypoints in image pixels.

All persons of an image go through the pose model as one batch (chunks of `max_batch`). The pipeline
knows the pose model only through its `ModelSpec`: input size, mean/std, channel order,
`extra["bbox_padding"]` and `extra["codec"]` (the decoder registered in `postprocess.pose_codecs`), so
RTMPose, MoveNet or any other top-down spec runs through the same code.

Processing runs in NumPy + OpenCV on the host, or (torch engine on CUDA) in torch on the device: the
image is uploaded once; letterbox, NMS, crops, normalisation and decoding run there, and only the
final boxes and keypoints come back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from rtpose.engines.base import Engine
from rtpose.errors import EngineError, RtposeError
from rtpose.models.spec import ModelSpec
from rtpose.pipelines.detector import Detector
from rtpose.pipelines.processing import Processing, check_image, choose_processing, outputs_as, to_numpy
from rtpose.pipelines.runner import SourceArg, run_on_sources
from rtpose.postprocess.pose_codecs import codec_module, codec_name, decode_pose
from rtpose.preprocess.affine import (
    boxes_to_affine_matrices,
    invert_affine_matrices,
    is_torch,
    transform_points,
    warp_crops_numpy,
    warp_crops_torch,
)
from rtpose.preprocess.normalize import normalize_numpy, normalize_torch
from rtpose.types import ImageResult, Person

__all__ = ["Detector", "TopDown"]


class TopDown:
    """Detector + top-down pose model.

    det=None builds no detector: `predict_on_boxes` still works (evaluation with given boxes), calling
    the pipeline on an image then raises a clear error.
    """

    def __init__(
        self,
        pose: str | os.PathLike[str] = "rtmpose-m",
        det: str | os.PathLike[str] | None = "rtmdet-nano",
        *,
        backend: str = "ort",
        device: str = "cpu",
        pose_weights: str | os.PathLike[str] | None = None,
        det_weights: str | os.PathLike[str] | None = None,
        det_score_thr: float | None = None,
        max_batch: int = 64,
        processing: Processing = "auto",
    ) -> None:
        from rtpose.engines.factory import create_engine

        engine, spec = create_engine(
            pose,
            task="pose-topdown",
            backend=backend,
            device=device,
            weights=pose_weights,  # type: ignore[arg-type]
        )
        detector = None
        if det is not None:
            detector = Detector(
                det, backend=backend, device=device, weights=det_weights, score_thr=det_score_thr,
                processing=processing,
            )  # fmt: skip
        self._setup(engine, spec, detector, max_batch, processing)

    @classmethod
    def from_engines(
        cls,
        pose_engine: Engine,
        pose_spec: ModelSpec,
        detector: Detector | None = None,
        *,
        max_batch: int = 64,
        processing: Processing = "auto",
    ) -> TopDown:
        """A pipeline around engines you already have (tests, shared engines, compiled engines)."""
        self = cls.__new__(cls)
        self._setup(pose_engine, pose_spec, detector, max_batch, processing)
        return self

    def _setup(
        self,
        engine: Engine,
        spec: ModelSpec,
        detector: Detector | None,
        max_batch: int,
        processing: Processing,
    ) -> None:
        if spec.task != "pose-topdown":
            raise EngineError(f"{spec.name} is a {spec.task} model, not a top-down pose model")
        codec_module(codec_name(spec))  # fail now, not on the first image, if the codec is unknown
        if max_batch < 1:
            raise RtposeError(f"max_batch must be at least 1, not {max_batch}")
        self.pose_engine, self.pose_spec, self.detector = engine, spec, detector
        self.max_batch = int(max_batch)
        self.bbox_padding = float(spec.extra.get("bbox_padding", 1.25))
        self.processing = choose_processing(processing, engine.backend, engine.device)
        self.device = engine.device if self.processing == "torch" else "cpu"

    # -- public API ---------------------------------------------------------------------------------
    def __call__(self, image: Any) -> list[Person]:
        """Every person in a `(H, W, 3) uint8` BGR image, with keypoints in image pixels."""
        if self.detector is None:
            raise RtposeError("this TopDown pipeline has no detector (det=None): use predict_on_boxes")
        image = self._prepare(check_image(image))
        boxes, scores = self.detector.detect(image)
        return self._pose(image, boxes, scores)

    def predict_on_boxes(self, image: Any, boxes_xyxy: Any, scores: Any = None) -> list[Person]:
        """Keypoints for given person boxes (M, 4) x1y1x2y2 in image pixels; scores (M,) default to 1."""
        image = self._prepare(check_image(image))
        shape = tuple(np.shape(boxes_xyxy))
        if not (len(shape) == 2 and shape[1] == 4) and shape not in ((0,), (0, 0)):
            raise RtposeError(f"boxes must have shape (M, 4) as x1, y1, x2, y2; got {shape}")
        count = shape[0]
        if scores is not None and tuple(np.shape(scores)) != (count,):
            raise RtposeError(f"got {count} boxes but scores of shape {tuple(np.shape(scores))}")
        if self.processing == "torch":
            import torch

            boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32, device=self.device).reshape(count, 4)
            scores = (
                torch.ones(count, device=self.device)
                if scores is None
                else torch.as_tensor(scores, dtype=torch.float32, device=self.device)
            )
        else:
            boxes = to_numpy(boxes_xyxy).astype(np.float64).reshape(count, 4)
            scores = np.ones(count, np.float32) if scores is None else to_numpy(scores).astype(np.float32)
        return self._pose(image, boxes, scores)

    def run(self, sources: SourceArg, progress: bool = True) -> Iterator[ImageResult]:
        """Pose of every person in every image the sources name; a bad item becomes that result's error."""
        return run_on_sources(self, sources, progress=progress)

    # -- internals ----------------------------------------------------------------------------------
    def _prepare(self, image: Any) -> Any:
        """The image where processing happens: a host array, or a device tensor (uploaded once)."""
        if self.processing == "torch":
            import torch

            return torch.as_tensor(image).to(self.device)
        return to_numpy(image)

    def _pose(self, image: Any, boxes: Any, scores: Any) -> list[Person]:
        count = int(boxes.shape[0])
        if count == 0:
            return []
        input_size = self.pose_spec.input_size
        if not is_torch(boxes):
            boxes = np.asarray(
                boxes, dtype=np.float64
            )  # crop matrices in double precision, as OpenCV uses them
        matrices = boxes_to_affine_matrices(boxes, input_size, self.bbox_padding)
        inverse = invert_affine_matrices(matrices)
        keypoint_chunks, score_chunks = [], []
        for start in range(0, count, self.max_batch):
            chunk = slice(start, start + self.max_batch)
            if self.processing == "torch":
                crops = warp_crops_torch(image, matrices[chunk], input_size)
                batch = normalize_torch(
                    crops, self.pose_spec.mean, self.pose_spec.std, self.pose_spec.channel_order
                )
            else:
                crops = warp_crops_numpy(image, matrices[chunk], input_size)
                batch = normalize_numpy(
                    crops, self.pose_spec.mean, self.pose_spec.std, self.pose_spec.channel_order
                )
            outputs = outputs_as(self.processing, self.pose_engine(batch), self.device)
            keypoints, keypoint_scores = decode_pose(self.pose_spec, outputs)
            keypoint_chunks.append(transform_points(keypoints, inverse[chunk]))
            score_chunks.append(keypoint_scores)
        return self._to_people(boxes, scores, keypoint_chunks, score_chunks)

    def _to_people(self, boxes: Any, scores: Any, keypoint_chunks: list, score_chunks: list) -> list[Person]:
        if self.processing == "torch":
            import torch

            keypoints = torch.cat(keypoint_chunks).to(torch.float32)
            keypoint_scores = torch.cat(score_chunks).to(torch.float32)
        else:
            keypoints, keypoint_scores = np.concatenate(keypoint_chunks), np.concatenate(score_chunks)
        boxes, scores = to_numpy(boxes).astype(np.float32), to_numpy(scores).astype(np.float32)
        keypoints = to_numpy(keypoints).astype(np.float32)
        keypoint_scores = to_numpy(keypoint_scores).astype(np.float32)
        return [
            Person(
                bbox=boxes[i],
                score=float(scores[i]),
                keypoints=keypoints[i],
                keypoint_scores=keypoint_scores[i],
            )
            for i in range(len(boxes))
        ]
