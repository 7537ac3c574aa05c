"""Person detector stage: image -> person boxes in image pixels.

letterbox (keep ratio, pad bottom/right) -> normalise -> detector engine (scores, boxes in network-input
pixels) -> score threshold + NMS (`postprocess.detection`) -> boxes / letterbox scale, clipped to the
image. On a torch processing path everything stays on the device.

Boxes are selected in one pass with the spec's `score_thr` and `iou_thr` (0.3 / 0.3 for RTMDet: what
MMPose's top-down demo applies). MMPose runs the config's own NMS (IoU 0.65) before that; one pass at the
stricter IoU gives the same boxes except in rare chains of overlaps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from rtpose.engines.base import Engine
from rtpose.errors import EngineError
from rtpose.models.spec import ModelSpec
from rtpose.pipelines.processing import Processing, check_image, choose_processing, outputs_as, to_numpy
from rtpose.pipelines.runner import SourceArg, run_on_sources
from rtpose.preprocess.normalize import normalize_numpy, normalize_torch
from rtpose.types import ImageResult, Person


class Detector:
    """A person detector (RTMDet by default) returning `Person`s with boxes only.

    score_thr: overrides the spec's `extra["score_thr"]`.
    processing: where letterbox/NMS run ("auto": torch on a CUDA torch engine, NumPy otherwise).
    """

    def __init__(
        self,
        det: str | os.PathLike[str] = "rtmdet-nano",
        *,
        backend: str = "ort",
        device: str = "cpu",
        weights: str | os.PathLike[str] | None = None,
        score_thr: float | None = None,
        processing: Processing = "auto",
    ) -> None:
        from rtpose.engines.factory import create_engine

        engine, spec = create_engine(det, task="detector", backend=backend, device=device, weights=weights)  # type: ignore[arg-type]
        self._setup(engine, spec, score_thr, processing)

    @classmethod
    def from_engine(
        cls,
        engine: Engine,
        spec: ModelSpec,
        *,
        score_thr: float | None = None,
        processing: Processing = "auto",
    ) -> Detector:
        """A detector around an engine you already have (tests, shared engines)."""
        self = cls.__new__(cls)
        self._setup(engine, spec, score_thr, processing)
        return self

    def _setup(
        self, engine: Engine, spec: ModelSpec, score_thr: float | None, processing: Processing
    ) -> None:
        if spec.task != "detector":
            raise EngineError(f"{spec.name} is a {spec.task} model, not a detector")
        self.engine, self.spec = engine, spec
        extra = spec.extra
        self.score_thr = float(score_thr if score_thr is not None else extra.get("score_thr", 0.3))
        self.iou_thr = float(extra.get("iou_thr", 0.3))
        self.pre_top_k = int(extra.get("pre_top_k", 1000))
        self.max_det = int(extra.get("max_det", 100))
        self.pad_value = extra.get("pad_value", 114)
        self.processing = choose_processing(processing, engine.backend, engine.device)
        self.device = engine.device if self.processing == "torch" else "cpu"

    # -- the stage ----------------------------------------------------------------------------------
    def detect(self, image: Any) -> tuple[Any, Any]:
        """Boxes (M, 4) x1y1x2y2 in image pixels and scores (M,), best first.

        NumPy image -> NumPy results on the NumPy path; on the torch path the image may be a tensor on
        the device already, and the results are tensors on the device.
        """
        image = check_image(image)
        if self.processing == "torch":
            return self._detect_torch(image)
        return self._detect_numpy(to_numpy(image))

    def _detect_numpy(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from rtpose.postprocess.detection import select_detections_numpy
        from rtpose.preprocess.letterbox import letterbox_numpy, unletterbox_boxes

        canvas, scale = letterbox_numpy(image, self.spec.input_size, self.pad_value)
        batch = normalize_numpy(canvas[None], self.spec.mean, self.spec.std, self.spec.channel_order)
        outputs = outputs_as("numpy", self.engine(batch))
        (found,) = select_detections_numpy(
            outputs["scores"], outputs["boxes"], self.score_thr, self.iou_thr, self.pre_top_k, self.max_det
        )
        boxes = unletterbox_boxes(found.boxes, scale, image.shape[:2])
        return boxes, np.asarray(found.scores, dtype=np.float32)

    def _detect_torch(self, image: Any) -> tuple[Any, Any]:
        import torch

        from rtpose.postprocess.detection import select_detections_torch
        from rtpose.preprocess.letterbox import letterbox_torch, unletterbox_boxes_torch

        image = torch.as_tensor(image).to(self.device)
        canvases, scales = letterbox_torch(image[None], self.spec.input_size, self.pad_value)
        batch = normalize_torch(canvases, self.spec.mean, self.spec.std, self.spec.channel_order)
        outputs = outputs_as("torch", self.engine(batch), self.device)
        (found,) = select_detections_torch(
            outputs["scores"], outputs["boxes"], self.score_thr, self.iou_thr, self.pre_top_k, self.max_det
        )
        boxes = unletterbox_boxes_torch(found.boxes, scales[0], (int(image.shape[0]), int(image.shape[1])))
        return boxes, found.scores.to(torch.float32)

    def __call__(self, image: Any) -> list[Person]:
        boxes, scores = self.detect(image)
        boxes, scores = to_numpy(boxes), to_numpy(scores)
        return [
            Person(bbox=box.astype(np.float32), score=float(score))
            for box, score in zip(boxes, scores, strict=True)
        ]

    def run(self, sources: SourceArg, progress: bool = True) -> Iterator[ImageResult]:
        """Detect people in every image the sources name; a bad item becomes that result's error."""
        return run_on_sources(self, sources, progress=progress)
