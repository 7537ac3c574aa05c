"""Per-stream temporal logic of the video pipeline: when to detect, which boxes to pose, and what to
do with the poses (pose NMS -> tracking -> smoothing).

The model calls themselves are made by the pipeline (batched across streams); this class only keeps one
stream's state between its frames:

    boxes = state.plan(image_size)        # None: run the detector on this frame
    boxes = state.pose_candidates()(<detector boxes, scores>)   # on detector frames
    people = <pose model on these boxes>
    people = state.finish(people, time_s, detected=boxes is None)   # = follow(settle(...))

Between detection frames (every `det_interval` frames) the boxes come from the previous frame's
keypoints (`keypoint_boxes`). A propagated pose whose mean keypoint score falls below
`min_pose_score` is dropped: the person left or is hidden, and the next detection decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtpose.errors import RtposeError
from rtpose.postprocess.pose_nms import oks_nms
from rtpose.tracking.bytetrack import ByteTracker, TrackerConfig, UsableDetections
from rtpose.tracking.keypoint_boxes import boxes_from_people
from rtpose.tracking.one_euro import OneEuroParams, PoseSmoother
from rtpose.types import Person


@dataclass
class TemporalConfig:
    #: run the detector every N frames (1 = every frame)
    det_interval: int = 5
    #: also run it whenever the previous frame left no pose to follow
    detect_when_empty: bool = True
    kpt_thr: float = 0.3
    box_padding: float = 1.2
    min_keypoints: int = 3
    min_pose_score: float = 0.2
    #: OKS threshold of pose NMS (MMPose: 0.9); None disables it
    nms_thr: float | None = 0.9
    track: bool = True
    smooth: bool = True
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    one_euro: OneEuroParams = field(default_factory=OneEuroParams)

    def __post_init__(self) -> None:
        if self.det_interval < 1:
            raise RtposeError(f"det_interval must be at least 1, not {self.det_interval}")
        if self.smooth and not self.track:
            raise RtposeError("smoothing needs tracking (it filters per track id): disable both or neither")


def mean_keypoint_score(person: Person) -> float:
    if person.keypoint_scores is None or len(person.keypoint_scores) == 0:
        return 1.0
    return float(np.mean(person.keypoint_scores))


def mean_keypoint_scores(people: list[Person]) -> list[float]:
    """`mean_keypoint_score` of every person; one row-wise mean when all score arrays share shape and
    dtype (a mixed stack would be promoted, and a float32 mean taken in float64 differs)."""
    arrays = [p.keypoint_scores for p in people]
    first = arrays[0] if arrays else None
    if (
        not isinstance(first, np.ndarray)
        or first.ndim != 1
        or len(first) == 0
        or not all(
            isinstance(a, np.ndarray) and a.shape == first.shape and a.dtype == first.dtype for a in arrays
        )
    ):
        return [mean_keypoint_score(p) for p in people]
    return np.array(arrays).mean(axis=1).tolist()


def pose_nms(people: list[Person], thr: float, keypoint_means: list[float] | None = None) -> list[Person]:
    """People kept by greedy OKS-NMS (pose score = box score x mean keypoint score), in input order.

    keypoint_means: `mean_keypoint_scores(people)` where the caller has it already."""
    posed = [i for i, p in enumerate(people) if p.keypoints is not None]
    if len(posed) < 2:
        return people
    if keypoint_means is None:
        keypoint_means = mean_keypoint_scores([people[i] for i in posed])
    else:
        keypoint_means = [keypoint_means[i] for i in posed]
    keypoints = np.array([people[i].keypoints for i in posed], dtype=np.float64)
    boxes = np.array([people[i].bbox for i in posed], dtype=np.float64)
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0.0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    scores = np.array([people[i].score * m for i, m in zip(posed, keypoint_means, strict=True)])
    kept = oks_nms(keypoints, None, scores, areas, thr=thr)
    if len(kept) == len(posed):
        return people
    dropped = set(posed) - {posed[k] for k in kept.tolist()}
    return [p for i, p in enumerate(people) if i not in dropped]


@dataclass(frozen=True)
class PoseCandidates:
    """`(boxes (M, 4), scores (M,)) -> (boxes, scores)`: the detections that get a pose (see
    `StreamTemporalState.pose_candidates`); picklable."""

    usable: UsableDetections | None = None

    def __call__(self, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.usable is None or len(boxes) == 0:
            return boxes, scores
        keep = self.usable(boxes, scores)
        return boxes[keep], scores[keep]


class StreamTemporalState:
    """Everything one stream remembers between frames."""

    def __init__(self, config: TemporalConfig | None = None) -> None:
        self.config = config or TemporalConfig()
        self.tracker = ByteTracker(self.config.tracker) if self.config.track else None
        self.smoother = PoseSmoother(self.config.one_euro) if self.config.smooth else None
        self.frames_seen = 0
        self.detections_run = 0
        self._previous: list[Person] = []

    def plan(self, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """None when this frame needs the detector, else (boxes (M, 4), scores (M,)) from the last poses."""
        cfg = self.config
        if self.frames_seen % cfg.det_interval == 0:
            return None
        boxes, scores, _ = boxes_from_people(
            self._previous, kpt_thr=cfg.kpt_thr, padding=cfg.box_padding, min_keypoints=cfg.min_keypoints,
            image_size=image_size,
        )  # fmt: skip
        if len(boxes) == 0 and cfg.detect_when_empty:
            return None
        return boxes, scores

    def pose_candidates(self) -> PoseCandidates:
        """Which detections of this stream's next frame are worth a pose, as a value that can be applied
        later or in another process. With tracking, those the tracker can use (`ByteTracker.usable`): a
        low-score box far from every tracked person would be dropped after its pose was computed (on the
        street video about half the boxes). Without tracking, all."""
        return PoseCandidates(self.tracker.usable_rule() if self.tracker is not None else None)

    def finish(self, people: list[Person], time_s: float, *, detected: bool) -> list[Person]:
        """Post-process the poses of this stream's next frame; returns the people to report."""
        return self.follow(self.settle(people, detected=detected), time_s)

    def settle(self, people: list[Person], *, detected: bool) -> list[Person]:
        """The first half of `finish`: drop weak propagated poses, pose NMS, and remember the survivors
        for the next frame's boxes. After it, `plan` answers for the next frame already (tracking and
        smoothing do not change that answer), so its model call may start before `follow`."""
        cfg = self.config
        self.frames_seen += 1
        self.detections_run += int(detected)
        means = None  # mean keypoint scores, shared with pose NMS where already computed
        if not detected:
            means = mean_keypoint_scores(people)
            kept = [i for i, m in enumerate(means) if m >= cfg.min_pose_score]
            if len(kept) < len(people):
                people, means = [people[i] for i in kept], [means[i] for i in kept]
        if cfg.nms_thr is not None:
            people = pose_nms(people, cfg.nms_thr, means)
        # Every surviving pose is followed into the next frame, also those the tracker has not confirmed
        # yet (a person seen once must be seen again to get an id); unsmoothed, so boxes follow the
        # measurements.
        self._previous = people
        return people

    def follow(self, people: list[Person], time_s: float) -> list[Person]:
        """The second half of `finish`: tracking and smoothing of the settled people."""
        if self.tracker is not None:
            people = self.tracker.update(people)
        if self.smoother is not None:
            people = self.smoother(people, time_s)
        return people
