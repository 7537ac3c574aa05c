"""Bottom-up pose: one network gives keypoint heatmaps and PAFs for the whole image; peaks are grouped
into people (`postprocess.paf`).

Preprocessing follows the lightweight-OpenPose demo: resize to the network height keeping the ratio,
pad right/bottom with the spec's ``extra["pad_value"]`` (128, i.e. 0 after normalisation) to a width that
is a multiple of the stride. Torch engines are fully convolutional, so each image keeps its own width
(``dynamic_width``); exported graphs (ONNX Runtime) have the spec's fixed input size, so the image is fitted
into it. With a torch engine on CUDA, resize, padding, normalisation and decoding all run in torch on the
GPU and only the people come back (``processing`` as in the top-down pipeline).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from rtpose.engines.base import Engine
from rtpose.errors import EngineError, RtposeError
from rtpose.models.spec import ModelSpec
from rtpose.pipelines.processing import Processing, check_image, choose_processing, outputs_as, to_numpy
from rtpose.pipelines.runner import SourceArg, run_on_sources
from rtpose.postprocess.paf import decode_bottomup
from rtpose.preprocess.letterbox import letterbox_numpy, letterbox_torch
from rtpose.preprocess.normalize import normalize_numpy, normalize_torch
from rtpose.types import ImageResult, Person

__all__ = ["BottomUp", "people_from_keypoints"]


class BottomUp:
    """Bottom-up pose model (heatmaps + PAFs) -> every person of an image.

    decode_options are passed to `decode_bottomup` (peak_thr, paf_thr, min_keypoints, score_mode, ...);
    stride and upsample default to the spec's ``extra["stride"]`` and ``extra["upsample_ratio"]``.
    """

    def __init__(
        self,
        pose: str | os.PathLike[str] = "openpose-lite",
        *,
        backend: str = "auto",
        device: str = "cpu",
        weights: str | os.PathLike[str] | None = None,
        processing: Processing = "auto",
        dynamic_width: bool | None = None,
        precision: str = "fp32",
        **decode_options: Any,
    ) -> None:
        from rtpose.engines.factory import create_engine

        engine, spec = create_engine(
            pose,
            task="pose-bottomup",
            backend=backend,
            device=device,
            weights=weights,  # type: ignore[arg-type]
            precision=precision,
        )
        self._setup(engine, spec, processing, dynamic_width, decode_options)

    @classmethod
    def from_engine(
        cls,
        engine: Engine,
        spec: ModelSpec,
        *,
        processing: Processing = "auto",
        dynamic_width: bool | None = None,
        **decode_options: Any,
    ) -> BottomUp:
        """A pipeline around an engine you already have (tests, shared or compiled engines)."""
        self = cls.__new__(cls)
        self._setup(engine, spec, processing, dynamic_width, decode_options)
        return self

    def _setup(
        self,
        engine: Engine,
        spec: ModelSpec,
        processing: Processing,
        dynamic_width: bool | None,
        decode_options: dict[str, Any],
    ) -> None:
        if spec.task != "pose-bottomup":
            raise EngineError(f"{spec.name} is a {spec.task} model, not a bottom-up pose model")
        self.engine, self.spec = engine, spec
        self.processing = choose_processing(processing, engine.backend, engine.device)
        self.device = engine.device if self.processing == "torch" else "cpu"
        self.dynamic_width = engine.backend == "torch" if dynamic_width is None else bool(dynamic_width)
        self.stride = int(spec.extra.get("stride", 8))
        self.pad_value = int(spec.extra.get("pad_value", round(float(np.mean(spec.mean)))))
        self.heatmap_name, self.paf_name = spec.extra.get("output_names", ("heatmaps", "pafs"))
        self.decode_options = {"stride": self.stride, "upsample": int(spec.extra.get("upsample_ratio", 4))}
        self.decode_options.update(decode_options)
        # fail now, not on the first image, on an unknown option or value
        try:
            decode_bottomup(
                np.zeros((19, 1, 1), np.float32), np.zeros((38, 1, 1), np.float32), **self.decode_options
            )
        except TypeError as exc:
            raise RtposeError(f"unknown bottom-up decoding option: {exc}") from None

    # -- public API ---------------------------------------------------------------------------------
    def __call__(self, image: Any) -> list[Person]:
        """Every person in a `(H, W, 3) uint8` BGR image, keypoints (COCO-17) in image pixels."""
        keypoints, keypoint_scores, person_scores = self.predict_arrays(image)
        return people_from_keypoints(keypoints, keypoint_scores, person_scores)

    def predict_arrays(self, image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keypoints (P, 17, 2) in image pixels, keypoint scores (P, 17), person scores (P,)) as NumPy."""
        image = check_image(image)
        canvas_size = self.canvas_size(tuple(image.shape[:2]))
        if self.processing == "torch":
            import torch

            tensor = torch.as_tensor(image).to(self.device)
            canvas, scale = letterbox_torch(tensor[None], canvas_size, self.pad_value)
            batch = normalize_torch(canvas, self.spec.mean, self.spec.std, self.spec.channel_order)
            scale = scale[0].to(device=self.device, dtype=torch.float32)
        else:
            canvas, scale = letterbox_numpy(to_numpy(image), canvas_size, self.pad_value)
            batch = normalize_numpy(canvas[None], self.spec.mean, self.spec.std, self.spec.channel_order)
            scale = scale.astype(np.float32)
        outputs = outputs_as(self.processing, self.engine(batch), self.device)
        keypoints, keypoint_scores, person_scores = decode_bottomup(
            outputs[self.heatmap_name], outputs[self.paf_name], **self.decode_options
        )
        keypoints = keypoints / scale  # (sx, sy): network-input pixels -> image pixels
        return (
            to_numpy(keypoints).astype(np.float32),
            to_numpy(keypoint_scores).astype(np.float32),
            to_numpy(person_scores).astype(np.float32),
        )

    def run(self, sources: SourceArg, progress: bool = True) -> Iterator[ImageResult]:
        """Pose of every person in every image the sources name; a bad item becomes that result's error."""
        return run_on_sources(self, sources, progress=progress)

    def canvas_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the network input for an image: the spec's height; the resized width rounded
        up to the stride (dynamic width) or the spec's fixed width."""
        net_height, net_width = self.spec.input_size
        if not self.dynamic_width:
            return net_height, net_width
        height, width = image_hw
        resized_width = max(int(width * net_height / max(height, 1) + 0.5), 1)
        return net_height, math.ceil(resized_width / self.stride) * self.stride


def people_from_keypoints(
    keypoints: np.ndarray, keypoint_scores: np.ndarray, person_scores: np.ndarray
) -> list[Person]:
    """`Person`s whose box is the extent of their found keypoints (score > 0)."""
    people = []
    for xy, scores, score in zip(keypoints, keypoint_scores, person_scores, strict=True):
        found = xy[scores > 0]
        if len(found) == 0:
            continue
        box = np.array([*found.min(0), *found.max(0)], np.float32)
        people.append(Person(bbox=box, score=float(score), keypoints=xy, keypoint_scores=scores))
    return people
