"""rtmlib comparison: same ONNX file, same boxes -> the same keypoints; a tiny timed run has all rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rtpose.benchmarks.rtmlib_compare import keypoint_difference, main, parse_args

pytest.importorskip("rtmlib")


def test_keypoint_difference_ignores_what_rtmlib_dropped() -> None:
    ours = np.zeros((2, 3, 2))
    theirs = np.zeros((2, 3, 2))
    theirs[0, 0] = [3.0, 4.0]
    theirs[1, 2] = [-1.0, -1.0]  # rtmlib's "invalid" marker
    scores = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, -0.5]])
    result = keypoint_difference(ours, theirs, scores)
    assert result["compared"] == 5 and result["of"] == 6
    assert result["max_px"] == 5.0 and result["within_1px"] == pytest.approx(0.8)


def test_tiny_run_gives_same_keypoints_and_every_row(
    data_dir: Path, coco_val: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "compare.json"
    argv = ["--pose", "rtmpose-t", "--image", str(coco_val[1] / "000000117425.jpg"), "--threads", "1",
            "--runs", "2", "--warmup", "0", "--data-dir", str(data_dir), "--out", str(out)]  # fmt: skip
    assert parse_args(argv).pose == "rtmpose-t"
    assert main(argv) == 0
    result = json.loads(out.read_text())
    openvino = importlib.util.find_spec("openvino") is not None
    # the fourth: our INT8 engine; then OpenVINO f32 and bf16 where installed
    assert len(result["rows"]) == (6 if openvino else 4) and result["persons"] >= 1
    assert result["ratio_rtmlib_over_ours_int8_per_person"] > 0
    if openvino:
        assert result["ratio_rtmlib_over_ours_openvino_bf16_per_person"] > 0
    assert all(r["ms_per_person"] > 0 for r in result["rows"])
    agreement = result["keypoint_agreement"]
    assert agreement["compared"] > 0
    assert agreement["max_px"] < 0.05  # same network, same crops: the same keypoints
    assert "per-person cost" in capsys.readouterr().out
