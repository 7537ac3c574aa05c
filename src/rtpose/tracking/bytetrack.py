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
from rtpose.postprocess.pose_nms import oks_iou, oks_matrix
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
    track_id: int
    mean: np.ndarray
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


class ByteTracker:
    """Assigns stable `track_id`s to the people of consecutive frames of one stream."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.kalman = BoxKalmanFilter()
        self.tracks: list[Track] = []
        self.frame_index = -1
        self._next_id = 1

    def reset(self) -> None:
        self.tracks.clear()
        self.frame_index = -1
        self._next_id = 1

    # -- one frame --------------------------------------------------------------------------------
    def update(self, people: list[Person]) -> list[Person]:
        """Track one frame: returns copies of the people that belong to confirmed tracks, with ids."""
        cfg = self.config
        self.frame_index += 1
        self._predict()
        scores = np.array([p.score for p in people], dtype=np.float64)
        high = [i for i in range(len(people)) if scores[i] >= cfg.high_thr]
        low = [i for i in range(len(people)) if cfg.low_thr <= scores[i] < cfg.high_thr]
        # person index -> its track; every matched track is corrected at the end of the frame, all at once
        # (no track is matched twice, and the matching of one stage never looks at another's tracks)
        assigned: dict[int, Track] = {}

        # 1) high-score people vs tracked + lost tracks (IoU, optionally fused with OKS)
        pool = [t for t in self.tracks if t.state in (TrackState.TRACKED, TrackState.LOST)]
        matched, rest_tracks, rest_high = self._associate(pool, people, high, cfg.match_cost, cfg.oks_weight)
        for track, index in matched:
            assigned[index] = track
        # 2) low-score people keep still-tracked tracks alive (IoU only: their poses are unreliable)
        still_tracked = [t for t in rest_tracks if t.state == TrackState.TRACKED]
        matched, unmatched_tracks, _ = self._associate(still_tracked, people, low, cfg.low_match_cost, 0.0)
        for track, index in matched:
            assigned[index] = track
        for track in unmatched_tracks:
            track.state = TrackState.LOST
        # 3) tentative tracks (seen once) vs remaining high-score people
        tentative = [t for t in self.tracks if t.state == TrackState.TENTATIVE]
        matched, dead, rest_high = self._associate(
            tentative, people, rest_high, cfg.tentative_match_cost, 0.0
        )
        for track, index in matched:
            track.track_id = self._take_id()
            assigned[index] = track
        removed = {id(t) for t in dead}
        self._correct([(track, people[index]) for index, track in assigned.items()])
        # 4) new tracks
        for index in rest_high:
            if scores[index] >= cfg.new_track_thr:
                assigned_track = self._start(people[index])
                if assigned_track.state == TrackState.TRACKED:
                    assigned[index] = assigned_track
        # 5) forget tracks lost for too long
        self.tracks = [
            t for t in self.tracks
            if id(t) not in removed
            and not (t.state == TrackState.LOST and self.frame_index - t.last_frame > cfg.track_buffer)
        ]  # fmt: skip
        return [with_track_id(people[i], assigned[i].track_id) for i in sorted(assigned)]

    def usable(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Which detections of the next frame `update` can use, as a boolean mask (see `UsableDetections`).
        The others are never reported: a pipeline need not compute their poses."""
        return self.usable_rule()(boxes, scores)

    def usable_rule(self) -> UsableDetections:
        """`usable` as a value taken now, for the next frame: it can be applied later or in another
        process (the video pipeline's model server) and gives the same mask."""
        cfg = self.config
        tracked = [t for t in self.tracks if t.state == TrackState.TRACKED]
        if tracked:
            predicted = np.array([t.mean for t in tracked]) @ self.kalman.transition.T  # as `_predict` does
            boxes = xyah_to_xyxy(predicted[:, :4])
        else:
            boxes = np.zeros((0, 4))
        return UsableDetections(boxes, cfg.high_thr, cfg.low_thr, cfg.low_match_cost)

    # -- internals --------------------------------------------------------------------------------
    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _predict(self) -> None:
        if not self.tracks:
            return
        means = np.array([t.mean for t in self.tracks])
        covariances = np.array([t.covariance for t in self.tracks])
        old_xy = means[:, :2].copy()
        means[[t.state != TrackState.TRACKED for t in self.tracks], 7] = 0.0  # a lost box keeps its size
        lost = np.array([[float(t.state == TrackState.LOST)] for t in self.tracks])
        shifts = np.array([t.shift for t in self.tracks])
        new_means, new_covariances = self.kalman.predict_many(means, covariances)
        # a lost track's pose stays where it was last seen: its shift accumulates over the frames
        new_shifts = new_means[:, :2] - old_xy + shifts * lost
        for track, mean, covariance, shift in zip(
            self.tracks, new_means, new_covariances, new_shifts, strict=True
        ):
            track.mean, track.covariance, track.shift = mean, covariance, shift

    def _similarity(self, tracks: list[Track], people: list[Person], oks_weight: float) -> np.ndarray:
        track_boxes = xyah_to_xyxy(np.array([t.mean[:4] for t in tracks]))
        person_boxes = np.array([p.bbox for p in people], dtype=np.float64).reshape(-1, 4)
        similarity = iou_matrix(track_boxes, person_boxes)
        if oks_weight <= 0.0:
            return similarity
        if self._oks_fused(similarity, tracks, people, person_boxes, oks_weight):
            return similarity
        for row, track in enumerate(tracks):
            if track.person.keypoints is None:
                continue
            moved = np.asarray(track.person.keypoints, dtype=np.float64) + track.shift
            for col, person in enumerate(people):
                if person.keypoints is None or len(person.keypoints) != len(moved):
                    continue
                box = person_boxes[col]
                area = max((box[2] - box[0]) * (box[3] - box[1]), 1.0)
                oks = float(oks_iou(moved, np.asarray(person.keypoints)[None], area, np.array([area]))[0])
                similarity[row, col] = (1 - oks_weight) * similarity[row, col] + oks_weight * oks
        return similarity

    @staticmethod
    def _oks_fused(
        similarity: np.ndarray,
        tracks: list[Track],
        people: list[Person],
        person_boxes: np.ndarray,
        weight: float,
    ) -> bool:
        """Fuse OKS into `similarity` in place as one matrix when all poses share one shape; False if not.

        Same numbers as the pair-by-pair loop: both sides are normalised by the new person's box area.
        """
        rows = [r for r, t in enumerate(tracks) if t.person.keypoints is not None]
        cols = [c for c, p in enumerate(people) if p.keypoints is not None]
        if not rows or not cols:
            return True
        moved = [np.asarray(tracks[r].person.keypoints, dtype=np.float64) + tracks[r].shift for r in rows]
        current = [np.asarray(people[c].keypoints) for c in cols]
        shape = moved[0].shape
        if len(shape) != 2 or any(m.shape != shape for m in moved) or any(k.shape != shape for k in current):
            return False
        boxes = person_boxes[cols]
        areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
        oks = oks_matrix(np.array(moved), np.array(current), areas[None, :], areas)
        block = np.ix_(rows, cols)
        similarity[block] = (1 - weight) * similarity[block] + weight * oks
        return True

    def _associate(
        self,
        tracks: list[Track],
        people: list[Person],
        indices: list[int],
        max_cost: float,
        oks_weight: float,
    ) -> tuple[list[tuple[Track, int]], list[Track], list[int]]:
        """(matched (track, person index) pairs, unmatched tracks, unmatched person indices)."""
        if not tracks or not indices:
            return [], list(tracks), list(indices)
        cost = 1.0 - self._similarity(tracks, [people[i] for i in indices], oks_weight)
        matches, free_rows, free_cols = linear_assignment(cost, max_cost)
        pairs = [(tracks[r], indices[c]) for r, c in matches]
        return pairs, [tracks[r] for r in free_rows], [indices[c] for c in free_cols]

    def _correct(self, pairs: list[tuple[Track, Person]]) -> None:
        """Kalman-correct each track with its person's box (one batched update) and mark it tracked."""
        if not pairs:
            return
        means, covariances = self.kalman.update_many(
            np.array([t.mean for t, _ in pairs]),
            np.array([t.covariance for t, _ in pairs]),
            xyxy_to_xyah(np.array([p.bbox for _, p in pairs])),
        )
        for (track, person), mean, covariance in zip(pairs, means, covariances, strict=True):
            track.mean, track.covariance = mean, covariance
            track.person = person
            track.state = TrackState.TRACKED
            track.last_frame = self.frame_index
            track.hits += 1
            track.shift = np.zeros(2)

    def _start(self, person: Person) -> Track:
        mean, covariance = self.kalman.initiate(xyxy_to_xyah(np.asarray(person.bbox)))
        first_frame = self.frame_index == 0
        track = Track(
            track_id=self._take_id() if first_frame else 0, mean=mean, covariance=covariance, person=person,
            state=TrackState.TRACKED if first_frame else TrackState.TENTATIVE,
            start_frame=self.frame_index, last_frame=self.frame_index,
        )  # fmt: skip
        self.tracks.append(track)
        return track
