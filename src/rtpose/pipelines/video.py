"""`Pipeline`: pose estimation on many video sources at once, with tracking, smoothing and outputs.

    with Pipeline("rtmpose-t", "rtmdet-nano", out_dir="out", jsonl="poses.jsonl") as pipeline:
        pipeline.add_source("street.mp4")
        pipeline.add_source("rtsp://camera/stream")
        for result in pipeline:            # one FrameResult per frame, streams interleaved
            print(result.stream, result.frame, [p.track_id for p in result.people])

Per step, the frames waiting in the sources (at most one per stream, up to `batch_size` streams) form
one batch: the detector runs on those frames that need it this step (every `det_interval` frames of a
stream), then the pose model runs on the person boxes of every frame of the batch (with tracking, only
the detections the tracker can use: `StreamTemporalState.pose_candidates`). Each stream's own
`StreamTemporalState` then applies pose NMS, tracking and smoothing (`rtpose.tracking.temporal`).
Sources can be added and removed while iterating; one failing stream is logged and reported in
`pipeline.ended`, the others go on. Leaving the loop in any way (end, `break`, Ctrl-C, an exception)
closes every output, so MP4 and JSONL files are always complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import numpy as np

from rtpose.errors import RtposeError
from rtpose.sinks.draw import draw_people
from rtpose.sinks.json_out import JsonlWriter
from rtpose.sinks.video_writer import StreamVideoWriters
from rtpose.sources.stream_hub import Batch, Frame, ReconnectPolicy, StreamEnd, StreamHub, StreamStats
from rtpose.sources.video import DecodeMode
from rtpose.tracking.bytetrack import TrackerConfig
from rtpose.tracking.one_euro import OneEuroParams
from rtpose.tracking.temporal import StreamTemporalState, TemporalConfig
from rtpose.types import Person

logger = logging.getLogger("rtpose.video")

BoxesAndScores = tuple[np.ndarray, np.ndarray]
#: the detections of one frame that get a pose: (boxes, scores) -> (boxes, scores)
SelectRule = Callable[[np.ndarray, np.ndarray], BoxesAndScores]


class FramePoseModel(Protocol):
    """What the video pipeline needs from a top-down model: batched over the frames of one step. A model
    may also offer `detect_and_pose(images, candidates)` (see `TopDownFrameModel`) for steps where every
    frame needs the detector."""

    def detect(self, images: list[np.ndarray]) -> list[BoxesAndScores]:
        """Person boxes (M, 4) x1y1x2y2 and scores (M,) of every image."""
        ...

    def pose(
        self, images: list[np.ndarray], boxes: list[np.ndarray], scores: list[np.ndarray]
    ) -> list[list[Person]]:
        """People with keypoints for the given boxes of every image."""
        ...


class TopDownFrameModel:
    """`FramePoseModel` over a `TopDown` pipeline.

    Uses TopDown's batch-of-images methods where it has them (`detect_batch`, `predict_on_boxes_batch`:
    all persons of all frames of a step in one pose-engine call); otherwise calls it frame by frame.
    """

    def __init__(self, topdown: Any) -> None:
        if topdown.detector is None:
            raise RtposeError("the video pipeline needs a detector: build TopDown with det=...")
        self.topdown = topdown

    def detect(self, images: list[np.ndarray]) -> list[BoxesAndScores]:
        from rtpose.pipelines.processing import to_numpy

        batched = getattr(self.topdown.detector, "detect_batch", None)
        found = batched(images) if batched is not None else [self.topdown.detector.detect(i) for i in images]
        return [(to_numpy(b).astype(np.float32), to_numpy(s).astype(np.float32)) for b, s in found]

    @property
    def launches_ahead(self) -> bool:
        """Whether `launch_detect` can start anything (CUDA-graph steps); elsewhere the pipeline does not
        take frames early for it."""
        return bool(self.topdown.graphs)

    def launch_detect(self, images: list[np.ndarray]) -> Any:
        """Start the detector on frames that all need it and return at once (None where it cannot run
        ahead: CPU engines, shapes without graph steps yet); `detect_and_pose(..., launched=)` ends it."""
        return self.topdown.launch_detect(images)

    def detect_and_pose(
        self, images: list[np.ndarray], candidates: Sequence[SelectRule], launched: Any = None
    ) -> list[list[Person]]:
        """Both stages on frames that all need the detector: `candidates[i](boxes, scores)` chooses the
        detections of image i to pose, and the frames are uploaded once for both models. launched: what
        `launch_detect` gave for these very images."""

        def select(i: int, boxes: np.ndarray, scores: np.ndarray) -> BoxesAndScores:
            return candidates[i](boxes, scores)

        if launched is not None:
            return self.topdown.predict_launched(launched, select=select)
        return self.topdown.predict_batch(images, select=select)

    def launched_detections(self, launched: Any) -> list[BoxesAndScores] | None:
        """The detections of a `launch_detect` (waits; None: call `detect_and_pose` instead)."""
        return self.topdown.launched_detections(launched)

    def launch_pose_on_detections(self, launched: Any, candidates: Sequence[SelectRule]) -> Any:
        """Go on with a `launch_detect`: `candidates[i]` chooses the detections of image i, whose pose
        step starts on the frames the detector read; `pose_launched` ends it (None: the detector's answer
        is used up and the step cannot run; call `detect_and_pose` instead)."""
        return self.topdown.launch_pose_on_detections(launched, lambda i, b, s: candidates[i](b, s))

    def launch_pose(self, images: list[np.ndarray], boxes: list[np.ndarray], scores: list[np.ndarray]) -> Any:
        """Start `pose(images, boxes, scores)` and return at once (None where it cannot run ahead);
        `pose_launched` ends it."""
        return self.topdown.launch_pose_on_boxes(images, boxes, scores)

    def pose_launched(self, launched: Any) -> list[list[Person]]:
        """The people of a `launch_pose`."""
        return self.topdown.predict_pose_launched(launched)

    def rows_launched(self, launched: Any) -> tuple[np.ndarray, list[int]]:
        """The answer of a `launch_pose` as pose rows and rows per image (`types.people_from_rows`)."""
        return self.topdown.pose_rows_launched(launched)

    def twin(self) -> TopDownFrameModel:
        """The same models with pose steps of their own (`TopDown.twin`), for a second step in flight."""
        return TopDownFrameModel(self.topdown.twin())

    def prepare(self, height: int, width: int, batch_sizes: Sequence[int]) -> int:
        """Make the CUDA-graph steps for frames of this size now (`TopDown.prepare_graphs`)."""
        return int(self.topdown.prepare_graphs(height, width, batch_sizes))

    def pose(
        self, images: list[np.ndarray], boxes: list[np.ndarray], scores: list[np.ndarray]
    ) -> list[list[Person]]:
        batched = getattr(self.topdown, "predict_on_boxes_batch", None)
        if batched is not None:
            return batched(images, boxes, scores)
        return [
            self.topdown.predict_on_boxes(image, b, s) if len(b) else []
            for image, b, s in zip(images, boxes, scores, strict=True)
        ]


def model_build_options(**options: Any) -> dict[str, Any]:
    """The arguments of `build_frame_model` for the model a `Pipeline(**options)` would build (its
    defaults where not given): what a model server process needs to build the same one."""
    import inspect

    try:
        bound = inspect.signature(Pipeline.__init__).bind(None, **options)
    except TypeError as exc:
        raise RtposeError(f"not an option of the video pipeline: {exc}") from None
    bound.apply_defaults()
    args = bound.arguments
    build = {
        k: args[k] for k in ("pose", "det", "backend", "device", "precision", "pose_weights", "det_weights")
    }
    return {**build, "temporal": _temporal_config(**{k: args[k] for k in _TEMPORAL_OPTIONS})}


_TEMPORAL_OPTIONS = ("temporal", "det_interval", "track", "smooth", "kpt_thr", "one_euro", "tracker")


def _temporal_config(
    temporal: TemporalConfig | None, det_interval: int, track: bool, smooth: bool, kpt_thr: float,
    one_euro: OneEuroParams | None, tracker: TrackerConfig | None,
) -> TemporalConfig:  # fmt: skip
    return temporal or TemporalConfig(
        det_interval=det_interval, track=track, smooth=smooth and track, kpt_thr=kpt_thr,
        one_euro=one_euro or OneEuroParams(), tracker=tracker or TrackerConfig(),
    )  # fmt: skip


def build_frame_model(
    pose: str | os.PathLike[str],
    det: str | os.PathLike[str],
    temporal: TemporalConfig,
    *,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "fp32",
    pose_weights: str | os.PathLike[str] | None = None,
    det_weights: str | os.PathLike[str] | None = None,
) -> TopDownFrameModel:
    """The `TopDown` models of a video pipeline with these temporal settings."""
    from rtpose.pipelines.topdown import TopDown

    # with tracking, low-score boxes are wanted too: ByteTrack uses them to continue tracks
    det_score_thr = temporal.tracker.low_thr if temporal.track else None
    topdown = TopDown(  # its ONNX Runtime engines do not spin (see TopDown.__init__)
        pose, det, backend=backend, device=device, precision=precision, pose_weights=pose_weights,
        det_weights=det_weights, det_score_thr=det_score_thr,
    )  # fmt: skip
    return TopDownFrameModel(topdown)


def detect_and_pose(
    model: FramePoseModel, images: list[np.ndarray], candidates: Sequence[SelectRule], launched: Any = None
) -> list[list[Person]]:
    """Both stages on frames that all need the detector, `candidates[i]` choosing the detections of
    image i to pose: the model's own `detect_and_pose` where it has one (frames uploaded once; launched:
    its `launch_detect` of these images), else its `detect`, the choice, then its `pose`."""
    both = getattr(model, "detect_and_pose", None)
    if both is not None:
        return both(images, candidates, launched) if launched is not None else both(images, candidates)
    chosen = [rule(*found) for rule, found in zip(candidates, model.detect(images), strict=True)]
    return model.pose(images, [c[0] for c in chosen], [c[1] for c in chosen])


def run_step(
    model: FramePoseModel,
    images: list[np.ndarray],
    plans: Sequence[BoxesAndScores | None],
    states: Sequence[StreamTemporalState],
    launched: Any = None,
) -> list[list[Person]]:
    """The model calls of one step: image i has the boxes `plans[i]` from its stream's tracking, or None
    where the detector runs; the detections to pose are chosen by `states[i].pose_candidates()`.
    launched: what the model started for these images already: its `launch_detect` (every plan is then
    None) or its `launch_pose` on these very plans."""
    if all(plan is None for plan in plans):
        candidates = [state.pose_candidates() for state in states]
        return detect_and_pose(model, images, candidates, launched)
    if launched is not None:
        return model.pose_launched(launched)  # type: ignore[attr-defined]
    to_detect = [i for i, plan in enumerate(plans) if plan is None]
    boxes: list[BoxesAndScores | None] = list(plans)
    if to_detect:
        for i, found in zip(to_detect, model.detect([images[i] for i in to_detect]), strict=True):
            boxes[i] = states[i].pose_candidates()(*found)
    chosen = [b for b in boxes if b is not None]
    return model.pose(images, [b[0] for b in chosen], [b[1] for b in chosen])


class ModelGone(RtposeError):
    """The model can serve no more frames (its server process ended): the pipeline stops instead of
    failing every following frame one by one."""


@dataclass
class FrameResult:
    stream: str
    frame: int
    #: presentation time of the frame in its stream, seconds
    time: float
    people: list[Person]
    #: the decoded frame, BGR
    image: np.ndarray | None = None
    #: seconds from decoding to this result
    latency: float = 0.0
    #: whether the detector ran on this frame (else boxes came from the last poses)
    detected: bool = False
    error: str | None = None

    def to_json(self) -> dict:
        out: dict = {"stream": self.stream, "frame": self.frame, "time": round(self.time, 4),
                     "people": [p.to_json() for p in self.people]}  # fmt: skip
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class StreamRate:
    """Live numbers of one stream for status lines: results per second and latency (moving averages)."""

    frames: int = 0
    fps: float = 0.0
    latency: float = 0.0
    _last: float | None = field(default=None, repr=False)

    def add(self, latency: float, now: float, weight: float = 0.1) -> None:
        self.frames += 1
        self.latency = latency if self.frames == 1 else (1 - weight) * self.latency + weight * latency
        if self._last is not None and now > self._last:
            rate = 1.0 / (now - self._last)
            self.fps = rate if self.fps == 0 else (1 - weight) * self.fps + weight * rate
        self._last = now


class StreamRunner:
    """What `Pipeline` and `ProcessPipeline` share around their `results()` loop: iteration, `run`,
    `stop` (from any thread or a signal handler, see `stop_on_sigint`) and closing at the end of a `with`
    block."""

    ended: list[StreamEnd]

    def __init__(self) -> None:
        self._stop = threading.Event()

    def results(self) -> Iterator[FrameResult]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was asked for."""
        return self._stop.is_set()

    def stream_stats(self) -> dict[str, StreamStats]:
        """The readers' numbers of the streams still open (decoder, frames decoded and dropped, ...)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[FrameResult]:
        return self.results()

    def run(self) -> list[StreamEnd]:
        """Process every source to its end, writing the outputs; returns how each stream ended."""
        for _ in self.results():
            pass
        return self.ended

    def stop(self) -> None:
        """Ask a running `results()` loop to end after the current step."""
        self._stop.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Pipeline(StreamRunner):
    """Multi-stream pose pipeline (see the module docstring).

    model: any `FramePoseModel` (tests, custom engines); when None, a `TopDown(pose, det, backend=...,
    device=..., precision=..., pose_weights=..., det_weights=...)` is built. temporal: all temporal
    settings at once (else built from det_interval / track / smooth / one_euro / tracker).
    prepare_graphs: on the first frame of each size, make the model's CUDA-graph steps for it at once
    (one frame and all streams per step, every pose bucket) instead of on their first uses in the first
    seconds (off by default: on the H100 it gave +2-6%, within the noise of the runs).
    look_ahead: where the model can start its steps without waiting (`launch_detect`, `launch_pose`:
    CUDA-graph steps), the next step is started before this step's tracking, smoothing and results: its
    detector when every frame of it needs one (the detections to pose are still chosen after the
    tracking), or its pose model when every frame of it has boxes from the last poses (known before the
    tracking). The host work then overlaps the GPU work. Results are the same either way.
    """

    def __init__(
        self,
        pose: str | os.PathLike[str] = "rtmpose-t",
        det: str | os.PathLike[str] = "rtmdet-nano",
        *,
        model: FramePoseModel | None = None,
        backend: str = "auto",
        device: str = "cpu",
        precision: str = "fp32",
        pose_weights: str | os.PathLike[str] | None = None,
        det_weights: str | os.PathLike[str] | None = None,
        det_interval: int = 5,
        batch_size: int = 8,
        batch_timeout: float = 0.02,
        realtime: bool = False,
        queue_size: int = 8,
        decode: DecodeMode = "auto",
        track: bool = True,
        smooth: bool = True,
        one_euro: OneEuroParams | None = None,
        tracker: TrackerConfig | None = None,
        temporal: TemporalConfig | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        jsonl: str | os.PathLike[str] | None = None,
        kpt_thr: float = 0.3,
        reconnect: ReconnectPolicy | None = None,
        loop: bool = False,
        sources: Iterable[str | os.PathLike[str]] = (),
        prepare_graphs: bool = False,
        look_ahead: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise RtposeError(f"batch_size must be at least 1, not {batch_size}")
        if batch_timeout < 0:
            raise RtposeError(f"batch_timeout must be >= 0, not {batch_timeout}")
        self.temporal = _temporal_config(temporal, det_interval, track, smooth, kpt_thr, one_euro, tracker)
        if model is None:
            model = build_frame_model(
                pose, det, self.temporal, backend=backend, device=device, precision=precision,
                pose_weights=pose_weights, det_weights=det_weights,
            )  # fmt: skip
        self.model = model
        self.batch_size, self.batch_timeout = int(batch_size), float(batch_timeout)
        self.kpt_thr = kpt_thr
        self.hub = StreamHub(
            queue_size=queue_size, realtime=realtime, decode=decode, reconnect=reconnect, loop=loop
        )
        self.ended: list[StreamEnd] = []
        self.rates: dict[str, StreamRate] = {}
        self._states: dict[str, StreamTemporalState] = {}
        self._videos = StreamVideoWriters(out_dir) if out_dir is not None else None
        self._jsonl = JsonlWriter(jsonl) if jsonl is not None else None
        self._closed = False
        self.prepare_graphs = bool(prepare_graphs)
        self._prepared: set[tuple[int, ...]] = set()
        self.look_ahead = bool(look_ahead)
        self._ahead: Batch | None = None  # the next step's batch, taken from the hub early
        # its frames, their plans and the model's handle of the step started for them
        self._launched: tuple[list[Frame], list[BoxesAndScores | None], Any] | None = None
        #: steps started ahead, detector or pose (for tests and diagnostics)
        self.steps_ahead = 0
        for source in sources:
            self.add_source(source)

    # -- sources ----------------------------------------------------------------------------------
    def add_source(
        self,
        source: str | os.PathLike[str] | Iterable[np.ndarray],
        name: str | None = None,
        fps: float | None = None,
    ) -> str:
        """Start a file, image folder, camera ("0", "/dev/video0"), URL or iterable of BGR images; returns
        its stream name. Safe to call while iterating."""
        if self._closed:
            raise RtposeError("this pipeline is closed; create a new one")
        name = self.hub.add(source, name, fps)
        self.rates[name] = StreamRate()
        return name

    def remove_source(self, name: str) -> None:
        """Stop a stream while running; its outputs are finished and it is reported as removed."""
        self.hub.remove(name)

    @property
    def streams(self) -> list[str]:
        return self.hub.names()

    def stream_stats(self) -> dict[str, StreamStats]:
        return self.hub.stats()

    # -- running ----------------------------------------------------------------------------------
    def results(self, *, stop_when_idle: bool = True) -> Iterator[FrameResult]:
        """Results as they come. Ends when every stream has ended (stop_when_idle) or, for a service
        that adds sources later, runs until `close()` (stop_when_idle=False)."""
        try:
            while not self._closed and not self._stop.is_set():
                batch, self._ahead = self._ahead, None
                if batch is None:
                    batch = self.hub.next_batch(self.batch_size, self.batch_timeout)
                if batch is None:
                    if stop_when_idle:
                        break
                    time.sleep(0.05)
                    continue
                yield from self._process(batch)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the readers and finish every output file; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._drop_launched()
        reported = {end.stream for end in self.ended}
        ahead, self._ahead = self._ahead, None
        if ahead is not None:  # taken from the hub for a step that will not run: its ends still count
            not_run = {frame.stream for frame in ahead.frames}
            for end in ahead.ended:
                if end.stream in reported:
                    continue
                if end.stream in not_run:
                    end = StreamEnd(end.stream, "stopped", self.rates.get(end.stream, StreamRate()).frames)
                self._end_stream(end)
                reported.add(end.stream)
        for name in self.hub.names():  # still open (stopped, or the caller left the loop): say so
            if name not in reported:
                self._end_stream(StreamEnd(name, "stopped", self.rates.get(name, StreamRate()).frames))
        try:
            self.hub.close()
        finally:
            if self._videos is not None:
                self._videos.close()
            if self._jsonl is not None:
                self._jsonl.close()

    # -- one step ---------------------------------------------------------------------------------
    def _process(self, batch: Batch) -> Iterator[FrameResult]:
        results = self._infer(batch.frames) if batch.frames else []
        for result in results:
            self._emit(result)
            yield result
        for end in batch.ended:
            self._end_stream(end)

    def _infer(self, frames: list[Frame], ahead: bool = True) -> list[FrameResult]:
        if self.prepare_graphs:
            self._prepare(frames)
        launched = None
        if self._launched is not None and self._launched[0] is frames:
            (_, plans, launched), self._launched = self._launched, None
            self.steps_ahead += 1
        else:
            self._drop_launched()  # started for other frames (a frame of the step before failed)
            plans = self._plans(frames)
        states = [self._states[frame.stream] for frame in frames]
        try:
            people = run_step(self.model, [f.image for f in frames], plans, states, launched)
        except ModelGone:
            raise
        except Exception as exc:  # find the frame at fault: run each alone, so the others still get results
            if launched is not None:
                with contextlib.suppress(Exception):
                    launched.wait()  # its buffers are reused by the retries
            if len(frames) == 1:
                return [self._failed(frames[0], exc)]
            logger.debug("batch failed (%s); retrying frame by frame", exc)
            return [r for frame in frames for r in self._infer([frame], ahead=False)]
        settled = [
            state.settle(found, detected=plan is None)
            for state, plan, found in zip(states, plans, people, strict=True)
        ]
        if ahead:
            self._look_ahead()
        results = []
        now = time.monotonic()
        for frame, state, plan, found in zip(frames, states, plans, settled, strict=True):
            tracked = state.follow(found, frame.time)
            results.append(FrameResult(frame.stream, frame.index, frame.time, tracked, frame.image,
                                       now - frame.decoded_at, plan is None))  # fmt: skip
        return results

    def _plans(self, frames: list[Frame]) -> list[BoxesAndScores | None]:
        """Each frame's boxes from its stream's last poses, or None where the detector runs."""
        plans = []
        for frame in frames:
            state = self._states.get(frame.stream)
            if state is None:
                state = self._states[frame.stream] = StreamTemporalState(self.temporal)
            plans.append(state.plan(frame.image.shape[:2]))
        return plans

    def _look_ahead(self) -> None:
        """Take the next step's batch from the hub if it is complete already and start its model step:
        the detector when every frame of it needs one, the pose model when every frame has boxes from
        the poses just settled (see `StreamTemporalState.settle`)."""
        model = self.model
        launch_detect = getattr(model, "launch_detect", None)
        launch_pose = getattr(model, "launch_pose", None)
        if not self.look_ahead or self._ahead is not None or (launch_detect is None and launch_pose is None):
            return
        if not getattr(model, "launches_ahead", True):  # e.g. CPU engines: no frame is taken early
            return
        batch = self.hub.next_batch(self.batch_size, 0.0, partial=False)
        if batch is None or not (batch.frames or batch.ended):
            return
        self._ahead = batch
        if not batch.frames or len({frame.image.shape for frame in batch.frames}) != 1:
            return
        plans = self._plans(batch.frames)
        images = [frame.image for frame in batch.frames]
        try:
            if launch_detect is not None and all(plan is None for plan in plans):
                handle = launch_detect(images)
            elif launch_pose is not None and all(plan is not None for plan in plans):
                handle = launch_pose(images, [p[0] for p in plans], [p[1] for p in plans])  # type: ignore[index]
            else:
                return
        except Exception as exc:  # the step itself will run (and report) it the usual way
            logger.debug("could not start the next step early (%s)", exc)
            return
        if handle is not None:
            self._launched = (batch.frames, plans, handle)

    def _drop_launched(self) -> None:
        """Wait for a step started ahead whose answer is not wanted (its frame buffer is reused)."""
        if self._launched is not None:
            handle, self._launched = self._launched[2], None
            wait = getattr(handle, "wait", None)
            if wait is not None:
                wait()

    def _prepare(self, frames: list[Frame]) -> None:
        """The model's CUDA-graph steps for a frame size seen for the first time, made before its first
        step (`TopDownFrameModel.prepare`) for one frame and for the batch of all streams."""
        prepare = getattr(self.model, "prepare", None)
        for shape in {frame.image.shape[:2] for frame in frames} - self._prepared:
            self._prepared.add(shape)
            if prepare is None:
                continue
            began = time.monotonic()
            sizes = sorted({1, min(self.batch_size, max(1, len(self.rates)))})
            made = prepare(int(shape[0]), int(shape[1]), sizes)
            logger.info("prepared %d CUDA-graph steps for %dx%d frames in %.1f s", made, shape[1], shape[0],
                        time.monotonic() - began)  # fmt: skip

    def _failed(self, frame: Frame, exc: Exception) -> FrameResult:
        message = str(exc) if isinstance(exc, RtposeError) else f"internal error: {type(exc).__name__}: {exc}"
        logger.error("%s frame %d: %s", frame.stream, frame.index, message)
        state = self._states[frame.stream]
        state.frames_seen += 1
        return FrameResult(frame.stream, frame.index, frame.time, [], frame.image,
                           time.monotonic() - frame.decoded_at, error=message)  # fmt: skip

    def _emit(self, result: FrameResult) -> None:
        rate = self.rates.setdefault(result.stream, StreamRate())
        rate.add(result.latency, time.monotonic())
        if self._jsonl is not None:
            self._jsonl.write(result.to_json(), plain=True)  # FrameResult.to_json gives plain JSON types
        if self._videos is not None and result.image is not None:
            canvas = draw_people(result.image, result.people, kpt_thr=self.kpt_thr)
            fps = self.hub.stats().get(result.stream)
            self._videos.write(result.stream, canvas, fps.fps if fps is not None else 30.0)

    def _end_stream(self, end: StreamEnd) -> None:
        self.ended.append(end)
        self._states.pop(end.stream, None)
        if self._videos is not None:
            self._videos.close_stream(end.stream)
        if end.error is not None:
            logger.warning("%s: %s after %d frames: %s", end.stream, end.reason, end.frames, end.error)


@contextlib.contextmanager
def stop_on_sigint(pipeline: StreamRunner) -> Iterator[None]:
    """Within the block, a first Ctrl-C ends the pipeline cleanly after the frame in hand (every output
    then holds exactly the same frames); a second one interrupts at once (KeyboardInterrupt, outputs still
    closed). Only in the main thread; elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if pipeline.stopping:
            raise KeyboardInterrupt
        logger.warning("interrupted: finishing the outputs (Ctrl-C again to stop at once)")
        pipeline.stop()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
