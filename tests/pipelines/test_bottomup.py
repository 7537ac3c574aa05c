"""BottomUp pipeline on real frames: people found, NumPy and torch processing agree, the model matches
the original runtime (OpenVINO) end to end, per-item errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.errors import EngineError, ImageDecodeError, RtposeError
from rtpose.pipelines.bottomup import BottomUp
from rtpose.postprocess.paf import decode_bottomup

torch.set_num_threads(1)
IR = "human-pose-estimation-0001_FP16-INT8/human-pose-estimation-0001.xml"


@pytest.fixture(scope="module")
def weights(models_dir: Path) -> Path:
    return models_dir / IR


@pytest.fixture(scope="module")
def torch_pipeline(weights: Path) -> BottomUp:
    return BottomUp("openpose-lite", backend="torch", device="cpu", weights=weights)


@pytest.fixture(scope="module")
def frame(data_dir: Path) -> np.ndarray:
    openpose_ir = pytest.importorskip("openpose_ir")
    return openpose_ir.read_frames(data_dir, [60])[0]


def _match(a: np.ndarray, a_scores: np.ndarray, b: np.ndarray, b_scores: np.ndarray) -> list[float]:
    """For each person of a, the mean distance of shared keypoints to the closest person of b."""
    means = []
    for xy, scores in zip(a, a_scores, strict=True):
        shared = (scores[None] > 0) & (b_scores > 0)
        dist = np.where(shared, np.linalg.norm(b - xy[None], axis=2), 0).sum(1) / np.maximum(shared.sum(1), 1)
        dist[shared.sum(1) < 3] = np.inf
        means.append(float(dist.min()) if len(dist) else np.inf)
    return means


def _agreement(a: tuple, b: tuple, tolerance: float = 3.0) -> float:
    """Fraction of a's people with a counterpart in b within `tolerance` image pixels (mean distance).

    3 px here is about one network pixel: the INT8-emulating network turns 1-LSB input differences
    (OpenCV vs torch resize rounding) into occasional one-cell peak moves, so paths are compared per person.
    """
    distances = np.array(_match(a[0], a[1], b[0], b[1]))
    return float((distances < tolerance).mean()) if len(distances) else 1.0


def test_people_on_a_street_frame(torch_pipeline: BottomUp, frame: np.ndarray) -> None:
    people = torch_pipeline(frame)
    assert len(people) >= 5
    scores = [p.score for p in people]
    assert scores == sorted(scores, reverse=True)
    for person in people:
        found = person.keypoint_scores > 0
        assert found.sum() >= 2
        xy = person.keypoints[found]
        assert np.all(xy >= -1) and np.all(xy[:, 0] <= 1281) and np.all(xy[:, 1] <= 721)
        x1, y1, x2, y2 = person.bbox
        assert np.allclose([x1, y1, x2, y2], [*xy.min(0), *xy.max(0)])
    assert torch_pipeline.canvas_size((720, 1280)) == (256, 456)
    assert torch_pipeline.canvas_size((480, 640)) == (256, 344)


def test_matches_the_original_runtime_end_to_end(
    torch_pipeline: BottomUp, frame: np.ndarray, data_dir: Path
) -> None:
    """Our network + our preprocessing against OpenVINO's IR, both decoded by the NumPy reference."""
    openpose_ir = pytest.importorskip("openpose_ir")
    pytest.importorskip("openvino")
    heatmaps, pafs, scale = openpose_ir.run_ir(data_dir, frame)
    ref_kp, ref_scores, _ = decode_bottomup(heatmaps, pafs)
    ref_kp = ref_kp / scale
    kp, scores, _ = torch_pipeline.predict_arrays(frame)
    assert abs(len(kp) - len(ref_kp)) <= 1
    distances = _match(ref_kp, ref_scores, kp, scores)
    # image pixels (~1 network pixel): bounded by how closely our network reproduces the INT8 IR
    assert np.median(distances) < 3.0, distances


def test_numpy_and_torch_processing_agree(weights: Path, frame: np.ndarray) -> None:
    numpy_side = BottomUp("openpose-lite", backend="torch", weights=weights, processing="numpy")
    torch_side = BottomUp("openpose-lite", backend="torch", weights=weights, processing="torch")
    numpy_result = numpy_side.predict_arrays(frame)
    torch_result = torch_side.predict_arrays(frame)
    assert abs(len(numpy_result[0]) - len(torch_result[0])) <= 2
    assert _agreement(numpy_result, torch_result) >= 0.7


def test_ort_backend_fits_the_fixed_input(weights: Path, frame: np.ndarray, torch_pipeline: BottomUp) -> None:
    pipeline = BottomUp("openpose-lite", backend="ort", weights=weights)
    assert not pipeline.dynamic_width
    assert pipeline.canvas_size((480, 640)) == (256, 456)
    wide = np.concatenate([frame, frame[:, :400]], axis=1)  # 1680x720: fitted into 456 wide
    kp, scores, _ = pipeline.predict_arrays(wide)
    assert len(kp) >= 3
    assert np.all(kp[scores > 0][:, 0] <= 1681)
    ort_result = pipeline.predict_arrays(frame)
    torch_result = torch_pipeline.predict_arrays(frame)
    assert abs(len(ort_result[0]) - len(torch_result[0])) <= 2
    assert _agreement(torch_result, ort_result) >= 0.7


def test_run_keeps_going_past_a_bad_file(torch_pipeline: BottomUp, coco_val, tmp_path: Path) -> None:
    _, image_dir = coco_val
    good = sorted(image_dir.glob("*.jpg"))[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    results = list(torch_pipeline.run([good, bad], progress=False))
    assert [r.ok for r in results] == [True, False]
    assert results[0].width > 0 and results[0].people
    assert "broken.jpg" in results[1].error
    json.dumps([r.to_json() for r in results])


def test_bad_arguments(torch_pipeline: BottomUp, weights: Path) -> None:
    with pytest.raises(ImageDecodeError):
        torch_pipeline(np.zeros((10, 10), np.float64))
    with pytest.raises(RtposeError, match="option"):
        BottomUp.from_engine(torch_pipeline.engine, torch_pipeline.spec, peak_threshold=0.2)
    with pytest.raises(RtposeError, match="score_mode"):
        BottomUp.from_engine(torch_pipeline.engine, torch_pipeline.spec, score_mode="max")
    with pytest.raises((EngineError, RtposeError)):
        BottomUp("rtmpose-t", backend="torch")


@pytest.mark.gpu
def test_cuda_pipeline_matches_cpu(weights: Path, frame: np.ndarray, torch_pipeline: BottomUp) -> None:
    cuda = BottomUp("openpose-lite", backend="torch", device="cuda", weights=weights)
    assert cuda.processing == "torch"
    cuda_result = cuda.predict_arrays(frame)
    cpu_result = torch_pipeline.predict_arrays(frame)
    assert abs(len(cpu_result[0]) - len(cuda_result[0])) <= 2
    assert _agreement(cpu_result, cuda_result) >= 0.7
