"""Top-down pose: detector -> one affine crop per person -> pose model -> keypoints in image pixels.

All persons go through the pose model as one batch (chunks of `max_batch`): with `predict_batch`, all
persons of all images. The pipeline knows the pose model only through its `ModelSpec`: input size,
mean/std, channel order, `extra["bbox_padding"]` and `extra["codec"]` (the decoder registered in
`postprocess.pose_codecs`), so RTMPose, MoveNet or any other top-down spec runs through the same code.

Processing runs in NumPy + OpenCV on the host (the reference), or (torch/compiled engine on CUDA) in
torch on the device, where nothing goes back to the host until the end:

    JPEG bytes -> nvJPEG decode (or cv2 + one pinned async upload)      [decode]
    -> letterbox of all images into the detector engine's input          [pre]
    -> detector engine                                                   [infer]
    -> box selection + NMS (torch), boxes back to image pixels           [post]
    -> crop matrices; crops of all persons of all images in one gather,
       normalised into the pose engine's (CUDA-graph) input rows         [pre]
    -> pose engine                                                       [infer]
    -> SimCC/heatmap decode, inverse affine of the keypoints             [post]
    -> boxes, scores, keypoints of everyone: ONE device-to-host copy     [post]

The only other host synchronisations are the ones the sizes need: how many boxes NMS kept per image.

With compiled CUDA engines (CUDA graphs), images of one size skip the op-by-op launches: the detector
stage and the pose stage each replay one captured graph holding their pre-processing, network and
post-processing (`pipelines.graphed`); the stage times then read pre = copying the images into the
graph's input, infer = both graph replays (device pre/post included), post = building the results.

With `profile=True` the device is synchronised at stage boundaries and `last_timings` holds the
milliseconds of each stage of the last call; without it the pipeline never synchronises for timing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtpose.engines.base import Engine
from rtpose.errors import EngineError, ImageDecodeError, RtposeError
from rtpose.models.spec import ModelSpec
from rtpose.pipelines.detector import Detector, make_step, torch_device, use_graphs
from rtpose.pipelines.processing import (
    Processing,
    check_image,
    choose_processing,
    engine_input_rows,
    outputs_as,
    run_engine,
    to_numpy,
)
from rtpose.pipelines.runner import SourceArg, run_batched
from rtpose.pipelines.stage_timer import StageTimer
from rtpose.postprocess.pose_codecs import codec_module, codec_name, decode_pose
from rtpose.preprocess.affine import (
    boxes_to_affine_matrices,
    invert_affine_matrices,
    is_torch,
    transform_points,
    warp_crops_numpy,
)
from rtpose.preprocess.normalize import normalization_tensors, normalize_numpy
from rtpose.types import ImageResult, Person, people_from_rows

__all__ = ["Detector", "TopDown"]

#: inputs `predict_batch` decodes itself
ENCODED_TYPES = (bytes, bytearray, memoryview)

#: `predict_batch(select=...)`: (image index, boxes (M, 4), scores (M,)) -> the boxes to pose, and scores
SelectBoxes = Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class LaunchedDetect:
    """A detector step started by `TopDown.launch_detect` on these (prepared) images."""

    images: list[Any]
    step: Any

    def wait(self) -> None:
        """Wait for the step without using its answer."""
        self.step.collect()


class PendingRows:
    """Pose rows (m, 5 + 3K) float32 on their way to the host: on CUDA a non-blocking copy into pinned
    memory and an event, so the host can work until it needs them."""

    def __init__(self, rows: Any) -> None:
        import torch

        self._event = None
        if rows.device.type != "cuda":
            self._host = rows
            return
        self._host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        self._host.copy_(rows, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()

    def ready(self) -> bool:
        """Whether `result` would return without waiting."""
        return self._event is None or bool(self._event.query())

    def result(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


@dataclass
class LaunchedPose:
    """A pose step started by `TopDown.launch_pose_on_boxes`: the rows of `counts[i]` persons per image."""

    counts: list[int]
    rows: PendingRows

    def wait(self) -> None:
        """Wait for the step without using its answer."""
        self.rows.result()

    def ready(self) -> bool:
        """Whether the step has finished (its answer can be read without waiting)."""
        return self.rows.ready()


class TopDown:
    """Detector + top-down pose model.

    backend: "auto" (default: compiled on CUDA, ONNX Runtime on the CPU), "ort" (CPU), "torch" or
    "compiled" (AOTInductor + CUDA graphs). precision: fp32, fp16/bf16 with compiled engines, int8 with
    ONNX Runtime.
    det_precision: the detector's (default: `precision`, but fp32 for int8: RTMDet-nano loses half its
    boxes in INT8 on COCO val, while it costs ~5 ms of a CPU frame).
    pose_weights="random": seeded random weights, for speed benchmarks only (keypoints are meaningless).
    det=None builds no detector: `predict_on_boxes` still works (evaluation with given boxes), calling
    the pipeline on an image then raises a clear error.
    profile: synchronise at stage boundaries and record `last_timings` (ms per stage) for every call.
    graphs: replay each stage as one CUDA graph for images of one size (`pipelines.graphed`); None:
    wherever the engines allow it (compiled engines on CUDA).
    """

    def __init__(
        self,
        pose: str | os.PathLike[str] = "rtmpose-m",
        det: str | os.PathLike[str] | None = "rtmdet-nano",
        *,
        backend: str = "auto",
        device: str = "cpu",
        precision: str = "fp32",
        pose_weights: str | os.PathLike[str] | None = None,
        det_weights: str | os.PathLike[str] | None = None,
        det_score_thr: float | None = None,
        max_batch: int = 64,
        det_max_batch: int = 16,
        processing: Processing = "auto",
        profile: bool = False,
        det_precision: str | None = None,
        graphs: bool | None = None,
    ) -> None:
        from rtpose.engines.factory import create_engine
        from rtpose.engines.ort import spinning

        # With a detector, two ONNX Runtime sessions take turns: threads of one that busy-wait for its
        # next call only slow the other (1280x720 street frame, 2 cores: 70 vs ~110 ms per frame).
        with spinning(det is None):
            engine, spec = create_engine(
                pose, task="pose-topdown", backend=backend, device=device, weights=pose_weights,
                precision=precision, max_batch=max_batch,
            )  # fmt: skip
            detector = None
            if det is not None:
                detector = Detector(
                    det, backend=backend, device=device, weights=det_weights, score_thr=det_score_thr,
                    processing=processing, max_batch=det_max_batch, graphs=graphs,
                    precision=det_precision or ("fp32" if precision == "int8" else precision),
                )  # fmt: skip
        self._setup(engine, spec, detector, max_batch, processing, profile, graphs)

    @classmethod
    def from_engines(
        cls,
        pose_engine: Engine,
        pose_spec: ModelSpec,
        detector: Detector | None = None,
        *,
        max_batch: int = 64,
        processing: Processing = "auto",
        profile: bool = False,
        graphs: bool | None = None,
    ) -> TopDown:
        """A pipeline around engines you already have (tests, shared engines, compiled engines)."""
        self = cls.__new__(cls)
        self._setup(pose_engine, pose_spec, detector, max_batch, processing, profile, graphs)
        return self

    def _setup(
        self,
        engine: Engine,
        spec: ModelSpec,
        detector: Detector | None,
        max_batch: int,
        processing: Processing,
        profile: bool,
        graphs: bool | None = None,
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
        self.profile = bool(profile)
        self._timer = StageTimer(self.profile, self.device)
        #: milliseconds per stage (decode, pre, infer, post, total) of the last call when profile=True
        self.last_timings: dict[str, float] = {}
        self._constants: tuple[Any, Any] | None = None
        self.graphs = use_graphs(graphs, self.processing, engine)
        self._frames: Any = None  # graphed.StepCache of FrameBuffers (given boxes), made on first use

    def twin(self) -> TopDown:
        """A pipeline on the same engines and detector with graph steps on given boxes of its own: while
        a pose step launched on one (`launch_pose_on_boxes`) runs, the other can launch the next."""
        return TopDown.from_engines(
            self.pose_engine, self.pose_spec, self.detector, max_batch=self.max_batch,
            processing=self.processing, profile=self.profile, graphs=self.graphs,
        )  # fmt: skip

    # -- public API ---------------------------------------------------------------------------------
    def __call__(self, image: Any) -> list[Person]:
        """Every person in a `(H, W, 3) uint8` BGR image (array or tensor) or in encoded image bytes."""
        return self.predict_batch([image])[0]

    def predict_batch(
        self, images: Sequence[Any], *, select: SelectBoxes | None = None
    ) -> list[list[Person]]:
        """Every person in every image: the detector runs once on all images, the pose model on all
        persons of all images (chunks of `max_batch`). Images: `(H, W, 3) uint8` BGR NumPy arrays or
        torch tensors, or encoded image bytes (decoded on the GPU where the pipeline runs on CUDA).

        select: `select(i, boxes, scores) -> (boxes, scores)` chooses which detections of image i get a
        pose (host float32 arrays, best first), e.g. those a tracker can use; the images are uploaded
        once for both models."""
        if self.detector is None:
            raise RtposeError("this TopDown pipeline has no detector (det=None): use predict_on_boxes")
        if isinstance(images, np.ndarray | bytes) or is_torch(images):
            raise RtposeError("predict_batch takes a list of images; call the pipeline for one image")
        self._timer.start()
        # with graph steps, host images go straight into the step's frame buffer (one pinned copy)
        prepared = self._prepare_all(list(images), upload=not self.graphs)
        return self._predict_prepared(prepared, select)

    def predict_on_boxes(self, image: Any, boxes_xyxy: Any, scores: Any = None) -> list[Person]:
        """Keypoints for given person boxes (M, 4) x1y1x2y2 in image pixels; scores (M,) default to 1."""
        return self.predict_on_boxes_batch([image], [boxes_xyxy], [scores])[0]

    def predict_on_boxes_batch(
        self, images: Sequence[Any], boxes: Sequence[Any], scores: Sequence[Any] | None = None
    ) -> list[list[Person]]:
        """`predict_on_boxes` for several images, all persons through the pose model together."""
        if scores is None:
            scores = [None] * len(boxes)
        if not len(images) == len(boxes) == len(scores):
            raise RtposeError(f"got {len(images)} images, {len(boxes)} box sets and {len(scores)} score sets")
        self._timer.start()
        checked = [check_image(image) for image in images]
        people = self._pose_graphed_on_boxes(checked, boxes, scores) if self.graphs else None
        if people is not None:
            self.last_timings = self._timer.snapshot()
            return people
        box_sets = [self._box_set(b, s) for b, s in zip(boxes, scores, strict=True)]
        with self._timer.stage("pre"):
            prepared = self._to_processing(checked)
        people = self._pose(prepared, box_sets)
        self.last_timings = self._timer.snapshot()
        return people

    def run(self, sources: SourceArg, progress: bool = True, batch_size: int = 1) -> Iterator[ImageResult]:
        """Pose of every person in every image the sources name; a bad item becomes that result's error.

        Files are decoded where the pipeline runs (on the GPU for a CUDA pipeline); `batch_size` images
        go through `predict_batch` together.
        """
        if self.detector is None:
            raise RtposeError("this TopDown pipeline has no detector (det=None): use predict_on_boxes")
        return run_batched(
            self._predict_decoded,
            sources,
            decode=self.decode_source,
            batch_size=batch_size,
            progress=progress,
        )

    def load_image(self, image: Any) -> Any:
        """An image (array, tensor or encoded bytes) decoded and placed where the pipeline processes it
        (a device tensor on a CUDA pipeline): calls given it skip decoding and uploading."""
        return self._prepare_all([image])[0]

    def decode_source(self, path: str | os.PathLike[str]) -> Any:
        """One image file decoded where the pipeline processes: a device tensor or a NumPy array."""
        if self.processing == "torch" and str(self.device).startswith("cuda"):
            from rtpose.decode.gpu import decode_image_gpu

            return decode_image_gpu(Path(path), device=self.device)
        from rtpose.decode.image import decode_image

        return decode_image(Path(path))

    # -- internals ----------------------------------------------------------------------------------
    def _predict_decoded(self, images: list[Any], decode_ms: float) -> list[list[Person]]:
        """`predict_batch` on images `run` has decoded already (its decoding time counted in)."""
        self._timer.start()
        self._timer.add("decode", decode_ms)
        with self._timer.stage("pre"):
            prepared = self._to_processing([check_image(image) for image in images])
        return self._predict_prepared(prepared)

    def _predict_prepared(self, images: list[Any], select: SelectBoxes | None = None) -> list[list[Person]]:
        assert self.detector is not None
        people = self._predict_graphed(images, select) if self.graphs else None
        if people is not None:
            self.last_timings = self._timer.snapshot()
            return people
        if self.graphs:  # the steps could not answer: images where the op-by-op path wants them
            with self._timer.stage("pre"):
                images = self._to_processing(images)
        found = self.detector.detect_batch(images, self._timer, graph=not self.graphs)  # tried above
        if select is not None:
            found = [
                self._box_set(*select(i, *_host_box_set(to_numpy(b), to_numpy(s))))
                for i, (b, s) in enumerate(found)
            ]
        people = self._pose(images, found)
        self.last_timings = self._timer.snapshot()
        return people

    def launch_detect(self, images: Sequence[Any]) -> LaunchedDetect | None:
        """Start the detector on these images and return at once (graph steps only; None where they do
        not run: then call `predict_batch` as usual). `predict_launched` finishes the call; the host may
        do other work meanwhile but no other call of this pipeline."""
        if self.detector is None or not self.graphs:
            return None
        if isinstance(images, np.ndarray | bytes) or is_torch(images):
            raise RtposeError("launch_detect takes a list of images")
        self._timer.start()
        prepared = self._prepare_all(list(images), upload=False)
        detect = self._start_detect(prepared)
        return LaunchedDetect(prepared, detect) if detect is not None else None

    def predict_launched(
        self, launched: LaunchedDetect, *, select: SelectBoxes | None = None
    ) -> list[list[Person]]:
        """`predict_batch(images, select=select)` for the images of a `launch_detect`."""
        people = self._predict_graphed(launched.images, select, launched=launched.step)
        if people is not None:
            self.last_timings = self._timer.snapshot()
            return people
        return self._predict_prepared(launched.images, select)

    def launch_pose_on_boxes(
        self, images: Sequence[Any], boxes: Sequence[Any], scores: Sequence[Any] | None = None
    ) -> LaunchedPose | None:
        """Start `predict_on_boxes_batch(images, boxes, scores)` and return at once (graph steps on
        images of one size only; None where they do not run: then call `predict_on_boxes_batch`).
        `predict_pose_launched` finishes it; the host may work meanwhile, but make no other call of this
        pipeline."""
        scores = [None] * len(boxes) if scores is None else scores
        if not self.graphs or len(images) != len(boxes) or len(boxes) != len(scores):
            return None
        checked = [check_image(image) for image in images]
        found = self._step_box_sets(checked, boxes, scores)
        if found is None or not any(len(b) for b, _ in found[1]):
            return None
        self._timer.start()
        return self._launch_on_box_sets(*found, checked)

    def pose_rows_launched(self, launched: LaunchedPose) -> tuple[np.ndarray, list[int]]:
        """The answer of a `launch_pose_on_boxes` as it comes from the GPU: rows (m, 5 + 3K) float32 of
        box, score and (x, y, score) per keypoint, and how many rows belong to each image
        (`types.people_from_rows` makes the people; a model server sends the rows instead)."""
        with self._timer.stage("infer"):
            rows = launched.rows.result()
        self.last_timings = self._timer.snapshot()
        return rows, launched.counts

    def predict_pose_launched(self, launched: LaunchedPose) -> list[list[Person]]:
        """The people of a `launch_pose_on_boxes`."""
        people = self._collect_pose(launched)
        self.last_timings = self._timer.snapshot()
        return people

    def _start_detect(self, images: list[Any]) -> Any:
        """The detector's graph step for these images, loaded and launched (None: no step runs them)."""
        assert self.detector is not None
        detect = self.detector.graph_step(images)
        if detect is not None:
            with self._timer.stage("pre"):
                detect.frames.load(images)
            detect.launch()
        return detect

    def _predict_graphed(
        self, images: list[Any], select: SelectBoxes | None, launched: Any = None
    ) -> list[list[Person]] | None:
        """Detector and pose stages as graph replays (None: the eager path must answer this call);
        launched: the detector step started on these images already (`launch_detect`)."""
        detect = launched or self._start_detect(images)
        if detect is None:
            return None
        with self._timer.stage("infer"):
            slots = detect.collect()
            if slots is None:
                return None
            n = slots.total
            if n == 0:
                return [[] for _ in images]
            if select is None:
                boxes, scores, index = slots.boxes[:n], slots.scores[:n], slots.image_index[:n]
                rows = self._pose_rows(detect.frames, boxes, scores, index)
            else:  # the boxes come to the host (one copy) to be chosen; the images stay loaded
                chosen = _chosen_box_sets(slots, select)
        if select is not None:
            return self._pose_graphed_host_boxes(detect.frames, chosen)
        if rows is None:
            return None
        with self._timer.stage("post"):
            return people_from_rows(rows, slots.counts)

    def launched_detections(self, launched: LaunchedDetect) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """The detections of a `launch_detect` on the host: (boxes (M_i, 4), scores (M_i,)) float32 per
        image (waits for the detector; None where its step cannot answer: then call `predict_batch`)."""
        slots = launched.step.collect()
        return None if slots is None else _chosen_box_sets(slots, lambda i, boxes, scores: (boxes, scores))

    def launch_pose_on_detections(self, launched: LaunchedDetect, select: SelectBoxes) -> LaunchedPose | None:
        """Go on with a `launch_detect`: wait for the detections, choose those to pose with
        `select(i, boxes, scores)` and start the pose step on them, on the frames the detector read (no
        second upload). `predict_pose_launched` ends it, as `predict_launched(select=)` would have. None
        where no step can run it; the detector's answer is used up, so call `predict_batch` then."""
        slots = launched.step.collect()
        if slots is None:
            return None
        chosen = _chosen_box_sets(slots, select)
        if not any(len(b) for b, _ in chosen):
            return LaunchedPose([0] * len(chosen), PendingRows(_no_rows()))
        return self._launch_pose_host_boxes(launched.step.frames, chosen)

    def _pose_rows(self, frames: Any, boxes: Any, scores: Any, image_index: Any) -> np.ndarray | None:
        """Rows of all persons (device tensors) on the images of `frames` (None: no step can run)."""
        pending = self._launch_pose_rows(frames, boxes, scores, image_index)
        return pending.result() if pending is not None else None

    def _launch_pose_rows(self, frames: Any, boxes: Any, scores: Any, image_index: Any) -> PendingRows | None:
        """Start the pose-step replays for all persons (device tensors) on the images of `frames`, in
        chunks of the engine's largest bucket, and the one copy of their rows to the host (None: no step
        can run)."""
        import torch

        from rtpose.pipelines import graphed

        n = int(boxes.shape[0])
        buckets = graphed.engine_buckets(self.pose_engine)
        largest = buckets[-1] if buckets else n
        network = graphed.graph_network(self.pose_engine) if self.graphs else None
        chunks = []
        for start in range(0, n, largest):
            stop = min(start + largest, n)
            bucket = graphed.step_bucket(buckets, stop - start)
            if network is None or bucket is None:
                return None
            step = self._pose_step(frames, bucket, network)
            if step is None:
                return None
            rows = step.run(boxes[start:stop], scores[start:stop], image_index[start:stop])
            chunks.append(rows.clone() if stop < n else rows)  # the next replay overwrites the buffer
        return PendingRows(torch.cat(chunks) if len(chunks) > 1 else chunks[0])

    def _pose_step(self, frames: Any, bucket: int, network: Any) -> Any:
        """The pose step of `bucket` persons on the images of `frames`, made on first use (None where its
        capture failed: the graphs are then off)."""
        from rtpose.pipelines import graphed

        if bucket not in frames.pose_steps:
            frames.pose_steps[bucket] = make_step(self, lambda: graphed.PoseStep(
                frames, network, self.pose_spec, bucket=bucket, bbox_padding=self.bbox_padding
            ))  # fmt: skip
        return frames.pose_steps[bucket]

    def _boxes_frames(self, key: tuple[int, int, int], now: bool = False) -> Any:
        """The frame buffer of (images, height, width) `key` for pose steps on given boxes (None while
        the shape is too new, see `graphed.StepCache`; now: made at once)."""
        from rtpose.pipelines import graphed

        if self._frames is None:
            self._frames = graphed.StepCache()
        return self._frames.get(
            key, lambda: graphed.FrameBuffer(*key, device=torch_device(self.device)), now=now
        )

    def prepare_graphs(
        self, height: int, width: int, batch_sizes: Sequence[int] = (1,), persons_per_image: int = 16
    ) -> int:
        """Capture now, instead of on their first calls, the CUDA-graph steps for images of (height,
        width) in batches of these sizes: the detector's step and, on its frame buffer and on the one for
        boxes given by the caller (tracking), the pose steps of every bucket up to `persons_per_image`
        persons per image. A video pipeline then runs at full speed from its first frames. Returns the
        number of steps made (0 where graphs are off; at most 4 batch sizes are kept, see `StepCache`)."""
        from rtpose.pipelines import graphed

        buckets = graphed.engine_buckets(self.pose_engine)
        network = graphed.graph_network(self.pose_engine) if self.graphs else None
        if network is None or not buckets:
            return 0
        made = 0
        for batch in batch_sizes:
            key = (int(batch), int(height), int(width))
            buffers = []
            detect = self.detector.graph_step_for(key, now=True) if self.detector is not None else None
            if detect is not None:
                buffers.append(detect.frames)
                made += 1
            buffers.append(self._boxes_frames(key, now=True))
            most = min(persons_per_image * key[0], buckets[-1])
            wanted = buckets[: next(i for i, b in enumerate(buckets) if b >= most) + 1]  # up to its bucket
            for frames in buffers:
                for bucket in wanted:
                    if not self.graphs or self._pose_step(frames, bucket, network) is None:
                        return made
                    made += 1
        return made

    def _pose_graphed_on_boxes(
        self, images: list[Any], boxes: Sequence[Any], scores: Sequence[Any]
    ) -> list[list[Person]] | None:
        """`predict_on_boxes_batch` through pose-step replays, for host boxes on images of one size."""
        found = self._step_box_sets(images, boxes, scores)
        if found is None:
            return None
        key, box_sets = found
        if not any(len(b) for b, _ in box_sets):
            return [[] for _ in images]
        launched = self._launch_on_box_sets(key, box_sets, images)
        return self._collect_pose(launched) if launched is not None else None

    def _step_box_sets(
        self, images: list[Any], boxes: Sequence[Any], scores: Sequence[Any]
    ) -> tuple[tuple[int, int, int], list[tuple[np.ndarray, np.ndarray]]] | None:
        """(images, height, width) and host (boxes, scores) per image for pose steps on given boxes;
        None where the steps cannot take them (images of several sizes, boxes on the device)."""
        from rtpose.pipelines import graphed

        key = graphed.uniform_key(images)
        if key is None or any(is_torch(b) for b in boxes):
            return None
        return key, [_host_box_set(b, s) for b, s in zip(boxes, scores, strict=True)]

    def _launch_on_box_sets(
        self, key: tuple[int, int, int], box_sets: list[tuple[np.ndarray, np.ndarray]], images: list[Any]
    ) -> LaunchedPose | None:
        """Load the images into the frame buffer of `key` and start the pose steps on these boxes (at
        least one); None while the shape is too new (it runs op by op)."""
        frames = self._boxes_frames(key)
        if frames is None:
            return None
        with self._timer.stage("pre"):
            frames.load(images)
        return self._launch_pose_host_boxes(frames, box_sets)

    def _pose_graphed_host_boxes(
        self, frames: Any, box_sets: list[tuple[np.ndarray, np.ndarray]]
    ) -> list[list[Person]] | None:
        """Pose-step replays on the images loaded in `frames` for host (boxes, scores) per image."""
        if not any(len(b) for b, _ in box_sets):
            return [[] for _ in box_sets]
        launched = self._launch_pose_host_boxes(frames, box_sets)
        return self._collect_pose(launched) if launched is not None else None

    def _collect_pose(self, launched: LaunchedPose) -> list[list[Person]]:
        """The people of a launched pose step (waits for its rows)."""
        with self._timer.stage("infer"):
            rows = launched.rows.result()
        with self._timer.stage("post"):
            return people_from_rows(rows, launched.counts)

    def _launch_pose_host_boxes(
        self, frames: Any, box_sets: list[tuple[np.ndarray, np.ndarray]]
    ) -> LaunchedPose | None:
        """Start the pose-step replays on the images loaded in `frames` for host (boxes, scores) per
        image (at least one box in all)."""
        from rtpose.preprocess.device_batch import to_device_async

        counts = [len(b) for b, _ in box_sets]
        with self._timer.stage("pre"):
            table = np.zeros((sum(counts), 6), np.float32)  # box, score, image index: one upload
            table[:, :4] = np.concatenate([b for b, _ in box_sets])
            table[:, 4] = np.concatenate([s for _, s in box_sets])
            table[:, 5] = np.repeat(np.arange(len(counts)), counts)
            uploaded = to_device_async(table, frames.device)
        with self._timer.stage("infer"):
            rows = self._launch_pose_rows(frames, uploaded[:, :4], uploaded[:, 4], uploaded[:, 5].long())
        return LaunchedPose(counts, rows) if rows is not None else None

    def _prepare_all(self, items: list[Any], upload: bool = True) -> list[Any]:
        """Decode encoded items, check the others, and move everything to where processing runs (with
        upload=False, host images stay on the host)."""
        encoded = [i for i, item in enumerate(items) if isinstance(item, ENCODED_TYPES)]
        for item in items:
            if isinstance(item, str | Path):
                raise ImageDecodeError("predict_batch takes images or encoded bytes; for files use run()")
        decoded: dict[int, Any] = {}
        if encoded:
            with self._timer.stage("decode"):
                if self.processing == "torch" and str(self.device).startswith("cuda"):
                    from rtpose.decode.gpu import decode_images_gpu

                    images = decode_images_gpu([items[i] for i in encoded], device=self.device)
                else:
                    from rtpose.decode.image import decode_image

                    images = [decode_image(bytes(items[i])) for i in encoded]
            decoded = dict(zip(encoded, images, strict=True))
        checked = [decoded[i] if i in decoded else check_image(item) for i, item in enumerate(items)]
        if not upload:
            return checked
        with self._timer.stage("pre"):
            return self._to_processing(checked)

    def _to_processing(self, images: list[Any]) -> list[Any]:
        """Images where processing happens: host arrays, or device tensors (host arrays in one upload)."""
        if self.processing != "torch":
            return [to_numpy(image) for image in images]
        import torch

        host = [i for i, image in enumerate(images) if not is_torch(image)]
        out = [image.to(self.device) if is_torch(image) else None for image in images]
        if host:
            from rtpose.decode.gpu import upload_images

            uploaded = upload_images([images[i] for i in host], self.device)
            for index, tensor in zip(host, uploaded, strict=True):
                out[index] = tensor
        return [torch.as_tensor(image) for image in out]

    def _box_set(self, boxes_xyxy: Any, scores: Any) -> tuple[Any, Any]:
        """Validated (boxes (M, 4), scores (M,)) of one image, in the processing's array kind."""
        count = _box_count(boxes_xyxy, scores)
        if self.processing == "torch":
            import torch

            boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32, device=self.device).reshape(count, 4)
            if scores is None:
                return boxes, torch.ones(count, device=self.device)
            return boxes, torch.as_tensor(scores, dtype=torch.float32, device=self.device)
        boxes = to_numpy(boxes_xyxy).astype(np.float64).reshape(count, 4)
        return boxes, (np.ones(count, np.float32) if scores is None else to_numpy(scores).astype(np.float32))

    def _pose(self, images: list[Any], box_sets: list[tuple[Any, Any]]) -> list[list[Person]]:
        counts = [int(boxes.shape[0]) for boxes, _ in box_sets]
        if sum(counts) == 0:
            return [[] for _ in images]
        if self.processing == "torch":
            rows = self._pose_torch(images, box_sets, counts)
        else:
            rows = self._pose_numpy(images, box_sets, counts)
        return people_from_rows(rows, counts)

    def _pose_numpy(
        self, images: list[np.ndarray], box_sets: list[tuple[Any, Any]], counts: list[int]
    ) -> Any:
        """The reference: cv2 crops per image, NumPy normalisation and decoding; rows as `_pack_rows`."""
        spec, input_size = self.pose_spec, self.pose_spec.input_size
        with self._timer.stage("pre"):
            # crop matrices in double precision, as OpenCV uses them
            boxes = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, 4) for b, _ in box_sets])
            scores = np.concatenate([np.asarray(s, dtype=np.float32).reshape(-1) for _, s in box_sets])
            matrices = boxes_to_affine_matrices(boxes, input_size, self.bbox_padding)
            inverse = invert_affine_matrices(matrices)
            crops = np.concatenate([
                warp_crops_numpy(image, matrices[start : start + count], input_size)
                for image, start, count in zip(images, np.cumsum([0, *counts[:-1]]), counts, strict=True)
            ])  # fmt: skip
        keypoint_chunks, score_chunks = [], []
        for start in range(0, len(boxes), self.max_batch):
            chunk = slice(start, start + self.max_batch)
            with self._timer.stage("pre"):
                batch = normalize_numpy(crops[chunk], spec.mean, spec.std, spec.channel_order)
            with self._timer.stage("infer"):
                outputs = outputs_as("numpy", run_engine(self.pose_engine, batch))
            with self._timer.stage("post"):
                keypoints, keypoint_scores = decode_pose(spec, outputs)
                keypoint_chunks.append(transform_points(keypoints, inverse[chunk]))
                score_chunks.append(keypoint_scores)
        with self._timer.stage("post"):
            return _pack_rows(
                np, boxes, scores, np.concatenate(keypoint_chunks), np.concatenate(score_chunks)
            )

    def _device_constants(self) -> tuple[Any, Any]:
        if self._constants is None:
            self._constants = normalization_tensors(self.pose_spec, self.device)
        return self._constants

    def _pose_torch(
        self, images: list[Any], box_sets: list[tuple[Any, Any]], counts: list[int]
    ) -> np.ndarray:
        """All persons of all images on the device; rows come back to the host in one copy."""
        import torch

        from rtpose.preprocess.device_batch import ImagePack, crop_normalize_torch

        spec, input_size = self.pose_spec, self.pose_spec.input_size
        mean, std = self._device_constants()
        with self._timer.stage("pre"):
            boxes = torch.cat([b.reshape(-1, 4) for b, _ in box_sets]).to(self.device, torch.float64)
            scores = torch.cat([s.reshape(-1) for _, s in box_sets]).to(self.device, torch.float32)
            matrices = boxes_to_affine_matrices(boxes, input_size, self.bbox_padding)
            inverse = invert_affine_matrices(matrices)
            pack = ImagePack(images)
            params = pack.crop_params(np.repeat(np.arange(len(images)), counts))
        keypoint_chunks, score_chunks = [], []
        total = int(boxes.shape[0])
        for start in range(0, total, self.max_batch):
            stop = min(start + self.max_batch, total)
            with self._timer.stage("pre"):
                rows = engine_input_rows(self.pose_engine, stop - start, (3, *input_size), self.device)
                batch = crop_normalize_torch(
                    pack, params[start:stop], matrices[start:stop], input_size, mean, std,
                    spec.channel_order, out=rows, inverse=inverse[start:stop],
                )  # fmt: skip
            with self._timer.stage("infer"):
                outputs = outputs_as("torch", self.pose_engine(batch), self.device)
            with self._timer.stage("post"):
                keypoints, keypoint_scores = decode_pose(spec, outputs)
                keypoint_chunks.append(transform_points(keypoints, inverse[start:stop]))
                score_chunks.append(keypoint_scores.to(torch.float32))
        with self._timer.stage("post"):
            rows = _pack_rows(torch, boxes, scores, torch.cat(keypoint_chunks), torch.cat(score_chunks))
            return rows.cpu().numpy()  # the one device-to-host copy


def _box_count(boxes_xyxy: Any, scores: Any) -> int:
    """M of one image's boxes (M, 4) and scores (M,) or None; a clear error for any other shape."""
    shape = tuple(np.shape(boxes_xyxy))
    if not (len(shape) == 2 and shape[1] == 4) and shape not in ((0,), (0, 0)):
        raise RtposeError(f"boxes must have shape (M, 4) as x1, y1, x2, y2; got {shape}")
    count = shape[0]
    if scores is not None and tuple(np.shape(scores)) != (count,):
        raise RtposeError(f"got {count} boxes but scores of shape {tuple(np.shape(scores))}")
    return count


def _chosen_box_sets(slots: Any, select: SelectBoxes) -> list[tuple[np.ndarray, np.ndarray]]:
    """The detections of a detector step's `PersonSlots` on the host (one copy), chosen per image by
    `select(i, boxes, scores)`."""
    import torch

    n = slots.total
    found = torch.cat([slots.boxes[:n], slots.scores[:n, None]], 1).cpu().numpy()
    per_image = np.split(found, np.cumsum(slots.counts)[:-1])
    return [_host_box_set(*select(i, f[:, :4], f[:, 4])) for i, f in enumerate(per_image)]


def _no_rows() -> Any:
    import torch

    return torch.zeros((0, 5), dtype=torch.float32)


def _host_box_set(boxes_xyxy: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated host (boxes (M, 4) float32, scores (M,) float32) of one image (scores default to 1)."""
    count = _box_count(boxes_xyxy, scores)
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(count, 4)
    return boxes, (np.ones(count, np.float32) if scores is None else to_numpy(scores).astype(np.float32))


def _pack_rows(xp: Any, boxes: Any, scores: Any, keypoints: Any, keypoint_scores: Any) -> Any:
    """One float32 row per person: box (4), score (1), then (x, y, score) per keypoint (K * 3)."""
    n = boxes.shape[0]
    as32 = (lambda a: np.asarray(a, np.float32)) if xp is np else (lambda a: a.to(xp.float32))
    cat = np.concatenate if xp is np else xp.cat
    keypoint_part = cat([as32(keypoints), as32(keypoint_scores)[..., None]], -1).reshape(n, -1)
    return cat([as32(boxes), as32(scores).reshape(n, 1), keypoint_part], 1)
