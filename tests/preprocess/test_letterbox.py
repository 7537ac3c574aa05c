"""Letterbox: mmdet's keep-ratio resize + pad; torch agrees with the cv2 reference; boxes map back."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtpose.errors import ImageDecodeError
from rtpose.preprocess.letterbox import (
    letterbox_numpy,
    letterbox_size,
    letterbox_torch,
    unletterbox_boxes,
    unletterbox_boxes_torch,
)


def test_sizes_follow_mmdet_rounding() -> None:
    assert letterbox_size((427, 640), (320, 320)) == (214, 320)  # 213.5 + 0.5 -> 214
    assert letterbox_size((640, 427), (320, 320)) == (320, 214)
    assert letterbox_size((100, 100), (640, 640)) == (640, 640)  # upscaling too


def test_canvas_is_resized_image_then_padding() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(427, 640, 3), dtype=np.uint8)
    canvas, scale = letterbox_numpy(image, (320, 320), pad_value=114)
    assert canvas.shape == (320, 320, 3) and canvas.dtype == np.uint8
    np.testing.assert_array_equal(canvas[:214], cv2.resize(image, (320, 214), interpolation=cv2.INTER_LINEAR))
    assert np.all(canvas[214:] == 114)
    np.testing.assert_allclose(scale, [320 / 640, 214 / 427])


def test_torch_letterbox_is_within_one_level_of_cv2(coco_val: tuple[Path, Path]) -> None:
    images = [cv2.imread(str(p)) for p in sorted(coco_val[1].glob("*.jpg"))[:12]]
    canvases, scales = letterbox_torch([torch.from_numpy(i) for i in images], (320, 320))
    worst, mean = 0, 0.0
    for image, canvas, scale in zip(images, canvases, scales, strict=True):
        ref, ref_scale = letterbox_numpy(image, (320, 320))
        diff = np.abs(canvas.numpy().astype(int) - ref.astype(int))
        worst, mean = max(worst, int(diff.max())), mean + float(diff.mean()) / len(images)
        np.testing.assert_allclose(scale.numpy(), ref_scale)
    print(f"letterbox torch vs cv2 on 12 COCO images: max abs diff {worst}, mean {mean:.3f} levels")
    assert worst <= 1 and mean < 0.2  # cv2 rounds 11-bit fixed-point weights; torch computes in float


def test_same_size_batch_tensor() -> None:
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, size=(3, 90, 160, 3), dtype=np.uint8))
    canvases, scales = letterbox_torch(images, (64, 64), pad_value=0)
    assert canvases.shape == (3, 64, 64, 3) and torch.all(canvases[:, 36:] == 0)
    assert scales.shape == (3, 2)


def test_boxes_map_back_to_the_image_and_are_clipped() -> None:
    image = np.zeros((427, 640, 3), np.uint8)
    _, scale = letterbox_numpy(image, (320, 320))
    net_boxes = np.array([[10.0, 20.0, 100.0, 200.0], [-5.0, -5.0, 330.0, 330.0]])
    boxes = unletterbox_boxes(net_boxes, scale, (427, 640))
    np.testing.assert_allclose(boxes[0], [20.0, 20.0 * 427 / 214, 200.0, 200.0 * 427 / 214], rtol=1e-6)
    np.testing.assert_allclose(boxes[1], [0, 0, 640, 427])
    torch_boxes = unletterbox_boxes_torch(torch.from_numpy(net_boxes), torch.from_numpy(scale), (427, 640))
    np.testing.assert_allclose(torch_boxes.numpy(), boxes, rtol=1e-6)


def test_bad_images_are_clear_errors() -> None:
    with pytest.raises(ImageDecodeError, match=r"\(H, W, 3\)"):
        letterbox_numpy(np.zeros((10, 10), np.uint8), (32, 32))
    with pytest.raises(ImageDecodeError, match="uint8"):
        letterbox_numpy(np.zeros((10, 10, 3), np.float32), (32, 32))
    with pytest.raises(ImageDecodeError, match="empty"):
        letterbox_numpy(np.zeros((0, 10, 3), np.uint8), (32, 32))
    with pytest.raises(ImageDecodeError, match="no images"):
        letterbox_torch([], (32, 32))


@pytest.mark.gpu
def test_cuda_letterbox_matches_cpu() -> None:
    images = [
        torch.from_numpy(np.random.default_rng(s).integers(0, 256, size=(300 + s, 500, 3), dtype=np.uint8))
        for s in range(3)
    ]
    cpu, cpu_scales = letterbox_torch(images, (320, 320))
    gpu, gpu_scales = letterbox_torch([i.cuda() for i in images], (320, 320))
    assert gpu.is_cuda
    assert int((gpu.cpu().int() - cpu.int()).abs().max()) <= 1
    torch.testing.assert_close(gpu_scales, cpu_scales)
