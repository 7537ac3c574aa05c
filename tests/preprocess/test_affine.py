"""Affine crops: MMPose's recipe, the official fixture, NumPy/OpenCV vs torch, and the way back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.decode.image import decode_image
from rtpose.errors import RtposeError
from rtpose.preprocess.affine import (
    bbox_xyxy_to_center_scale,
    boxes_to_affine_matrices,
    crop_affine_matrices,
    fix_aspect_ratio,
    invert_affine_matrices,
    transform_points,
    warp_crops_numpy,
    warp_crops_torch,
)
from rtpose.preprocess.normalize import normalize_numpy, normalize_torch

RTMPOSE_MEAN = (123.675, 116.28, 103.53)
RTMPOSE_STD = (58.395, 57.12, 57.375)
INPUT_SIZE = (256, 192)

# From models/rtmpose_official_arch/README.md, "Input crops": annotation id -> (centre, size (w, h), M).
FIXTURE_CROPS = {
    442619: (
        (390.140, 218.070),
        (325.0125, 433.3500),
        [[0.590746510, 0, -134.473843], [0, 0.590746510, -0.824091]],
    ),
    198196: (
        (125.435, 198.305),
        (218.3875, 291.1833),
        [[0.879171198, 0, -14.278839], [0, 0.879171198, -46.344044]],
    ),
    1709486: (
        (381.880, 266.115),
        (173.8219, 231.7625),
        [[1.104579041, 0, -325.816644], [0, 1.104579041, -165.945052]],
    ),
    462274: (
        (424.565, 216.725),
        (392.3906, 523.1875),
        [[0.489308326, 0, -111.743190], [0, 0.489308326, 21.954653]],
    ),
}


@pytest.fixture(scope="module")
def fixture_annotations(coco_val: tuple[Path, Path]) -> list[dict]:
    """The README's selection: first 4 by (image_id, id), iscrowd 0, >= 12 keypoints, w >= 64, h >= 128,
    one per image."""
    annotations = json.loads(coco_val[0].read_text())["annotations"]
    chosen: list[dict] = []
    used_images: set[int] = set()
    for ann in sorted(annotations, key=lambda a: (a["image_id"], a["id"])):
        w, h = ann["bbox"][2:]
        if ann["iscrowd"] or ann["num_keypoints"] < 12 or w < 64 or h < 128 or ann["image_id"] in used_images:
            continue
        chosen.append(ann)
        used_images.add(ann["image_id"])
        if len(chosen) == 4:
            break
    return chosen


def _xywh_to_xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def test_fixture_selection_and_matrices(fixture_annotations: list[dict]) -> None:
    assert [a["id"] for a in fixture_annotations] == list(FIXTURE_CROPS)
    boxes = np.array([_xywh_to_xyxy(a["bbox"]) for a in fixture_annotations], dtype=np.float64)
    centers, scales = bbox_xyxy_to_center_scale(boxes, padding=1.25)
    scales = fix_aspect_ratio(scales, 192 / 256)
    matrices = crop_affine_matrices(centers, scales, INPUT_SIZE)
    for i, (center, size, matrix) in enumerate(FIXTURE_CROPS.values()):
        np.testing.assert_allclose(centers[i], center, atol=1e-3)
        np.testing.assert_allclose(scales[i], size, atol=1e-3)
        np.testing.assert_allclose(matrices[i], matrix, atol=1e-5)
    np.testing.assert_allclose(boxes_to_affine_matrices(boxes, INPUT_SIZE), matrices)


def _fixture_inputs(coco_val: tuple[Path, Path], fixture_annotations: list[dict]) -> tuple[list, np.ndarray]:
    images_by_id = {img["id"]: img["file_name"] for img in json.loads(coco_val[0].read_text())["images"]}
    images = [decode_image(coco_val[1] / images_by_id[a["image_id"]]) for a in fixture_annotations]
    boxes = np.array([_xywh_to_xyxy(a["bbox"]) for a in fixture_annotations], dtype=np.float64)
    return images, boxes_to_affine_matrices(boxes, INPUT_SIZE)


def test_numpy_crops_reproduce_official_input(
    coco_val: tuple[Path, Path], models_dir: Path, fixture_annotations: list[dict]
) -> None:
    expected = np.load(models_dir / "rtmpose_official_arch" / "rtmpose-t_input.npy")
    images, matrices = _fixture_inputs(coco_val, fixture_annotations)
    crops = np.concatenate(
        [warp_crops_numpy(img, matrices[i : i + 1], INPUT_SIZE) for i, img in enumerate(images)]
    )
    batch = normalize_numpy(crops, RTMPOSE_MEAN, RTMPOSE_STD, "RGB")
    assert batch.shape == expected.shape == (4, 3, 256, 192) and batch.dtype == np.float32
    max_diff = float(np.abs(batch - expected).max())
    print(f"numpy crops vs rtmpose-t_input.npy: max abs diff {max_diff:.3g}")
    assert max_diff < 1e-5


def test_torch_crops_match_opencv_on_real_images(
    coco_val: tuple[Path, Path], models_dir: Path, fixture_annotations: list[dict]
) -> None:
    expected = np.load(models_dir / "rtmpose_official_arch" / "rtmpose-t_input.npy")
    images, matrices = _fixture_inputs(coco_val, fixture_annotations)
    pixel_diffs = []
    batches = []
    for i, img in enumerate(images):
        reference = warp_crops_numpy(img, matrices[i : i + 1], INPUT_SIZE)
        crops = warp_crops_torch(torch.from_numpy(img), torch.from_numpy(matrices[i : i + 1]), INPUT_SIZE)
        assert crops.dtype == torch.uint8 and tuple(crops.shape) == reference.shape
        pixel_diffs.append(np.abs(crops.numpy().astype(int) - reference.astype(int)))
        batches.append(normalize_torch(crops, RTMPOSE_MEAN, RTMPOSE_STD, "RGB"))
    diffs = np.concatenate(pixel_diffs)
    fraction = float((diffs > 0).mean())
    print(f"torch vs cv2 crops: max {diffs.max()} grey levels, {fraction:.2e} of values differ")
    assert diffs.max() <= 1 and fraction < 1e-3
    normalized_diff = float(np.abs(torch.cat(batches).numpy() - expected).max())
    print(f"torch crops vs rtmpose-t_input.npy: max abs diff {normalized_diff:.3g}")
    assert normalized_diff < 1.0 / 57.0 + 1e-5  # at most one grey level / std


def test_many_boxes_one_batch_including_outside_and_tiny(coco_val: tuple[Path, Path]) -> None:
    image = decode_image(coco_val[1] / "000000000785.jpg")
    boxes = np.array([
        [280.8, 44.7, 499.5, 391.4],     # a person
        [-100.0, -50.0, 120.0, 300.0],   # reaching past the top-left corner
        [600.0, 400.0, 700.0, 500.0],    # mostly outside
        [10.0, 10.0, 10.5, 11.0],        # tiny: magnified ~300x
        [1000.0, 1000.0, 1100.0, 1200.0],  # entirely outside: all black
    ], dtype=np.float32)  # fmt: skip
    matrices = boxes_to_affine_matrices(boxes, INPUT_SIZE)
    reference = warp_crops_numpy(image, matrices, INPUT_SIZE)
    crops = warp_crops_torch(torch.from_numpy(image), torch.from_numpy(matrices), INPUT_SIZE).numpy()
    diffs = np.abs(crops.astype(int) - reference.astype(int))
    assert diffs.max() <= 2 and (diffs > 0).mean() < 1e-3
    assert reference[4].max() == 0 and crops[4].max() == 0
    assert warp_crops_torch(torch.from_numpy(image), torch.zeros((0, 2, 3)), INPUT_SIZE).shape == (
        0,
        256,
        192,
        3,
    )


def test_inverse_maps_crop_centre_back_to_box_centre() -> None:
    boxes = np.array([[10.0, 20.0, 110.0, 220.0], [0.0, 0.0, 300.0, 100.0]])
    matrices = boxes_to_affine_matrices(boxes, INPUT_SIZE)
    inverse = invert_affine_matrices(matrices)
    centre = np.array([[[96.0, 128.0]], [[96.0, 128.0]]])
    np.testing.assert_allclose(
        transform_points(centre, inverse)[:, 0], [[60.0, 120.0], [150.0, 50.0]], atol=1e-9
    )
    points = np.random.default_rng(0).uniform(-50, 400, (2, 17, 2))
    roundtrip = transform_points(transform_points(points, matrices), inverse)
    np.testing.assert_allclose(roundtrip, points, atol=1e-9)
    # MMPose's own way back: kpt / input_size * scale + centre - scale / 2
    centers, scales = bbox_xyxy_to_center_scale(boxes)
    scales = fix_aspect_ratio(scales, 192 / 256)
    crop_points = np.random.default_rng(1).uniform(0, 192, (2, 17, 2))
    mmpose_way = crop_points / np.array([192, 256]) * scales[:, None] + centers[:, None] - scales[:, None] / 2
    np.testing.assert_allclose(transform_points(crop_points, inverse), mmpose_way, atol=1e-9)


def test_torch_math_matches_numpy() -> None:
    boxes = np.random.default_rng(2).uniform(0, 500, (6, 4))
    boxes[:, 2:] += boxes[:, :2]
    matrices_np = boxes_to_affine_matrices(boxes, INPUT_SIZE)
    matrices_t = boxes_to_affine_matrices(torch.from_numpy(boxes), INPUT_SIZE)
    assert isinstance(matrices_t, torch.Tensor)
    np.testing.assert_allclose(matrices_t.numpy(), matrices_np, rtol=1e-12)
    np.testing.assert_allclose(
        invert_affine_matrices(matrices_t).numpy(), invert_affine_matrices(matrices_np)
    )
    points = np.random.default_rng(3).uniform(0, 200, (6, 17, 2)).astype(np.float32)
    np.testing.assert_allclose(
        transform_points(torch.from_numpy(points), matrices_t).numpy(),
        transform_points(points, matrices_np), rtol=1e-5, atol=1e-4,
    )  # fmt: skip


def test_normalize_torch_matches_numpy_both_orders() -> None:
    batch = np.random.default_rng(4).integers(0, 256, (3, 8, 5, 3), dtype=np.uint8)
    for order in ("RGB", "BGR"):
        ref = normalize_numpy(batch, RTMPOSE_MEAN, RTMPOSE_STD, order)
        out = normalize_torch(torch.from_numpy(batch), RTMPOSE_MEAN, RTMPOSE_STD, order)
        assert ref.shape == (3, 3, 8, 5)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-6)
    rgb = normalize_numpy(batch, (0, 0, 0), (1, 1, 1), "RGB")
    assert np.array_equal(rgb[:, 0], batch[..., 2].astype(np.float32))  # first network channel is R


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_normalize_numpy_is_exactly_the_textbook_formula(dtype: type) -> None:
    """Plane by plane into NCHW gives the very floats of convert, reverse, subtract, divide, transpose."""
    batch = np.random.default_rng(5).integers(0, 256, (2, 7, 6, 3)).astype(dtype)
    for order in ("RGB", "BGR"):
        channels = batch[..., ::-1] if order == "RGB" else batch
        textbook = (channels.astype(np.float32) - np.float32(RTMPOSE_MEAN)) / np.float32(RTMPOSE_STD)
        out = normalize_numpy(batch, RTMPOSE_MEAN, RTMPOSE_STD, order)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert np.array_equal(out, textbook.transpose(0, 3, 1, 2))


def test_bad_shapes_raise_clear_errors() -> None:
    with pytest.raises(RtposeError, match=r"boxes must have shape \(N, 4\)"):
        bbox_xyxy_to_center_scale(np.zeros((3, 5)))
    with pytest.raises(RtposeError, match=r"image must have shape \(H, W, 3\)"):
        warp_crops_numpy(np.zeros((10, 10), np.uint8), np.zeros((1, 2, 3)), INPUT_SIZE)
    with pytest.raises(RtposeError, match=r"affine matrices must have shape"):
        warp_crops_torch(torch.zeros((10, 10, 3), dtype=torch.uint8), torch.zeros((1, 3, 3)), INPUT_SIZE)
    with pytest.raises(RtposeError, match="batch of BGR images"):
        normalize_numpy(np.zeros((8, 5, 3)), RTMPOSE_MEAN, RTMPOSE_STD, "RGB")


@pytest.mark.gpu
def test_cuda_crops_match_opencv(coco_val: tuple[Path, Path]) -> None:
    image = decode_image(coco_val[1] / "000000000785.jpg")
    boxes = np.array(
        [[280.8, 44.7, 499.5, 391.4], [-100.0, -50.0, 120.0, 300.0], [10, 10, 10.5, 11]], np.float32
    )
    matrices = boxes_to_affine_matrices(boxes, INPUT_SIZE)
    reference = warp_crops_numpy(image, matrices, INPUT_SIZE)
    crops = warp_crops_torch(torch.from_numpy(image).cuda(), torch.from_numpy(matrices).cuda(), INPUT_SIZE)
    assert crops.is_cuda
    diffs = np.abs(crops.cpu().numpy().astype(int) - reference.astype(int))
    assert diffs.max() <= 2 and (diffs > 0).mean() < 1e-3
    batch = normalize_torch(crops, RTMPOSE_MEAN, RTMPOSE_STD, "RGB")
    np.testing.assert_allclose(
        batch.cpu().numpy(),
        normalize_numpy(reference, RTMPOSE_MEAN, RTMPOSE_STD, "RGB"),
        atol=2.0 / 57 + 1e-5,
    )
