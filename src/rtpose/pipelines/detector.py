"""Person detector stage: image -> person boxes in image pixels.

letterbox (keep ratio, pad bottom/right) -> normalise -> detector engine (scores, boxes in network-input
pixels) -> score threshold + NMS (`postprocess.detection`) -> boxes / letterbox scale, clipped to the
image. On a torch processing path everything stays on the device.

`detect_batch` runs the engine once on all images (letterboxed into one (B, 3, H, W) batch); on the
torch path the batch is written straight into the engine's input buffer (`engine_input_rows`) and the
letterbox scales stay Python floats, so nothing but NMS's candidate count goes back to the host.

On CUDA with a compiled engine (CUDA graphs), images of one size run as one captured graph per batch
shape (`pipelines.graphed.DetectStep`: letterbox, network, fixed-size selection and NMS): one launch and
one small copy back per call, with the eager torch path answering the rare calls it cannot.

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
from rtpose.pipelines.processing import (
    Processing,
    check_image,
    choose_processing,
    engine_input_rows,
    outputs_as,
    run_engine,
    to_numpy,
)
from rtpose.pipelines.runner import SourceArg, run_on_sources
from rtpose.pipelines.stage_timer import StageTimer
from rtpose.preprocess.normalize import normalization_tensors, normalize_numpy
from rtpose.types import ImageResult, Person


class Detector:
    """A person detector (RTMDet by default) returning `Person`s with boxes only.

    score_thr: overrides the spec's `extra["score_thr"]`.
    processing: where letterbox/NMS run ("auto": torch on a CUDA torch/compiled engine, NumPy otherwise).
    backend / precision / max_batch: see `create_engine` (max_batch: images per engine call).
    graphs: replay whole detector calls as CUDA graphs (`pipelines.graphed`); None: wherever possible
    (a compiled CUDA engine). True on the CPU runs the same fixed-size code eagerly (for tests).
    """

    def __init__(
        self,
        det: str | os.PathLike[str] = "rtmdet-nano",
        *,
        backend: str = "auto",
        device: str = "cpu",
        weights: str | os.PathLike[str] | None = None,
        score_thr: float | None = None,
        processing: Processing = "auto",
        precision: str = "fp32",
        max_batch: int = 16,
        graphs: bool | None = None,
    ) -> None:
        from rtpose.engines.factory import create_engine

        engine, spec = create_engine(
            det, task="detector", backend=backend, device=device, weights=weights, precision=precision,
            max_batch=max_batch,
        )  # fmt: skip
        self._setup(engine, spec, score_thr, processing, graphs)

    @classmethod
    def from_engine(
        cls,
        engine: Engine,
        spec: ModelSpec,
        *,
        score_thr: float | None = None,
        processing: Processing = "auto",
        graphs: bool | None = None,
    ) -> Detector:
        """A detector around an engine you already have (tests, shared engines)."""
        self = cls.__new__(cls)
        self._setup(engine, spec, score_thr, processing, graphs)
        return self

    def _setup(
        self,
        engine: Engine,
        spec: ModelSpec,
        score_thr: float | None,
        processing: Processing,
        graphs: bool | None,
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
        self._constants: tuple[Any, Any] | None = None
        self.graphs = use_graphs(graphs, self.processing, engine)
        self._steps: Any = None  # graphed.StepCache of DetectSteps, made on first use

    # -- the stage ----------------------------------------------------------------------------------
    def detect(self, image: Any) -> tuple[Any, Any]:
        """Boxes (M, 4) x1y1x2y2 in image pixels and scores (M,), best first.

        NumPy image -> NumPy results on the NumPy path; on the torch path the image may be a tensor on
        the device already, and the results are tensors on the device.
        """
        return self.detect_batch([image])[0]

    def detect_batch(
        self, images: list[Any], timer: StageTimer | None = None, *, graph: bool = True
    ) -> list[tuple[Any, Any]]:
        """`detect` for several images with one engine call: [(boxes (M_i, 4), scores (M_i,))].
        graph=False: op by op even where a graph step exists (a caller that tried the step already)."""
        if not images:
            return []
        timer = timer or StageTimer()
        images = [check_image(image) for image in images]
        if self.processing == "torch":
            return self._detect_torch(images, timer, graph)
        return self._detect_numpy([to_numpy(image) for image in images], timer)

    def _detect_numpy(self, images: list[np.ndarray], timer: StageTimer) -> list[tuple[Any, Any]]:
        from rtpose.postprocess.detection import select_detections_numpy
        from rtpose.preprocess.letterbox import letterbox_numpy, unletterbox_boxes

        with timer.stage("pre"):
            letterboxed = [letterbox_numpy(image, self.spec.input_size, self.pad_value) for image in images]
            canvases = np.stack([canvas for canvas, _ in letterboxed])
            batch = normalize_numpy(canvases, self.spec.mean, self.spec.std, self.spec.channel_order)
        with timer.stage("infer"):
            outputs = outputs_as("numpy", run_engine(self.engine, batch))
        with timer.stage("post"):
            found = select_detections_numpy(
                outputs["scores"], outputs["boxes"], self.score_thr, self.iou_thr, self.pre_top_k,
                self.max_det,
            )  # fmt: skip
            return [
                (unletterbox_boxes(f.boxes, scale, image.shape[:2]), np.asarray(f.scores, dtype=np.float32))
                for f, (_, scale), image in zip(found, letterboxed, images, strict=True)
            ]

    def _device_constants(self) -> tuple[Any, Any]:
        """mean, std as device tensors, made once (a host-to-device copy per call would sync)."""
        if self._constants is None:
            self._constants = normalization_tensors(self.spec, self.device)
        return self._constants

    def graph_step(self, images: list[Any]) -> Any:
        """The `DetectStep` for these images (made on the second call with their shape), or None where
        the op-by-op path runs."""
        from rtpose.pipelines import graphed

        key = graphed.uniform_key(images) if self.graphs else None
        return self.graph_step_for(key) if key is not None else None

    def graph_step_for(self, key: tuple[int, int, int], now: bool = False) -> Any:
        """The `DetectStep` for (images, height, width) `key`; now: made at once (see `StepCache.get`)."""
        from rtpose.pipelines import graphed

        bucket = graphed.step_bucket(graphed.engine_buckets(self.engine), key[0]) if self.graphs else None
        network = graphed.graph_network(self.engine) if bucket is not None else None
        if bucket is None or network is None:
            return None
        if self._steps is None:
            self._steps = graphed.StepCache()
        return self._steps.get(key, lambda: make_step(self, lambda: graphed.DetectStep(
            graphed.FrameBuffer(*key, device=torch_device(self.device)), network, self.spec,
            bucket=bucket, score_thr=self.score_thr, iou_thr=self.iou_thr, pre_top_k=self.pre_top_k,
            max_det=self.max_det, pad_value=self.pad_value,
        )), now=now)  # fmt: skip

    def _detect_torch(
        self, images: list[Any], timer: StageTimer, graph: bool = True
    ) -> list[tuple[Any, Any]]:
        import torch

        step = self.graph_step(images) if graph else None
        if step is not None:
            with timer.stage("pre"):
                step.frames.load(images)
            with timer.stage("infer"):
                slots = step.run()
            if slots is not None:
                with timer.stage("post"):
                    return slots.per_image()

        from rtpose.postprocess.detection import select_detections_torch
        from rtpose.preprocess.device_batch import letterbox_normalize_torch

        with timer.stage("pre"):
            images = [torch.as_tensor(image).to(self.device) for image in images]
            mean, std = self._device_constants()
            height, width = self.spec.input_size
            rows = engine_input_rows(self.engine, len(images), (3, height, width), self.device)
            batch, scales = letterbox_normalize_torch(
                images, self.spec.input_size, self.pad_value, mean, std, self.spec.channel_order, out=rows
            )
        with timer.stage("infer"):
            outputs = outputs_as("torch", self.engine(batch), self.device)
        with timer.stage("post"):
            found = select_detections_torch(
                outputs["scores"], outputs["boxes"], self.score_thr, self.iou_thr, self.pre_top_k,
                self.max_det,
            )  # fmt: skip
            return [
                (unletterbox_torch(f.boxes, scale, image.shape[:2]), f.scores.to(torch.float32))
                for f, scale, image in zip(found, scales, images, strict=True)
            ]

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


def torch_device(device: Any) -> Any:
    import torch

    if str(device) == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def use_graphs(requested: bool | None, processing: str, engine: Engine) -> bool:
    """Whether a pipeline stage replays CUDA graphs (`pipelines.graphed`): asked for, or by default where
    the engine can be captured on CUDA. Needs the torch processing path."""
    if processing != "torch" or requested is False:
        return False
    from rtpose.pipelines.graphed import graph_network

    if graph_network(engine) is None:
        if requested:
            raise EngineError(
                f"graphs=True needs a torch or compiled engine (CUDA graphs on CUDA), not {engine.backend}"
            )
        return False
    return bool(requested) or str(engine.device).startswith("cuda")


def make_step(owner: Any, factory: Any) -> Any:
    """`factory()`, or None (and no more graphs for `owner`) when the capture fails: the eager path is
    always there, so a stage that cannot be captured costs a warning, not the call."""
    try:
        return factory()
    except Exception as exc:
        import warnings

        warnings.warn(f"CUDA graph capture of a pipeline stage failed ({exc}); running it eagerly",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
        owner.graphs = False
        return None


def unletterbox_torch(boxes: Any, scale: tuple[float, float], image_hw: tuple[int, ...]) -> Any:
    """`unletterbox_boxes_torch` with the scale as Python floats: same float64 arithmetic, no upload.
    Boxes (..., 4) x1y1x2y2 -> float32 image pixels (the graph step uses it on (B, K, 4) candidates)."""
    import torch

    out = boxes.to(torch.float64, copy=True)
    out[..., 0::2] /= scale[0]
    out[..., 1::2] /= scale[1]
    out[..., 0::2] = out[..., 0::2].clamp(0, int(image_hw[1]))
    out[..., 1::2] = out[..., 1::2].clamp(0, int(image_hw[0]))
    return out.to(torch.float32)
