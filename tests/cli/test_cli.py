"""The rtpose command, run in-process (`main([...])`) with the real RTMDet-nano and a random RTMPose-t."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtpose.cli import main


@pytest.fixture(autouse=True)
def offline_env(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path, rtpose_cache_dir: Path, data_dir: Path
) -> None:
    monkeypatch.setenv("RTPOSE_OFFLINE_DIR", str(models_dir))
    monkeypatch.setenv("RTPOSE_CACHE", str(rtpose_cache_dir))
    monkeypatch.setenv("RTPOSE_DATA", str(data_dir))


@pytest.fixture(scope="session")
def pose_args(models_dir: Path) -> list[str]:
    weights = models_dir / "rtmpose_official_arch" / "rtmpose-t_random_official_format.pth"
    return ["--pose", "rtmpose-t", "--pose-weights", str(weights), "--device", "cpu"]


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("detect", "predict", "eval", "export", "models"):
        assert command in out
    assert main(["predict", "--help"]) == 0
    assert "--pose-weights" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["detect"]) == 2  # SOURCE missing
    assert main(["predict", "--backend", "tensorrt", "x.jpg"]) == 2
    assert main(["predict", "--device", "cpu"]) == 2
    assert "no SOURCE given" in capsys.readouterr().err


def test_detect_json_and_failed_item(
    tmp_path: Path, coco_val: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    image = coco_val[1] / "000000196141.jpg"
    out_json = tmp_path / "boxes.json"
    code = main(
        ["detect", str(image), str(tmp_path / "missing.jpg"), "--device", "cpu", "--json", str(out_json)]
    )
    assert code == 1  # one item failed, the other was processed
    captured = capsys.readouterr()
    assert "missing.jpg: ERROR" in captured.out and "file not found" in captured.out
    assert "2 images: 1 ok, 1 failed" in captured.out
    assert (
        "rtmdet-nano: weights from offline dir" in captured.err
    )  # the weight-resolution line reaches the user
    results = json.loads(out_json.read_text())
    assert [r["file"] for r in results] == [str(image), str(tmp_path / "missing.jpg")]
    assert (results[0]["width"], results[0]["height"]) == (640, 429)
    assert results[0]["people"] and "error" not in results[0]
    for person in results[0]["people"]:
        assert set(person) == {"bbox", "score"} and len(person["bbox"]) == 4 and person["score"] >= 0.3
    assert results[1]["people"] == [] and "file not found" in results[1]["error"]


def test_predict_writes_images_and_json(
    tmp_path: Path, coco_val: tuple[Path, Path], pose_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000000196141.jpg", "000000000785.jpg"):
        (images / name).write_bytes((coco_val[1] / name).read_bytes())
    gray = images / "gray.png"
    cv2.imwrite(str(gray), cv2.imread(str(coco_val[1] / "000000000785.jpg"), cv2.IMREAD_GRAYSCALE))
    out_dir, out_json = tmp_path / "annotated", tmp_path / "poses.json"
    code = main(["predict", str(images), *pose_args, "--out", str(out_dir), "--json", str(out_json)])
    assert code == 0
    assert "3 images: 3 ok, 0 failed" in capsys.readouterr().out
    results = json.loads(out_json.read_text())
    assert [Path(r["file"]).name for r in results] == ["000000000785.jpg", "000000196141.jpg", "gray.png"]
    for result in results:
        assert result["people"]
        for person in result["people"]:
            assert len(person["keypoints"]) == 17 and all(len(k) == 3 for k in person["keypoints"])
    for result in results:
        written = cv2.imread(str(out_dir / Path(result["file"]).name))
        original = cv2.imread(result["file"])
        assert written is not None and written.shape == original.shape
        assert not np.array_equal(written, original)  # something was drawn


def test_predict_demo(pose_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--demo", *pose_args]) == 0
    out = capsys.readouterr().out
    assert "3 images: 3 ok, 0 failed" in out and "000000000139.jpg" in out


def test_missing_model_file_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["predict", "x.jpg", "--pose", "rtmpose-t", "--pose-weights", str(tmp_path / "nope.pth")])
    assert code == 1
    err = capsys.readouterr().err
    assert "nope.pth" in err and "Traceback" not in err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    assert main(["detect", "x.jpg", "--det", str(bad), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bad.onnx" in err
    assert main(["-v", "detect", "x.jpg", "--det", str(bad), "--device", "cpu"]) == 1
    assert "Traceback" in capsys.readouterr().err  # -v adds the traceback


def test_eval_with_gt_boxes_writes_metrics(
    tmp_path: Path,
    data_dir: Path,
    coco_val: tuple[Path, Path],
    pose_args: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two images of the subset (random weights: the AP is meaningless, the plumbing is real)."""
    ann = json.loads(coco_val[0].read_text())
    keep = {785, 40083}
    small = {
        **ann,
        "images": [i for i in ann["images"] if i["id"] in keep],
        "annotations": [a for a in ann["annotations"] if a["image_id"] in keep],
    }
    ann_file, metrics = tmp_path / "ann.json", tmp_path / "metrics.json"
    ann_file.write_text(json.dumps(small))
    code = main(
        ["eval", "--ann", str(ann_file), "--images", str(coco_val[1]), *pose_args, "--metrics", str(metrics)]
    )
    assert code == 0
    written = json.loads(metrics.read_text())
    assert 0.0 <= written["AP"] <= 1.0 and written["num_images"] == 2


def test_models_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "rtmpose-m" in out and "rtmdet-nano" in out and "offline" in out
    target = tmp_path / "det.onnx"
    assert main(["export", "rtmdet-nano", "--out", str(target)]) == 0
    import onnx

    model = onnx.load(str(target))
    assert [o.name for o in model.graph.output] == ["scores", "boxes"]
    assert main(["export", str(target), "--out", str(tmp_path / "x.onnx")]) == 2  # a file needs --task
