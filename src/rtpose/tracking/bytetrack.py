"""Multi-person tracking: ByteTrack's two-stage association with a Kalman box motion model.

Why ByteTrack: it keeps low-score detections (a person half hidden behind another) and uses them to
continue existing tracks instead of throwing them away, which is what keeps identities through
crossings and short occlusions. Per frame:

1. predict every track's box one frame ahead (constant velocity);
2. match high-score people (score >= high_thr) to tracked and recently lost tracks by IoU, optionally
   fused with OKS between the track's last pose (moved with the predicted motion) and the new pose;
3. match the remaining tracked tracks to low-score people (low_thr <= score < high_thr) by IoU alone;
4. tracks still unmatched become "lost" and are kept for `track_buffer` frames, so a person who
   reappears within that time gets the same id back;
5. unmatched high-score people start tentative tracks, which get an id once seen on two consecutive
   frames (on the very first frame they get one at once), so a single false detection never takes one.

The assignment is exact (`matching.linear_assignment`), not greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from rtpose.errors import RtposeError
from rtpose.postprocess.pose_nms import COCO_SIGMAS, oks_matrix
from rtpose.tracking.kalman import BoxKalmanFilter, xyah_to_xyxy, xyxy_to_xyah
from rtpose.tracking.matching import iou_matrix, linear_assignment
from rtpose.tracking.people import with_track_id
from rtpose.types import Person


class TrackState(Enum):
    TENTATIVE = "tentative"
    TRACKED = "tracked"
    LOST = "lost"


@dataclass
class TrackerConfig:
    """ByteTrack settings; thresholds on `Person.score`, match thresholds on cost = 1 - similarity.

    The score thresholds are lower than ByteTrack's (0.5 / 0.1 / 0.6, tuned for YOLOX on MOT17):
    RTMDet-nano person scores rarely exceed 0.6 on small, distant people (0.58 at best on the street
    video), and its top-down threshold is 0.3.
    """

    high_thr: float = 0.4
    low_thr: float = 0.2
    new_track_thr: float = 0.45
    match_cost: float = 0.8
    low_match_cost: float = 0.5
    tentative_match_cost: float = 0.7
    #: frames a lost track is remembered
    track_buffer: int = 30
    #: weight of OKS in the similarity (0 = IoU only); used only where both sides have keypoints
    oks_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_thr <= self.high_thr:
            raise RtposeError(f"tracker: need 0 <= low_thr <= high_thr, got {self.low_thr}, {self.high_thr}")
        if self.track_buffer < 0:
            raise RtposeError(f"tracker: track_buffer must be >= 0, got {self.track_buffer}")
        if not 0.0 <= self.oks_weight <= 1.0:
            raise RtposeError(f"tracker: oks_weight must be in [0, 1], got {self.oks_weight}")


@dataclass
class Track:
    """A snapshot of one track (`ByteTracker.tracks`); the tracker itself keeps its tracks as arrays."""

    track_id: int
    mean: np.ndarray
    #: (4, 3) per box coordinate: var(position), cov(position, velocity), var(velocity)
    covariance: np.ndarray
    person: Person
    state: TrackState
    start_frame: int
    last_frame: int
    hits: int = 1
    #: centre shift predicted for this frame (applied to the last pose for OKS)
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))

    @property
    def box(self) -> np.ndarray:
        """The predicted (or last corrected) box, x1y1x2y2."""
        return xyah_to_xyxy(self.mean[:4])


@dataclass(frozen=True)
class UsableDetections:
    """The detections ByteTrack's `update` can use on a frame, as a mask: every high-score one, and the
    low-score ones that overlap the predicted box of a tracked track enough for the low-score match
    (step 3 of the module docstring, taken over all tracked tracks, so a superset)."""

    #: predicted boxes (K, 4) x1y1x2y2 of the tracked tracks
    predicted: np.ndarray
    high_thr: float
    low_thr: float
    low_match_cost: float

    def __call__(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        usable = scores >= self.high_thr
        low = np.flatnonzero((scores >= self.low_thr) & ~usable)
        if len(low) == 0 or len(self.predicted) == 0:
            return usable
        similarity = iou_matrix(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[low], self.predicted)
        usable[low] = (1.0 - similarity.max(axis=1)) <= self.low_match_cost + 1e-9
        return usable


_STATES = (TrackState.TENTATIVE, TrackState.TRACKED, TrackState.LOST)
_TENTATIVE, _TRACKED, _LOST = range(3)  # codes of `_STATES` in the tracker's state array


def _is_coco_pose(keypoints: np.ndarray | None) -> bool:
    return keypoints is not None and np.shape(keypoints) == (len(COCO_SIGMAS), 2)


class ByteTracker:
    """Assigns stable `track_id`s to the people of consecutive frames of one stream.

    The tracks live in parallel arrays (ids, states, Kalman means and covariance blocks, shifts, frame
    counters; one row per track, oldest first) plus the list of each track's last person: a frame is a
    few dozen array operations whatever the number of people, where track objects cost a conversion to
    arrays and back at every step (this runs on a video worker's main thread, once per frame).
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.kalman = BoxKalmanFilter()
        self.reset()

    def reset(self) -> None:
        self.frame_index = -1
        self._next_id = 1
        self._ids = np.zeros(0, np.int64)
        self._states = np.zeros(0, np.int8)
        self._means = np.zeros((0, 8))
        self._covariances = np.zeros((0, 4, 3))
        self._shifts = np.zeros((0, 2))
        self._start_frames = np.zeros(0, np.int64)
        self._last_frames = np.zeros(0, np.int64)
        self._hits = np.zeros(0, np.int64)
        self._people: list[Person] = []

    @property
    def tracks(self) -> list[Track]:
        """Every track (tentative, tracked and lost), oldest first, as snapshots."""
        return [self._snapshot(i) for i in range(len(self._ids))]

    def _snapshot(self, row: int) -> Track:
        return Track(
            track_id=int(self._ids[row]), mean=self._means[row].copy(),
            covariance=self._covariances[row].copy(), person=self._people[row],
            state=_STATES[self._states[row]], start_frame=int(self._start_frames[row]),
            last_frame=int(self._last_frames[row]), hits=int(self._hits[row]), shift=self._shifts[row].copy(),
        )  # fmt: skip

    # -- one frame --------------------------------------------------------------------------------
    def update(self, people: list[Person]) -> list[Person]:
        """Track one frame: returns copies of the people that belong to confirmed tracks, with ids."""
        cfg = self.config
        self.frame_index += 1
        self._predict()
        scores = np.fromiter((p.score for p in people), np.float64, len(people))
        boxes = np.array([p.bbox for p in people], dtype=np.float64).reshape(-1, 4)
        is_high = scores >= cfg.high_thr
        high, low = np.flatnonzero(is_high), np.flatnonzero((scores >= cfg.low_thr) & ~is_high)
        track_boxes = xyah_to_xyxy(self._means[:, :4])
        states = self._states

        def associate(tracks: np.ndarray, indices: np.ndarray, max_cost: float, oks_weight: float = 0.0):
            if len(tracks) == 0 or len(indices) == 0:
                return np.zeros((0, 2), np.int64), tracks, indices
            similarity = iou_matrix(track_boxes[tracks], boxes[indices])
            if oks_weight > 0.0:
                self._fuse_oks(similarity, tracks, [people[i] for i in indices], boxes[indices], oks_weight)
            matches, free_rows, free_cols = linear_assignment(1.0 - similarity, max_cost)
            return (
                np.stack([tracks[matches[:, 0]], indices[matches[:, 1]]], axis=1),
                tracks[free_rows],
                indices[free_cols],
            )

        # 1) high-score people vs tracked + lost tracks (IoU, optionally fused with OKS)
        matched, rest_tracks, rest_high = associate(
            np.flatnonzero(states != _TENTATIVE), high, cfg.match_cost, cfg.oks_weight
        )
        # 2) low-score people keep still-tracked tracks alive (IoU only: their poses are unreliable)
        still_tracked = rest_tracks[states[rest_tracks] == _TRACKED]
        matched_low, unmatched_tracks, _ = associate(still_tracked, low, cfg.low_match_cost)
        states[unmatched_tracks] = _LOST
        # 3) tentative tracks (seen once) vs remaining high-score people; the matched ones get ids
        matched_new, dead, rest_high = associate(
            np.flatnonzero(states == _TENTATIVE), rest_high, cfg.tentative_match_cost
        )
        self._ids[matched_new[:, 0]] = self._take_ids(len(matched_new))
        # every matched track is corrected at once (no track is matched twice, and the matching of one
        # stage never looks at another's tracks)
        pairs = np.concatenate([matched, matched_low, matched_new])
        self._correct(pairs[:, 0], pairs[:, 1], boxes, people)
        reported = dict(zip(pairs[:, 1].tolist(), self._ids[pairs[:, 0]].tolist(), strict=True))
        # 5) forget dead tentative tracks and tracks lost for too long (before 4 appends new rows)
        forget = (states == _LOST) & (self.frame_index - self._last_frames > cfg.track_buffer)
        forget[dead] = True
        if forget.any():
            self._keep_rows(~forget)
        # 4) new tracks
        fresh = rest_high[scores[rest_high] >= cfg.new_track_thr]
        if len(fresh):
            first_frame = self.frame_index == 0
            ids = self._take_ids(len(fresh)) if first_frame else np.zeros(len(fresh), np.int64)
            self._start(fresh, boxes, people, ids, _TRACKED if first_frame else _TENTATIVE)
            if first_frame:
                reported.update(zip(fresh.tolist(), ids.tolist(), strict=True))
        return [with_track_id(people[i], reported[i]) for i in sorted(reported)]

    def usable(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Which detections of the next frame `update` can use, as a boolean mask (see `UsableDetections`).
        The others are never reported: a pipeline need not compute their poses."""
        return self.usable_rule()(boxes, scores)

    def usable_rule(self) -> UsableDetections:
        """`usable` as a value taken now, for the next frame: it can be applied later or in another
        process (the video pipeline's model server) and gives the same mask."""
        cfg = self.config
        predicted = self.kalman.predict_means(self._means[self._states == _TRACKED])  # as `_predict` does
        return UsableDetections(xyah_to_xyxy(predicted[:, :4]), cfg.high_thr, cfg.low_thr, cfg.low_match_cost)

    # -- internals --------------------------------------------------------------------------------
    def _take_ids(self, count: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + count, dtype=np.int64)
        self._next_id += count
        return ids

    def _predict(self) -> None:
        if len(self._ids) == 0:
            return
        means = self._means
        means[self._states != _TRACKED, 7] = 0.0  # a lost box keeps its size
        old_xy = means[:, :2].copy()
        self._means, self._covariances = self.kalman.predict_many(means, self._covariances)
        # a lost track's pose stays where it was last seen: its shift accumulates over the frames
        lost = (self._states == _LOST)[:, None]
        self._shifts = self._means[:, :2] - old_xy + self._shifts * lost

    def _fuse_oks(
        self, similarity: np.ndarray, tracks: np.ndarray, people: list[Person], person_boxes: np.ndarray,
        weight: float,
    ) -> None:  # fmt: skip
        """Fuse OKS between each track's last pose (moved by its predicted shift) and each new pose into
        `similarity` in place, both sides normalised by the new person's box area. Only COCO poses have
        the per-keypoint sigmas OKS needs: pairs with another layout (or no keypoints) keep their IoU."""
        rows = [r for r, t in enumerate(tracks.tolist()) if _is_coco_pose(self._people[t].keypoints)]
        cols = [c for c, p in enumerate(people) if _is_coco_pose(p.keypoints)]
        if not rows or not cols:
            return
        moved = np.array([self._people[tracks[r]].keypoints for r in rows], dtype=np.float64)
        moved += self._shifts[tracks[rows]][:, None, :]
        boxes = person_boxes[cols]
        areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
        oks = oks_matrix(moved, np.array([people[c].keypoints for c in cols]), areas[None, :], areas)
        block = np.ix_(rows, cols)
        similarity[block] = (1 - weight) * similarity[block] + weight * oks

    def _correct(
        self, tracks: np.ndarray, indices: np.ndarray, boxes: np.ndarray, people: list[Person]
    ) -> None:
        """Kalman-correct each matched track with its person's box (one batched update), mark it tracked."""
        if len(tracks) == 0:
            return
        self._means[tracks], self._covariances[tracks] = self.kalman.update_many(
            self._means[tracks], self._covariances[tracks], xyxy_to_xyah(boxes[indices])
        )
        self._states[tracks] = _TRACKED
        self._last_frames[tracks] = self.frame_index
        self._hits[tracks] += 1
        self._shifts[tracks] = 0.0
        for track, index in zip(tracks.tolist(), indices.tolist(), strict=True):
            self._people[track] = people[index]

    def _start(
        self, indices: np.ndarray, boxes: np.ndarray, people: list[Person], ids: np.ndarray, state: int
    ) -> None:
        """New tracks (rows appended at the end) for these people."""
        means, covariances = self.kalman.initiate_many(xyxy_to_xyah(boxes[indices]))
        count = len(indices)
        frames = np.full(count, self.frame_index, np.int64)
        self._ids = np.concatenate([self._ids, ids])
        self._states = np.concatenate([self._states, np.full(count, state, np.int8)])
        self._means = np.concatenate([self._means, means])
        self._covariances = np.concatenate([self._covariances, covariances])
        self._shifts = np.concatenate([self._shifts, np.zeros((count, 2))])
        self._start_frames = np.concatenate([self._start_frames, frames])
        self._last_frames = np.concatenate([self._last_frames, frames])
        self._hits = np.concatenate([self._hits, np.ones(count, np.int64)])
        self._people.extend(people[i] for i in indices.tolist())

    def _keep_rows(self, keep: np.ndarray) -> None:
        self._ids, self._states, self._means = self._ids[keep], self._states[keep], self._means[keep]
        self._covariances, self._shifts = self._covariances[keep], self._shifts[keep]
        self._start_frames, self._last_frames = self._start_frames[keep], self._last_frames[keep]
        self._hits = self._hits[keep]
        self._people = [p for p, k in zip(self._people, keep.tolist(), strict=True) if k]
