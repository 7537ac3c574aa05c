"""precision_check: the comparisons on hand-made results, and the detector check on three real images."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.benchmarks.bench_models import EngineFactory, load_bench_model
from rtpose.benchmarks.precision_check import (
    CastEngine,
    Recorder,
    bottomup_distances,
    candidates,
    check_detector,
    compare_detections,
    topdown_distances,
)
from rtpose.decode.image import decode_image
from rtpose.engines.onnx_export import output_names_for
from rtpose.types import Person


def _person(points: np.ndarray, scores: np.ndarray | None = None) -> Person:
    scores = np.ones(len(points), np.float32) if scores is None else scores
    return Person(
        bbox=np.zeros(4, np.float32), score=1.0, keypoints=points.astype(np.float32), keypoint_scores=scores
    )


def _recorder(calls: list) -> Recorder:
    recorder = Recorder(object())
    recorder.calls = calls
    return recorder


def test_compare_detections_matches_boxes_by_iou() -> None:
    ref = [(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float), np.array([0.9, 0.8]))]
    same = [(np.array([[20, 20, 40, 40], [0, 0, 10, 10.5]], float), np.array([0.79, 0.9]))]
    result = compare_detections(ref, same)
    assert result["images_same_count"] == 1 and result["boxes_unmatched"] == 0
    assert result["matched_iou_min"] == pytest.approx(100 / 105, abs=1e-4)
    assert result["score_abs_diff_max"] == pytest.approx(0.01)
    lost = [(np.array([[0, 0, 10, 10], [100, 100, 120, 120]], float), np.array([0.9, 0.5]))]
    result = compare_detections(ref, lost)
    assert result["boxes_unmatched"] == 2  # one reference box lost, one new box found


def test_topdown_distances_are_in_network_input_pixels() -> None:
    class Spec:
        input_size = (256, 192)

    # a 96 x 128 box padded by 1.25 -> 120 x 160 = the 192 x 256 input at scale 1.6
    boxes = np.array([[0.0, 0.0, 96.0, 128.0]])
    points = np.zeros((17, 2))
    moved = points.copy()
    moved[0] = [0.5, 0.0]  # 0.5 image px = 0.8 input px
    ref = _recorder([(boxes, [_person(points)])])
    cand = _recorder([(boxes, [_person(moved)])])
    distances = topdown_distances(ref, cand, Spec())
    assert distances.shape == (17,)
    assert distances[0] == pytest.approx(0.8) and distances[1:].max() == 0


def test_bottomup_distances_pair_people_and_count_losses() -> None:
    shape = np.array([512, 800])  # input height 256: scale 0.5
    a, b = np.full((18, 2), 10.0), np.full((18, 2), 300.0)
    b_moved = b.copy()
    b_moved[3] += [2.0, 0.0]  # 2 image px = 1 input px
    lost_scores = np.ones(18, np.float32)
    lost_scores[5] = 0.0
    ref = _recorder([(shape, [_person(a), _person(b)])])
    cand = _recorder([(shape, [_person(b_moved), _person(a, lost_scores)])])  # other order
    distances = bottomup_distances(ref, cand, input_height=256)
    assert distances.size == 36
    assert np.isinf(distances).sum() == 1  # keypoint 5 of person a lost
    assert np.sort(distances[np.isfinite(distances)])[-1] == pytest.approx(1.0)
    nobody = _recorder([(shape, [])])
    assert np.isinf(bottomup_distances(ref, nobody, input_height=256)).all()


def test_candidates_on_cpu_skip_fp16_with_a_reason() -> None:
    cpu = candidates("cpu")
    assert cpu["eager-bf16"] is None and cpu["ort-int8"] is None and "CPU" in (cpu["compiled-fp16"] or "")
    assert set(candidates("cpu", ["ort-int8"])) == {"ort-int8"}
    assert set(candidates("cuda")) == {"eager-fp16", "eager-bf16", "compiled-fp32", "compiled-fp16",
                                       "compiled-bf16"}  # fmt: skip


def test_bf16_and_int8_detector_on_three_real_images(
    data_dir: Path, coco_val: tuple[Path, Path], tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    images = [decode_image(p) for p in sorted(coco_val[1].glob("*.jpg"))[:3]]
    args = argparse.Namespace(det="rtmdet-nano", data_dir=data_dir, data_dir_resolved=data_dir, device="cpu",
                              candidates=None)  # fmt: skip
    rows = check_detector(args, EngineFactory(device="cpu", workdir=tmp_path, threads=1), images)
    by_candidate = {r["candidate"]: r for r in rows}
    assert "skipped" in by_candidate["compiled-fp16"]
    # INT8 (calibrated on train2017 images) moves boxes more: mean IoU 0.90 here; broken would be ~0
    for label, min_iou in (("eager-bf16", 0.9), ("ort-int8", 0.85)):
        row = by_candidate[label]
        assert row["images"] == 3 and row["boxes_reference"] >= 1
        assert row["matched_iou_mean"] is not None and row["matched_iou_mean"] > min_iou, row


def test_cast_engine_runs_in_the_reduced_precision(data_dir: Path) -> None:
    model = load_bench_model("rtmdet-nano", "detector", data_dir=data_dir)
    engine = CastEngine(model.module, torch.bfloat16, "cpu", output_names_for(model.spec))
    assert next(engine.module.parameters()).dtype == torch.bfloat16
    assert next(model.module.parameters()).dtype == torch.float32  # the shared module is untouched
    x = torch.randn(1, 3, 320, 320)
    out = engine(x)
    with torch.inference_mode():
        reference = model.module(x)
    assert out["scores"].dtype == torch.float32
    assert torch.allclose(out["scores"], reference[0], atol=0.05)
