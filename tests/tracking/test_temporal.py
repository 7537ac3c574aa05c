"""Per-stream temporal logic: detector schedule, boxes from keypoints, pose NMS, dropping lost poses."""

from __future__ import annotations

import numpy as np
import pytest

from rtpose.errors import RtposeError
from rtpose.tracking.keypoint_boxes import box_from_keypoints, boxes_from_people
from rtpose.tracking.temporal import StreamTemporalState, TemporalConfig, pose_nms
from rtpose.types import Person


def _pose(x: float, y: float, score: float = 0.9, kpt_score: float = 0.9) -> Person:
    keypoints = np.array([[x + dx, y + dy] for dx in (0, 10, 20) for dy in (0, 20, 40, 60, 80, 100)][:17])
    return Person(np.array([x, y, x + 20, y + 100], np.float32), score, keypoints.astype(np.float32),
                  np.full(17, kpt_score, np.float32))  # fmt: skip


def test_box_from_keypoints_pads_clips_and_needs_enough_points() -> None:
    keypoints = np.array([[10, 20], [30, 60], [20, 40], [500, 500]], np.float32)
    scores = np.array([0.9, 0.9, 0.9, 0.1])
    box = box_from_keypoints(keypoints, scores, kpt_thr=0.3, padding=1.5, min_keypoints=3)
    np.testing.assert_allclose(box, [5, 10, 35, 70])  # extent 20x40 grown 1.5x around (20, 40)
    clipped = box_from_keypoints(keypoints, scores, padding=1.5, min_keypoints=3, image_size=(50, 32))
    np.testing.assert_allclose(clipped, [5, 10, 32, 50])
    assert box_from_keypoints(keypoints, scores, min_keypoints=4) is None
    boxes, box_scores, sources = boxes_from_people([_pose(0, 0, score=0.7), Person(np.zeros(4), 0.5)])
    assert boxes.shape == (1, 4) and box_scores.tolist() == pytest.approx([0.7]) and len(sources) == 1


def test_detector_runs_every_n_frames_and_when_nothing_to_follow() -> None:
    state = StreamTemporalState(TemporalConfig(det_interval=3, track=False, smooth=False))
    schedule = []
    for t in range(7):
        plan = state.plan((480, 640))
        schedule.append(plan is None)
        people = [_pose(100 + t, 100)] if t < 4 else []
        state.finish(people, t / 30, detected=plan is None)
    # frames 0, 3, 6 by the interval; 5 because frame 4 left nothing to follow
    assert schedule == [True, False, False, True, False, True, True]


def test_propagated_poses_that_fade_are_dropped_and_duplicates_removed() -> None:
    state = StreamTemporalState(
        TemporalConfig(det_interval=10, track=False, smooth=False, min_pose_score=0.3)
    )
    out = state.finish([_pose(0, 0), _pose(0.5, 0, score=0.8), _pose(300, 0)], 0.0, detected=True)
    assert len(out) == 2  # the near-identical second pose is removed by OKS-NMS
    out = state.finish([_pose(0, 0), _pose(300, 0, kpt_score=0.1)], 1 / 30, detected=False)
    assert len(out) == 1  # the faded pose (person gone) is not kept
    assert len(pose_nms([], 0.9)) == 0


def test_tracking_through_the_temporal_state_gives_ids() -> None:
    state = StreamTemporalState(TemporalConfig(det_interval=2))
    ids = []
    for t in range(6):
        state.plan((480, 640))
        out = state.finish([_pose(10 + 2 * t, 10), _pose(200 - 2 * t, 10)], t / 30, detected=t % 2 == 0)
        ids.append(sorted(p.track_id for p in out))
    assert all(frame_ids == [1, 2] for frame_ids in ids)


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(RtposeError, match="det_interval"):
        TemporalConfig(det_interval=0)
    with pytest.raises(RtposeError, match="tracking"):
        TemporalConfig(track=False, smooth=True)


def _reference_box(keypoints, scores, kpt_thr, min_keypoints, image_size, padding=1.2, min_size=8.0):
    """The per-pose arithmetic, written out independently of the vectorised code."""
    points = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    confident = np.isfinite(points).all(axis=1)
    if scores is not None:
        confident &= np.asarray(scores, dtype=np.float64) > kpt_thr
    if confident.sum() < max(1, min_keypoints):
        return None
    low, high = points[confident].min(axis=0), points[confident].max(axis=0)
    centre, half = (low + high) / 2, np.maximum((high - low) * padding, min_size) / 2
    height, width = image_size
    box = np.clip(np.concatenate([centre - half, centre + half]), 0, [width, height, width, height])
    return None if box[2] - box[0] < 1 or box[3] - box[1] < 1 else box.astype(np.float32)


def test_boxes_from_people_at_once_equal_one_by_one() -> None:
    from rtpose.tracking.temporal import mean_keypoint_score, mean_keypoint_scores

    rng = np.random.default_rng(3)
    for trial in range(60):
        people = []
        for _ in range(int(rng.integers(0, 12))):
            keypoints = rng.uniform(-50, 700, (17, 2)).astype(np.float32)
            keypoints[rng.random(17) < 0.05] = np.nan
            scores = rng.uniform(0, 1, 17).astype(np.float32)
            scores[: int(rng.integers(0, 17))] = 0.1  # some with too few confident keypoints
            people.append(Person(keypoints[0].repeat(2), float(rng.random()), keypoints, scores))
        if trial % 10 == 0 and people:  # mixed inputs take the one-by-one path
            people.append(Person(np.zeros(4, np.float32), 0.5, people[0].keypoints, None))
        size = (480, 640)
        boxes, scores, sources = boxes_from_people(people, kpt_thr=0.3, min_keypoints=3, image_size=size)
        one_by_one = [
            (
                _reference_box(p.keypoints, p.keypoint_scores, kpt_thr=0.3, min_keypoints=3, image_size=size),
                p,
            )
            for p in people
            if p.keypoints is not None
        ]
        want = [(b, p) for b, p in one_by_one if b is not None]
        assert [id(p) for p in sources] == [id(p) for _, p in want]
        np.testing.assert_array_equal(boxes.reshape(-1, 4), np.array([b for b, _ in want]).reshape(-1, 4))
        np.testing.assert_array_equal(scores, np.array([p.score for _, p in want], np.float32))
        assert mean_keypoint_scores(people) == [mean_keypoint_score(p) for p in people]
