"""The one-kernel greedy NMS (`postprocess.nms_triton`) keeps exactly the boxes of the torch selection:
on the GPU (libdevice round-to-nearest operations) and in Triton's CPU interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.triton_interpreter import needs_triton, run_in_interpreter

from rtpose.errors import RtposeError
from rtpose.postprocess.detection import select_detections_fixed, select_detections_torch


def _inputs(seed: int, images: int, anchors: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes in tight clusters (long suppression chains), with flipped, empty and identical boxes."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 300, size=(images, max(anchors // 12, 1), 2))
    which = rng.integers(0, centres.shape[1], size=(images, anchors))
    middle = np.take_along_axis(centres, which[..., None], axis=1) + rng.normal(
        0, 4, size=(images, anchors, 2)
    )
    half = rng.uniform(5, 40, size=(images, anchors, 2))
    boxes = np.concatenate([middle - half, middle + half], axis=-1)
    boxes[:, ::17] = boxes[:, ::17][..., [2, 3, 0, 1]]  # corners given the other way round
    boxes[:, 5::23, 2] = boxes[:, 5::23, 0]  # zero width
    boxes[:, 7::29] = boxes[:, 6::29][:, : boxes[:, 7::29].shape[1]]  # identical boxes
    scores = rng.uniform(0, 1, size=(images, anchors, classes)) ** 2
    return torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(boxes.astype(np.float32))


def _compare(device: str) -> None:
    for seed, (images, anchors, classes, max_det) in enumerate(
        [(3, 400, 1, 100), (2, 300, 2, 100), (4, 500, 1, 7)]
    ):
        scores, boxes = (t.to(device) for t in _inputs(seed, images, anchors, classes))
        expected = select_detections_torch(scores, boxes, 0.3, 0.5, 1000, max_det)
        found = select_detections_fixed(
            scores, boxes, 0.3, 0.5, 1000, max_det, candidates=512, one_kernel=True
        )
        assert bool(found.exact)
        for image, want in enumerate(expected):
            keep = found.keep[image]
            assert int(keep.sum()) == len(want.boxes) > 0
            torch.testing.assert_close(found.boxes[image][keep], want.boxes, rtol=0, atol=0)
            torch.testing.assert_close(found.scores[image][keep], want.scores, rtol=0, atol=0)
            torch.testing.assert_close(found.labels[image][keep], want.labels, rtol=0, atol=0)
        # the torch version with too few rounds cannot say so much; the kernel has no rounds to run out of
        narrow = select_detections_fixed(
            scores, boxes, 0.3, 0.5, 1000, max_det, candidates=16, one_kernel=True
        )
        assert not bool(narrow.exact)  # more candidates above the threshold than the width: flagged


@pytest.mark.gpu
def test_one_kernel_nms_keeps_the_torch_boxes_on_the_gpu() -> None:
    _compare("cuda")


@needs_triton
def test_one_kernel_nms_keeps_the_torch_boxes_in_the_interpreter() -> None:
    code = "from tests.postprocess.test_nms_triton import _compare; _compare('cpu')"
    run_in_interpreter(code)


@needs_triton
def test_wrong_shapes_are_refused() -> None:
    from rtpose.postprocess.nms_triton import greedy_nms_triton

    with pytest.raises(RtposeError, match="need sorted scores"):
        greedy_nms_triton(torch.zeros((2, 8)), torch.zeros((2, 7), dtype=torch.int64), torch.zeros((2, 9, 4)),
                          1, 0.3, 0.5, 100)  # fmt: skip
