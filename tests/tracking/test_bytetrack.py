"""ByteTracker on scripted scenes: crossings, occlusions, reappearance, false detections."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from rtpose.errors import RtposeError
from rtpose.postprocess.pose_nms import oks_iou
from rtpose.tracking.bytetrack import ByteTracker, TrackerConfig
from rtpose.tracking.matching import iou_matrix
from rtpose.types import Person


def _person(x: float, y: float, score: float = 0.9, w: float = 40.0, h: float = 100.0) -> Person:
    return Person(np.array([x, y, x + w, y + h], np.float32), score)


def _ids_by_label(tracker: ByteTracker, labelled: list[tuple[str, Person]]) -> dict[str, int | None]:
    """Track one frame; which id each labelled person got (None: not reported)."""
    out = tracker.update([p for _, p in labelled])
    by_box = {tuple(p.bbox.tolist()): p.track_id for p in out}
    return {label: by_box.get(tuple(p.bbox.tolist())) for label, p in labelled}


def test_ids_survive_a_crossing_with_occlusion() -> None:
    """A walks right, B walks left in front of... behind A: while they overlap B is barely visible
    (low score) and for three frames not detected at all."""
    tracker = ByteTracker()
    history: dict[str, set[int | None]] = {"A": set(), "B": set()}
    after_crossing: dict[str, int | None] = {}
    for t in range(60):
        ax, bx = 20 + 4.0 * t, 260 - 4.0 * t
        frame = [("A", _person(ax, 50))]
        overlap = abs(ax - bx) < 40
        if not overlap:
            frame.append(("B", _person(bx, 55)))
        elif abs(ax - bx) >= 12:  # partly hidden: a low-score detection
            frame.append(("B", _person(bx, 55, score=0.3)))
        # else: fully hidden, no detection
        ids = _ids_by_label(tracker, frame)
        for label, track_id in ids.items():
            if t > 0:
                history[label].add(track_id)
        if t == 59:
            after_crossing = ids
    # A is reported on every frame with one id; B with one id (a low-score detection the tracker
    # cannot place yet may go unreported, never under another id)
    assert len(history["A"]) == 1 and None not in history["A"]
    ids_b = history["B"] - {None}
    assert len(ids_b) == 1 and ids_b != history["A"]
    assert after_crossing["B"] in ids_b and after_crossing["A"] in history["A"]


def test_short_absence_keeps_the_id_long_absence_does_not() -> None:
    tracker = ByteTracker(TrackerConfig(track_buffer=10))
    first = _ids_by_label(tracker, [("P", _person(100, 100))])["P"]
    for _ in range(3):
        _ids_by_label(tracker, [("P", _person(100, 100))])
    for _ in range(5):  # gone for 5 frames (< buffer)
        tracker.update([])
    assert _ids_by_label(tracker, [("P", _person(101, 100))])["P"] == first
    for _ in range(15):  # gone for longer than the buffer
        tracker.update([])
    tracker.update([_person(100, 100)])  # seen again: tentative first
    again = _ids_by_label(tracker, [("P", _person(100, 100))])["P"]
    assert again is not None and again != first


def test_a_single_false_detection_gets_no_id_and_low_scores_start_nothing() -> None:
    tracker = ByteTracker()
    tracker.update([_person(0, 0)])
    out = tracker.update([_person(0, 0), _person(300, 300)])  # new person appears once
    assert [p.track_id for p in out] == [1]
    out = tracker.update([_person(0, 0)])
    out = tracker.update([_person(0, 0), _person(500, 0, score=0.3)])  # low score never starts a track
    out = tracker.update([_person(0, 0), _person(500, 0, score=0.3)])
    assert [p.track_id for p in out] == [1]
    out = tracker.update([_person(0, 0), _person(300, 300)])
    out = tracker.update([_person(0, 0), _person(302, 300)])  # seen twice in a row: confirmed
    assert sorted(p.track_id for p in out) == [1, 2]


def test_oks_term_separates_overlapping_boxes() -> None:
    """Two people with the same box but different poses: OKS decides who is who."""
    rng = np.random.default_rng(0)
    pose_a = rng.uniform(0, 100, (17, 2)).astype(np.float32)
    pose_b = rng.uniform(0, 100, (17, 2)).astype(np.float32)
    box = np.array([0, 0, 100, 100], np.float32)
    tracker = ByteTracker(TrackerConfig(oks_weight=0.5))
    out = tracker.update([Person(box, 0.9, pose_a), Person(box + 1, 0.9, pose_b)])
    ids = {round(float(p.keypoints[0, 0])): p.track_id for p in out}
    for _ in range(3):  # the boxes swap their order and jitter; the poses stay with their people
        out = tracker.update([Person(box + 1, 0.9, pose_b + 0.5), Person(box, 0.9, pose_a - 0.5)])
    got = {round(float(p.keypoints[0, 0] - (0.5 if p.track_id == ids[round(float(pose_b[0, 0]))] else -0.5))):
           p.track_id for p in out}  # fmt: skip
    assert got == ids


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(RtposeError, match="low_thr"):
        TrackerConfig(low_thr=0.6, high_thr=0.5)
    with pytest.raises(RtposeError, match="oks_weight"):
        TrackerConfig(oks_weight=2.0)


def _random_frames(seed: int, frames: int = 60, n: int = 10) -> list[list[Person]]:
    """People wandering about and overlapping, with varied scores, some leaving and coming back."""
    rng = np.random.default_rng(seed)
    position = rng.uniform(0, 500, (n, 2))
    velocity = rng.normal(0, 6, (n, 2))
    out = []
    for _ in range(frames):
        position += velocity + rng.normal(0, 2, (n, 2))
        present = rng.random(n) > 0.1
        people = []
        for i in np.flatnonzero(present):
            box = np.concatenate([position[i], position[i] + [40, 100]]).astype(np.float32)
            keypoints = (np.linspace(box[:2], box[2:], 17) + rng.normal(0, 2, (17, 2))).astype(np.float32)
            people.append(Person(box, float(rng.uniform(0.1, 0.95)), keypoints, np.full(17, 0.9, np.float32)))
        out.append(people)
    return out


def _relayout(person: Person, kind: int) -> Person:
    """kind 0: the first 5 keypoints only; 1: no keypoints; 2: unchanged."""
    if kind == 0:
        return Person(person.bbox, person.score, person.keypoints[:5], person.keypoint_scores[:5])
    return Person(person.bbox, person.score) if kind == 1 else person


def test_oks_fusion_equals_pairwise_oks_and_leaves_other_layouts_to_iou() -> None:
    """The similarity `update` matches on, against OKS written out pair by pair (`oks_iou`, both sides
    normalised by the new person's box area), on wandering people; poses of another keypoint layout, or
    none, keep their plain IoU (OKS has sigmas for COCO's 17 keypoints only) instead of failing."""
    weight = 0.5
    tracker = ByteTracker(TrackerConfig(oks_weight=weight))
    frames = _random_frames(5, frames=30)
    checked = 0
    for index, people in enumerate(frames):
        if index % 3 == 1:  # some people with a 5-keypoint layout, some without keypoints
            people = [_relayout(p, i % 3) for i, p in enumerate(people)]
        tracks = np.arange(len(tracker.tracks))
        if len(tracks) and people:
            boxes = np.array([p.bbox for p in people], np.float64)
            track_boxes = np.array([t.box for t in tracker.tracks])
            got = iou_matrix(track_boxes, boxes)
            tracker._fuse_oks(got, tracks, people, boxes, weight)
            want = iou_matrix(track_boxes, boxes)
            for row, track in enumerate(tracker.tracks):
                for col, person in enumerate(people):
                    mine = track.person.keypoints
                    if (
                        mine is None
                        or person.keypoints is None
                        or len(mine) != 17
                        or len(person.keypoints) != 17
                    ):
                        continue
                    area = max((boxes[col, 2] - boxes[col, 0]) * (boxes[col, 3] - boxes[col, 1]), 1.0)
                    moved = np.asarray(mine, np.float64) + track.shift
                    oks = float(oks_iou(moved, np.asarray(person.keypoints)[None], area, np.array([area]))[0])
                    want[row, col] = (1 - weight) * want[row, col] + weight * oks
                    checked += 1
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        tracker.update(people)
    assert checked > 200


def test_usable_keeps_high_scores_and_low_scores_near_tracked_people() -> None:
    tracker = ByteTracker()
    boxes = np.array([[0, 0, 40, 100], [300, 0, 340, 100], [2, 1, 42, 101], [500, 0, 540, 100]], np.float32)
    scores = np.array([0.9, 0.3, 0.3, 0.1])
    assert tracker.usable(boxes, scores).tolist() == [True, False, False, False]  # no track yet
    tracker.update([_person(0, 0)])
    # low 0.3 over the tracked person: usable; low 0.3 elsewhere, or below low_thr: not
    assert tracker.usable(boxes, scores).tolist() == [True, False, True, False]
    assert tracker.usable(np.zeros((0, 4)), np.zeros(0)).tolist() == []
    # taken as a value now, applied later or in another process: the same mask
    rule = pickle.loads(pickle.dumps(tracker.usable_rule()))
    assert rule(boxes, scores).tolist() == [True, False, True, False]


def test_usable_is_a_superset_of_what_update_reports() -> None:
    """Random walkers with random scores: every person `update` reports was marked usable before it, so
    leaving the others out (no pose computed) reports the same people."""
    rng = np.random.default_rng(3)
    full, filtered = ByteTracker(), ByteTracker()
    positions = rng.uniform(0, 600, size=(12, 2))
    low_kept = low_dropped = 0
    for _ in range(80):
        positions += rng.normal(0, 6, positions.shape)
        scores = rng.uniform(0, 1, 12)
        people = [_person(x, y, score=float(s)) for (x, y), s in zip(positions, scores, strict=True)]
        boxes = np.array([p.bbox for p in people])
        usable = filtered.usable(boxes, np.array([p.score for p in people]))
        reported = full.update(people)
        kept = filtered.update([p for p, u in zip(people, usable, strict=True) if u])
        low = np.array([filtered.config.low_thr <= p.score < filtered.config.high_thr for p in people])
        low_kept, low_dropped = low_kept + int((usable & low).sum()), low_dropped + int((~usable & low).sum())
        as_rows = lambda found: [(p.track_id, tuple(p.bbox.tolist())) for p in found]  # noqa: E731
        assert as_rows(kept) == as_rows(reported)
    assert low_kept > 20 and low_dropped > 20  # the filter did decide both ways
