"""Overlays change the pixels where people are, and nowhere else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtpose.decode.image import decode_image
from rtpose.errors import RtposeError
from rtpose.sinks import draw_people, line_width_for
from rtpose.sinks.draw import LEFT_COLOR, TRACK_PALETTE
from rtpose.types import COCO_SKELETON, Person


def _standing_person(x0: float = 100.0, y0: float = 60.0) -> Person:
    """A plausible upright COCO-17 pose, 100 x 230 px."""
    offsets = np.array([
        [50, 0], [55, -5], [45, -5], [62, 0], [38, 0],  # face
        [75, 40], [25, 40], [85, 90], [15, 90], [90, 130], [10, 130],  # arms
        [65, 130], [35, 130], [67, 180], [33, 180], [68, 230], [32, 230],  # legs
    ], dtype=np.float32)  # fmt: skip
    keypoints = offsets + np.array([x0, y0], np.float32)
    return Person(
        bbox=np.array([x0 - 5, y0 - 15, x0 + 105, y0 + 240], np.float32),
        score=0.87,
        keypoints=keypoints,
        keypoint_scores=np.full(17, 0.9, np.float32),
    )


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


def test_drawing_marks_keypoints_and_limbs_and_leaves_the_rest() -> None:
    image = np.full((480, 640, 3), 40, np.uint8)
    person = _standing_person()
    out = draw_people(image, [person], draw_boxes=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.all(image == 40), "the input must not be modified"
    changed = _changed(out, image)
    assert person.keypoints is not None
    for x, y in person.keypoints.round().astype(int):
        assert changed[y, x], (x, y)
    # the middle of a limb (left shin: knee 13 -> ankle 15) is drawn in the left-side colour
    mid = ((person.keypoints[13] + person.keypoints[15]) / 2).round().astype(int)
    assert tuple(int(v) for v in out[mid[1], mid[0]]) == LEFT_COLOR
    # nothing far from the person changes
    assert not changed[:, 300:].any() and not changed[:30].any()


def test_low_score_keypoints_and_their_limbs_are_not_drawn() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    person = _standing_person()
    assert person.keypoint_scores is not None and person.keypoints is not None
    person.keypoint_scores[15] = 0.1  # left ankle unsure
    out = draw_people(image, [person], draw_boxes=False, kpt_thr=0.3)
    ankle = person.keypoints[15].round().astype(int)
    assert not _changed(out, image)[ankle[1] + 3, ankle[0]]  # below the knee-ankle limb: untouched
    assert not _changed(out, image)[ankle[1], ankle[0]]
    everything = draw_people(image, [person], draw_boxes=False, kpt_thr=0.05)
    assert _changed(everything, image)[ankle[1], ankle[0]]


def test_person_without_keypoints_draws_a_box_only() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    person = Person(bbox=np.array([100, 80, 300, 250], np.float32), score=0.5)
    out = draw_people(image, [person])
    changed = _changed(out, image)
    assert changed[250, 200] and changed[165, 100] and changed[165, 300]  # bottom, left, right edges
    assert not changed[120:240, 110:290].any()  # inside: no skeleton (the label sits at the top edge)
    assert not changed[260:].any()
    assert np.array_equal(draw_people(image, [person], draw_boxes=False), image)


def test_track_id_picks_the_box_colour_and_label() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    person = Person(bbox=np.array([100, 80, 300, 250], np.float32), score=0.5, track_id=3)
    with_id = draw_people(image, [person])
    assert tuple(int(v) for v in with_id[250, 200]) == TRACK_PALETTE[3]
    without_id = draw_people(image, [person], draw_ids=False)
    assert tuple(int(v) for v in without_id[250, 200]) != TRACK_PALETTE[3]
    # the label "#3 0.50" is wider than "0.50"
    assert _changed(with_id, image)[60:80].sum() > _changed(without_id, image)[60:80].sum()


def test_line_width_scales_with_image_size() -> None:
    assert line_width_for((240, 320, 3)) == 1
    assert line_width_for((480, 640, 3)) == 2
    assert line_width_for((720, 1280, 3)) == 3
    assert line_width_for((2160, 3840, 3)) == 9
    small = draw_people(np.zeros((480, 640, 3), np.uint8), [_standing_person()], draw_boxes=False)
    large = draw_people(np.zeros((1080, 1920, 3), np.uint8), [_standing_person()], draw_boxes=False)
    # width 2 -> 4 (plus the same anti-aliased fringe): clearly more pixels
    assert _changed(large, np.zeros_like(large)).sum() > 1.3 * _changed(small, np.zeros_like(small)).sum()


def test_unusual_inputs() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    weird = Person(
        bbox=np.array([np.nan, 0, 10, 10], np.float32),
        score=0.9,
        keypoints=np.full((17, 2), np.nan, np.float32),
        keypoint_scores=np.ones(17, np.float32),
    )
    off_image = _standing_person(x0=5000, y0=-3000)
    five_points = Person(
        bbox=np.array([10, 10, 60, 60], np.float32),
        score=0.9,
        keypoints=np.array([[20, 20], [30, 30], [40, 40], [50, 50], [25, 45]], np.float32),
    )
    out = draw_people(image, [weird, off_image, five_points])
    assert _changed(out, image)[30, 30]  # non-COCO layout: points are still drawn
    assert len(COCO_SKELETON) == 19
    with pytest.raises(RtposeError, match="uint8"):
        draw_people(image.astype(np.float32), [])
    with pytest.raises(RtposeError, match=r"\(H, W, 3\)"):
        draw_people(np.zeros((10, 10), np.uint8), [])


def test_draws_on_a_real_image(coco_val: tuple[Path, Path]) -> None:
    _, images_dir = coco_val
    image = decode_image(next(iter(sorted(images_dir.glob("*.jpg")))))
    out = draw_people(image, [_standing_person()])
    assert out.shape == image.shape
    assert 0 < _changed(out, image).mean() < 0.2
