"""INT8 engines for ONNX Runtime: calibration inputs, quantisation, caching, and how they are asked for."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from engine_test_models import TINY_DETECTOR, TINY_POSE

from rtpose.engines.factory import build_int8, create_engine
from rtpose.engines.quantize import TILES, calibration_images, calibration_inputs, int8_path
from rtpose.errors import EngineError


@pytest.fixture
def calib_dir(tmp_path: Path) -> Path:
    """Smooth random images: some structure, like real pictures, for the activation ranges."""
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"image{index}.png"), cv2.resize(small, (160, 120)))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_calibration_inputs_follow_the_models_preprocessing(calib_dir: Path) -> None:
    images = calibration_images(calib_dir)
    assert [p.name for p in images] == [f"image{i}.png" for i in range(4)]
    crops = list(calibration_inputs(TINY_POSE, images))
    assert len(crops) == len(images) * len(TILES)  # top-down: crops of the image and of tiles
    assert all(c.shape == (1, 3, *TINY_POSE.input_size) and c.dtype == np.float32 for c in crops)
    boxes = list(calibration_inputs(TINY_DETECTOR, images))
    assert len(boxes) == len(images) and boxes[0].shape == (1, 3, *TINY_DETECTOR.input_size)


def test_no_calibration_images_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no calibration images"):
        calibration_images(tmp_path)


def test_int8_engine_is_built_once_and_stays_close_to_fp32(
    tiny_registry, tiny_pose_weights: Path, calib_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTPOSE_CALIB_DIR", str(calib_dir))
    fp32, _ = create_engine("tiny-pose", task="pose-topdown", weights=tiny_pose_weights)
    int8, spec = create_engine("tiny-pose", task="pose-topdown", weights=tiny_pose_weights, precision="int8")
    assert spec.name == "tiny-pose" and int8.path.name.endswith(".int8.onnx")  # type: ignore[attr-defined]
    sidecar = int8.path.with_suffix(".json").read_text()  # type: ignore[attr-defined]
    assert "image0.png" in sidecar
    ops = [node.op_type for node in onnx.load(str(int8.path)).graph.node]  # type: ignore[attr-defined]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4  # really quantised
    batch = next(calibration_inputs(TINY_POSE, calibration_images(calib_dir)))
    want, got = fp32(batch), int8(batch)
    for name in want:
        scale = float(np.abs(want[name]).max())
        assert float(np.abs(got[name] - want[name]).max()) < 0.1 * scale, name  # quantised, not broken
    built = int8.path.stat().st_mtime_ns  # type: ignore[attr-defined]
    again, _ = create_engine("tiny-pose", task="pose-topdown", weights=tiny_pose_weights, precision="int8")
    assert again.path.stat().st_mtime_ns == built  # type: ignore[attr-defined]
    path, _ = build_int8("tiny-pose", task="pose-topdown", weights=tiny_pose_weights, calibration=calib_dir,
                         force=True)  # fmt: skip
    assert path == int8_path(fp32.path) and path.stat().st_mtime_ns != built  # type: ignore[attr-defined]


def test_int8_is_for_onnx_runtime_only(tiny_registry, tiny_pose_weights: Path) -> None:
    with pytest.raises(EngineError, match="int8 runs on ONNX Runtime"):
        create_engine("tiny-pose", task="pose-topdown", backend="torch", weights=tiny_pose_weights,
                      precision="int8")  # fmt: skip
