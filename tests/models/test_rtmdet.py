"""RTMDet network: output layout, point priors, distance decoding, shared convs, ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.models import get_spec
from rtpose.models.layers import fuse_conv_bn
from rtpose.models.rtmdet import RTMDet, level_priors


def _anchor_count(height: int, width: int) -> int:
    return sum((height // s) * (width // s) for s in (8, 16, 32))


@pytest.mark.parametrize("size", [(320, 320), (256, 384)])
def test_output_shapes(size: tuple[int, int]) -> None:
    with torch.no_grad():
        scores, boxes = RTMDet("nano").eval()(torch.randn(2, 3, *size))
    assert scores.shape == (2, _anchor_count(*size), 1)
    assert boxes.shape == (2, _anchor_count(*size), 4)
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1


def test_zero_distances_put_boxes_on_the_priors() -> None:
    model = RTMDet("nano").eval()
    with torch.no_grad():
        for conv in model.bbox_head.rtm_reg:
            conv.weight.zero_()
            conv.bias.zero_()
        _, boxes = model(torch.randn(1, 3, 64, 96))
    expected = torch.cat([level_priors(64 // s, 96 // s, s, boxes) for s in (8, 16, 32)])
    assert torch.equal(boxes[0, :, :2], expected) and torch.equal(boxes[0, :, 2:], expected)
    # row-major, offset 0: the second point of level 0 is (8, 0), the first of row 1 is (0, 8)
    assert expected[1].tolist() == [8.0, 0.0] and expected[96 // 8].tolist() == [0.0, 8.0]


def test_distances_are_scaled_by_the_stride() -> None:
    model = RTMDet("nano").eval()
    with torch.no_grad():
        for conv in model.bbox_head.rtm_reg:
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        _, boxes = model(torch.randn(1, 3, 64, 64))
    first_of_level = [0, 64, 64 + 16]  # 8x8, 4x4, 2x2 points
    for index, stride in zip(first_of_level, (8, 16, 32), strict=True):
        assert boxes[0, index].tolist() == [-1.0 * stride, -2.0 * stride, 3.0 * stride, 4.0 * stride]


def test_input_not_divisible_by_32_is_rejected() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        RTMDet("nano")(torch.zeros(1, 3, 100, 96))


def test_state_dict_names_are_mmdet_names(models_dir: Path) -> None:
    import onnx

    named_in_export = {
        init.name
        for init in onnx.load(
            str(models_dir / "rtmdet_nano_person_mmdeploy" / "end2end.onnx")
        ).graph.initializer
        if init.name.startswith(("backbone.", "neck.", "bbox_head."))
    }
    keys = RTMDet("nano").state_dict()
    assert named_in_export and named_in_export <= set(keys)
    assert "backbone.stem.0.conv.weight" in keys and "neck.out_convs.2.pointwise_conv.bn.running_var" in keys


def test_shared_head_convs_keep_separate_batchnorms() -> None:
    head = RTMDet("tiny").bbox_head
    assert head.cls_convs[2][1].conv is head.cls_convs[0][1].conv
    assert head.cls_convs[2][1].bn is not head.cls_convs[0][1].bn
    keys = RTMDet("tiny").state_dict()
    assert "bbox_head.cls_convs.2.1.conv.weight" in keys  # as in mmdet checkpoints


def test_fusing_batchnorm_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = RTMDet("tiny").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
        x = torch.randn(1, 3, 96, 96)
        before = model(x)
        after = fuse_conv_bn(model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_onnx_export_has_dynamic_batch(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = fuse_conv_bn(RTMDet("nano"))
    path = tmp_path / "rtmdet_nano.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 320, 320),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["scores", "boxes"],
        dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}, "boxes": {0: "batch"}},
    )
    x = torch.randn(3, 3, 320, 320)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, boxes = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref_scores, ref_boxes = model(x)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-2)


@pytest.mark.parametrize("name", ["rtmdet-nano", "rtmdet-tiny", "rtmdet-s", "rtmdet-m"])
def test_detector_specs(name: str) -> None:
    spec = get_spec(name)
    assert spec.task == "detector" and spec.channel_order == "BGR"
    assert spec.mean == (103.53, 116.28, 123.675) and spec.std == (57.375, 57.12, 58.395)
    assert spec.extra["pad_value"] == 114
    assert spec.input_size == ((320, 320) if name == "rtmdet-nano" else (640, 640))


def test_nano_spec_offers_official_pth_and_offline_onnx() -> None:
    formats = {w.format: w for w in get_spec("rtmdet-nano").weights}
    assert formats["pth"].url.endswith("rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.pth")
    assert formats["onnx-mmdeploy"].url is None
    assert formats["onnx-mmdeploy"].offline_names == ("rtmdet_nano_person_mmdeploy/end2end.onnx",)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    model = RTMDet("nano").eval()
    x = torch.randn(2, 3, 320, 320)
    with torch.no_grad():
        cpu_scores, cpu_boxes = model(x)
        gpu_scores, gpu_boxes = model.cuda()(x.cuda())
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gpu_boxes.cpu(), cpu_boxes, atol=1e-2, rtol=1e-3)
