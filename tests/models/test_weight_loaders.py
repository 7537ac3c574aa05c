"""Loaders: strict official checkpoints, ONNX exports, and clear errors for files that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtpose.errors import WeightsError
from rtpose.models.loading import load_mmdeploy_onnx, load_pth, mmdeploy_nms_settings, read_state_dict
from rtpose.models.rtmdet import RTMDet
from rtpose.models.rtmpose import RTMPose


@pytest.fixture(scope="module")
def rtmpose_t_pth(models_dir: Path) -> Path:
    return models_dir / "rtmpose_official_arch" / "rtmpose-t_random_official_format.pth"


def test_wrong_architecture_names_keys_and_shapes(rtmpose_t_pth: Path) -> None:
    with pytest.raises(WeightsError, match="shape clashes") as info:
        load_pth(RTMPose("s"), rtmpose_t_pth)
    assert "backbone.stem.0.conv.weight" in str(info.value)
    with pytest.raises(WeightsError, match=r"missing: .*backbone\.") as info:
        load_pth(RTMDet("nano"), rtmpose_t_pth)
    assert "unexpected: " in str(info.value) and "shape clashes" in str(info.value)


def test_bare_half_state_dict_with_preprocessor_buffers_loads(rtmpose_t_pth: Path, tmp_path: Path) -> None:
    state = read_state_dict(rtmpose_t_pth)
    bare = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    bare["data_preprocessor.mean"] = torch.zeros(3, 1, 1)
    path = tmp_path / "bare.pth"
    torch.save(bare, path)
    model = RTMPose("t")
    load_pth(model, path)
    assert model.head.cls_x.weight.dtype == torch.float32
    torch.testing.assert_close(model.head.cls_x.weight, state["head.cls_x.weight"].half().float())


def test_truncated_checkpoint_is_a_weights_error(rtmpose_t_pth: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(rtmpose_t_pth.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_pth(RTMPose("t"), path)


def test_random_bytes_and_missing_files_are_weights_errors(tmp_path: Path) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(WeightsError, match="not a readable"):
        load_pth(RTMPose("t"), path)
    with pytest.raises(WeightsError, match="not a readable ONNX"):
        load_mmdeploy_onnx(RTMDet("nano"), path)
    with pytest.raises(WeightsError, match="not found"):
        load_pth(RTMPose("t"), tmp_path / "absent.pth")


def test_checkpoint_without_tensors_is_a_weights_error(tmp_path: Path) -> None:
    path = tmp_path / "meta_only.pth"
    torch.save({"meta": {"epoch": 3}, "state_dict": {"a": 1}}, path)
    with pytest.raises(WeightsError, match="no state dict"):
        load_pth(RTMPose("t"), path)


@pytest.mark.parametrize(
    "relative", ["rtmdet_nano_person_mmdeploy/end2end.onnx", "rtmdet_nano_person_zli20/rtmdet_nano.onnx"]
)
def test_both_nano_exports_load_and_fit_other_sizes_not(models_dir: Path, relative: str) -> None:
    model = load_mmdeploy_onnx(RTMDet("nano"), models_dir / relative)
    assert not model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(WeightsError, match="does not fit RTMDet"):
        load_mmdeploy_onnx(RTMDet("tiny"), models_dir / relative)


def test_pose_onnx_does_not_fit_a_detector(models_dir: Path) -> None:
    with pytest.raises(WeightsError, match="does not fit RTMDet"):
        load_mmdeploy_onnx(RTMDet("nano"), models_dir / "rtmpose_official_arch" / "rtmpose-t.onnx")


def test_nms_settings_of_the_mmdeploy_export(models_dir: Path) -> None:
    # detail.json says IoU 0.5, but the exported graph (what actually runs) uses 0.6
    settings = mmdeploy_nms_settings(models_dir / "rtmdet_nano_person_mmdeploy" / "end2end.onnx")
    assert settings.max_output_boxes_per_class == 200
    assert settings.iou_threshold == pytest.approx(0.6)
    assert settings.score_threshold == pytest.approx(0.05)
    with pytest.raises(WeightsError, match="no NonMaxSuppression"):
        mmdeploy_nms_settings(models_dir / "rtmpose_official_arch" / "rtmpose-t.onnx")
