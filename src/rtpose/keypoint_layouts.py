"""The OpenPose-18 keypoint layout: keypoint order, limbs, PAF channels and the map to COCO-17.

The tables of lightweight OpenPose / Open Model Zoo's human-pose-estimation-0001, shared by the model
spec (`models.openpose_lite`, in its `extra`) and the bottom-up decoder (`postprocess.paf`).
"""

from __future__ import annotations

#: OpenPose-18 keypoint order of the heatmap channels (channel 18 is the background)
OPENPOSE_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip

#: (keypoint a, keypoint b) of every limb in OpenPose-18 indices, in OpenPose's processing order (breadth
#: first from the neck); the last two (shoulder-ear) are redundant: they close cycles and only merge people.
OPENPOSE_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip

#: PAF channels (x, y) of each limb above, in the lightweight-OpenPose / human-pose-estimation-0001 output.
OPENPOSE_PAF_CHANNELS: tuple[tuple[int, int], ...] = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
    (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip

#: COCO-17 keypoint k is OpenPose keypoint COCO_FROM_OPENPOSE[k] (the neck, 1, has no COCO twin).
COCO_FROM_OPENPOSE: tuple[int, ...] = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
