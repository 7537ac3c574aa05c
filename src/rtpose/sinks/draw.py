"""Skeleton overlays: boxes, COCO limbs and keypoints, score / track-id labels, drawn on a copy of the image.

Colours follow the usual convention of pose tools: the person's left side green, right side orange,
face and torso blue (BGR values below). Line width and text size grow with the image so that overlays
read the same on a 320p thumbnail and a 4K frame.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from rtpose.errors import RtposeError
from rtpose.types import COCO_KEYPOINT_NAMES, COCO_SKELETON, Person

Color = tuple[int, int, int]

LEFT_COLOR: Color = (0, 200, 0)
RIGHT_COLOR: Color = (0, 128, 255)
CENTRE_COLOR: Color = (255, 153, 51)
BOX_COLOR: Color = (255, 200, 0)
#: box colours for tracked people, picked by track id so an id keeps its colour across frames
TRACK_PALETTE: tuple[Color, ...] = (
    (255, 56, 56), (56, 56, 255), (56, 255, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29),
    (207, 210, 49), (72, 249, 10), (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187),
    (44, 153, 168), (0, 194, 255), (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255),
)  # fmt: skip


def _side(index: int) -> str:
    name = COCO_KEYPOINT_NAMES[index]
    return "left" if name.startswith("left") else "right" if name.startswith("right") else "centre"


def _side_color(side: str) -> Color:
    return {"left": LEFT_COLOR, "right": RIGHT_COLOR}.get(side, CENTRE_COLOR)


KEYPOINT_COLORS: tuple[Color, ...] = tuple(_side_color(_side(i)) for i in range(len(COCO_KEYPOINT_NAMES)))
LIMB_COLORS: tuple[Color, ...] = tuple(
    _side_color(_side(a)) if _side(a) == _side(b) else CENTRE_COLOR for a, b in COCO_SKELETON
)


def line_width_for(image_shape: tuple[int, ...]) -> int:
    """Limb line width in pixels: 1 up to ~360p, 2 at 480p, 3 at 720p, 4-5 at 1080p."""
    return max(1, round(min(image_shape[0], image_shape[1]) / 240))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise RtposeError(f"draw_people needs an (H, W, 3) uint8 BGR image, got shape {shape} dtype {dtype}")


def _point(xy: np.ndarray) -> tuple[int, int]:
    return round(float(xy[0])), round(float(xy[1]))


def _visible_keypoints(person: Person, kpt_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) keypoints and a (K,) mask of those confident enough and finite."""
    assert person.keypoints is not None
    keypoints = np.asarray(person.keypoints, dtype=np.float64).reshape(-1, 2)
    if person.keypoint_scores is None:
        visible = np.ones(len(keypoints), dtype=bool)
    else:
        visible = np.asarray(person.keypoint_scores, dtype=np.float64).reshape(-1) >= kpt_thr
    # far-off-image coordinates would overflow OpenCV's int conversion; they cannot be drawn anyway
    visible &= np.isfinite(keypoints).all(axis=1) & (np.abs(keypoints) < 1e6).all(axis=1)
    return keypoints, visible


def _draw_skeleton(canvas: np.ndarray, person: Person, kpt_thr: float, width: int) -> None:
    keypoints, visible = _visible_keypoints(person, kpt_thr)
    if len(keypoints) == len(COCO_KEYPOINT_NAMES):
        for (a, b), color in zip(COCO_SKELETON, LIMB_COLORS, strict=True):
            if visible[a] and visible[b]:
                cv2.line(canvas, _point(keypoints[a]), _point(keypoints[b]), color, width, cv2.LINE_AA)
        colors: Iterable[Color] = KEYPOINT_COLORS
    else:  # not the COCO layout: no skeleton we know, points only
        colors = [CENTRE_COLOR] * len(keypoints)
    radius = width + 1
    for xy, ok, color in zip(keypoints, visible, colors, strict=True):
        if ok:
            cv2.circle(canvas, _point(xy), radius, color, -1, cv2.LINE_AA)


def _label_text(person: Person, draw_ids: bool) -> str:
    score = f"{float(person.score):.2f}"
    if draw_ids and person.track_id is not None:
        return f"#{person.track_id} {score}"
    return score


def _draw_box(canvas: np.ndarray, person: Person, width: int, draw_ids: bool) -> None:
    box = np.asarray(person.bbox, dtype=np.float64).reshape(-1)
    if box.size != 4 or not np.isfinite(box).all():
        return
    color = BOX_COLOR
    if draw_ids and person.track_id is not None:
        color = TRACK_PALETTE[int(person.track_id) % len(TRACK_PALETTE)]
    x1, y1, x2, y2 = (round(float(v)) for v in np.clip(box, -1e6, 1e6))
    cv2.rectangle(canvas, (x1, y1), (x2, y2), color, width, cv2.LINE_8)  # axis-aligned: no need to smooth
    text = _label_text(person, draw_ids)
    font_scale = 0.35 * width
    thickness = max(1, width // 2)
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    top = (
        y1 - text_h - baseline - 2 if y1 - text_h - baseline - 2 >= 0 else y1
    )  # inside the box at the top edge
    cv2.rectangle(canvas, (x1, top), (x1 + text_w + 2, top + text_h + baseline + 2), color, -1)
    cv2.putText(
        canvas,
        text,
        (x1 + 1, top + text_h + 1),
        cv2.FONT_HERSHEY_SIMPLEX,
        font_scale,
        (0, 0, 0),
        thickness,
        cv2.LINE_AA,
    )


def draw_people(
    image: np.ndarray,
    people: Iterable[Person],
    *,
    kpt_thr: float = 0.3,
    draw_boxes: bool = True,
    draw_ids: bool = True,
) -> np.ndarray:
    """A copy of `image` (H, W, 3 uint8 BGR) with every person's box, label and skeleton drawn.

    Keypoints scoring below `kpt_thr` are not drawn, nor limbs touching them. The label shows the score,
    preceded by `#track_id` when the person has one and `draw_ids` is set (track ids also pick the box
    colour). People without keypoints get a box only.
    """
    _check_image(image)
    canvas = image.copy()
    width = line_width_for(image.shape)
    for person in people:
        if draw_boxes:
            _draw_box(canvas, person, width, draw_ids)
        if person.keypoints is not None and len(person.keypoints) > 0:
            _draw_skeleton(canvas, person, kpt_thr, width)
    return canvas
