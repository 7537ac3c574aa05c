"""Detector post-processing: greedy NMS (reference) == ONNX Runtime's NMS == loop-free torch NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtpose.errors import RtposeError
from rtpose.postprocess.detection import (
    nms_numpy,
    nms_torch,
    select_detections,
    select_detections_fixed,
    select_detections_numpy,
    select_detections_torch,
)


def _clustered_boxes(rng: np.random.Generator, count: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in a few clusters, so that many overlap near every threshold."""
    centres = rng.uniform(0, 200, size=(max(count // 8, 1), 2))
    picked = centres[rng.integers(0, len(centres), count)] + rng.normal(0, 6, size=(count, 2))
    sizes = rng.uniform(10, 60, size=(count, 2))
    boxes = np.concatenate([picked - sizes / 2, picked + sizes / 2], axis=1).astype(dtype)
    return boxes, rng.uniform(0, 1, count).astype(dtype)


def test_greedy_nms_by_hand() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    # box 3 (best) suppresses 0 (IoU 0.9) and 1 (IoU 0.63 > 0.5); box 2 is alone
    assert nms_numpy(boxes, scores, 0.5).tolist() == [3, 2]
    # at 0.7, box 1 overlaps box 3 by 0.63 and survives; box 0 is gone
    assert nms_numpy(boxes, scores, 0.7).tolist() == [3, 1, 2]


def _onnxruntime_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "cap", "iou", "score"], ["selected"])
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, None])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        [helper.make_tensor("cap", TensorProto.INT64, [1], [100000]),
         helper.make_tensor("iou", TensorProto.FLOAT, [1], [iou_thr]),
         helper.make_tensor("score", TensorProto.FLOAT, [1], [-1.0])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    selected = session.run(None, {"boxes": boxes[None], "scores": scores[None, None]})[0]
    assert onnx.checker.check_model(model) is None
    return selected[:, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_nms_equals_onnxruntime(seed: int) -> None:
    boxes, scores = _clustered_boxes(np.random.default_rng(seed), 300)
    for iou_thr in (0.3, 0.5, 0.65):
        np.testing.assert_array_equal(
            nms_numpy(boxes, scores, iou_thr), _onnxruntime_nms(boxes, scores, iou_thr)
        )


@pytest.mark.parametrize("seed", range(5))
def test_torch_nms_equals_greedy(seed: int) -> None:
    boxes, scores = _clustered_boxes(np.random.default_rng(seed), 400)
    for iou_thr in (0.3, 0.5, 0.6):
        expected = nms_numpy(boxes, scores, iou_thr)
        got = nms_torch(torch.from_numpy(boxes), torch.from_numpy(scores), iou_thr).numpy()
        np.testing.assert_array_equal(got, expected)


def test_nms_ties_keep_the_lower_index_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    assert nms_numpy(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms_torch(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("num_classes", [1, 3])
def test_batched_torch_selection_equals_numpy(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    batch, anchors = 4, 500
    boxes = np.stack([_clustered_boxes(rng, anchors)[0] for _ in range(batch)])
    scores = rng.uniform(0, 1, size=(batch, anchors, num_classes)).astype(np.float32) ** 3
    scores[2] = 0.01  # one image with nothing above the threshold
    args = {"score_thr": 0.05, "iou_thr": 0.5, "pre_top_k": 300, "max_det": 40}
    expected = select_detections_numpy(scores, boxes, **args)
    got = select_detections_torch(torch.from_numpy(scores), torch.from_numpy(boxes), **args)
    assert len(expected[2]) == 0 and len(got[2]) == 0
    assert sum(len(d) for d in expected) > 40
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g.boxes.numpy(), e.boxes)
        np.testing.assert_array_equal(g.scores.numpy(), e.scores)
        np.testing.assert_array_equal(g.labels.numpy(), e.labels)
        assert np.all(np.diff(e.scores) <= 0) and len(e) <= 40


def test_torch_selection_of_no_image_and_of_one_image() -> None:
    assert select_detections_torch(torch.zeros(0, 10, 1), torch.zeros(0, 10, 4), 0.3, 0.5) == []
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]])
    (found,) = select_detections_torch(torch.tensor([[[0.9], [0.8], [0.7]]]), boxes, 0.3, 0.5, max_det=5)
    assert found.scores.tolist() == pytest.approx([0.9, 0.7]) and found.boxes.shape == (2, 4)


def test_classes_do_not_suppress_each_other() -> None:
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10]]], np.float32)
    scores = np.array([[[0.9, 0.1], [0.1, 0.8]]], np.float32)
    (dets,) = select_detections(scores, boxes, 0.5, 0.5)
    assert dets.labels.tolist() == [0, 1]
    (dets_torch,) = select_detections(torch.from_numpy(scores), torch.from_numpy(boxes), 0.5, 0.5)
    assert dets_torch.labels.tolist() == [0, 1]


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(RtposeError, match="expected scores"):
        select_detections(np.zeros((10, 1)), np.zeros((10, 4)), 0.3, 0.5)
    with pytest.raises(RtposeError, match="disagree"):
        select_detections(torch.zeros(1, 10, 1), torch.zeros(1, 9, 4), 0.3, 0.5)
    with pytest.raises(RtposeError, match="iou_thr"):
        select_detections(np.zeros((1, 10, 1)), np.zeros((1, 10, 4)), 0.3, 1.5)


@pytest.mark.gpu
def test_cuda_selection_equals_numpy() -> None:
    rng = np.random.default_rng(7)
    boxes = np.stack([_clustered_boxes(rng, 2000)[0] for _ in range(8)])
    scores = rng.uniform(0, 1, size=(8, 2000, 1)).astype(np.float32) ** 2
    expected = select_detections_numpy(scores, boxes, 0.05, 0.6, 1000, 100)
    got = select_detections_torch(
        torch.from_numpy(scores).cuda(), torch.from_numpy(boxes).cuda(), 0.05, 0.6, 1000, 100
    )
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g.boxes.cpu().numpy(), e.boxes)
        np.testing.assert_array_equal(g.scores.cpu().numpy(), e.scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_size_selection_equals_the_dynamic_one_or_says_it_does_not(seed: int) -> None:
    """The graph-capturable selection: exact where it says so; its flag catches overflow and slow NMS."""
    rng = np.random.default_rng(seed)
    boxes = torch.from_numpy(np.stack([_clustered_boxes(rng, 600)[0] for _ in range(3)]))
    scores = torch.from_numpy(rng.uniform(0, 1, size=(3, 600, 2)).astype(np.float32) ** 3)
    expected = select_detections_torch(scores, boxes, 0.3, 0.5, 1000, 100)
    found = select_detections_fixed(scores, boxes, 0.3, 0.5, 1000, 100, candidates=512, rounds=30)
    assert bool(found.exact)
    for image, e in enumerate(expected):
        keep = found.keep[image]
        torch.testing.assert_close(found.boxes[image][keep], e.boxes, rtol=0, atol=0)
        torch.testing.assert_close(found.scores[image][keep], e.scores, rtol=0, atol=0)
        torch.testing.assert_close(found.labels[image][keep], e.labels, rtol=0, atol=0)
    # too narrow for the candidates above the threshold, or too few NMS rounds: flagged, never silent
    assert not bool(select_detections_fixed(scores, boxes, 0.3, 0.5, 1000, 100, candidates=16).exact)
    assert not bool(
        select_detections_fixed(scores, boxes, 0.3, 0.5, 1000, 100, candidates=512, rounds=1).exact
    )
