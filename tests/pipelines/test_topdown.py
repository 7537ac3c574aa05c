"""TopDown: geometry with a fake pose engine, then the real RTMPose-t / RTMDet-nano engines end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rtpose.engines.base import Engine
from rtpose.errors import RtposeError
from rtpose.models.spec import ModelSpec
from rtpose.pipelines.processing import to_numpy
from rtpose.pipelines.topdown import TopDown
from rtpose.postprocess.simcc import decode_simcc
from rtpose.preprocess.affine import bbox_xyxy_to_center_scale, fix_aspect_ratio

# -- geometry, with a fake pose engine ------------------------------------------------------------


class BrightestPixelEngine(Engine):
    """A 'pose model' whose every keypoint is the brightest pixel of the crop, as one-hot SimCC logits."""

    backend = "fake"
    device = "cpu"
    output_names = ("simcc_x", "simcc_y")

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        array = to_numpy(batch)
        n, _, height, width = array.shape
        self.batch_sizes.append(n)
        flat = array.sum(axis=1).reshape(n, -1).argmax(axis=1)
        ys, xs = np.divmod(flat, width)
        simcc_x = np.full((n, 17, 2 * width), -1.0, np.float32)
        simcc_y = np.full((n, 17, 2 * height), -1.0, np.float32)
        simcc_x[np.arange(n), :, 2 * xs] = 5.0
        simcc_y[np.arange(n), :, 2 * ys] = 4.0
        return {"simcc_x": simcc_x, "simcc_y": simcc_y}


def _fake_spec(input_size: tuple[int, int] = (256, 192), channel_order: str = "RGB") -> ModelSpec:
    return ModelSpec(
        name="fake-simcc", task="pose-topdown", family="fake", arch="fake", input_size=input_size,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order=channel_order,  # type: ignore[arg-type]
        build=lambda: None, extra={"codec": "simcc", "simcc_split_ratio": 2.0, "bbox_padding": 1.25},
    )  # fmt: skip


def _dots_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A black image with one white dot inside each of 5 boxes: (image, boxes, dots)."""
    image = np.zeros((1000, 1000, 3), np.uint8)
    boxes = np.array([[20, 30, 120, 230], [400, 10, 700, 200], [200, 500, 260, 700],
                      [800, 800, 1000, 1000], [0, 900, 60, 960]], np.float32)  # fmt: skip
    dots = np.array([[70, 100], [550, 120], [231, 600], [900, 900], [30, 925]])
    for x, y in dots:
        image[y - 1 : y + 2, x - 1 : x + 2] = 255
    return image, boxes, dots


@pytest.mark.parametrize("processing", ["numpy", "torch"])
@pytest.mark.parametrize("input_size", [(256, 192), (192, 192)])
def test_keypoints_map_back_to_image_pixels(processing: str, input_size: tuple[int, int]) -> None:
    image, boxes, dots = _dots_image()
    engine = BrightestPixelEngine()
    pipeline = TopDown.from_engines(engine, _fake_spec(input_size), max_batch=2, processing=processing)  # type: ignore[arg-type]
    people = pipeline.predict_on_boxes(image, boxes, np.linspace(0.9, 0.5, 5))
    assert engine.batch_sizes == [2, 2, 1]  # all persons batched, chunked by max_batch
    assert len(people) == 5
    _, scales = bbox_xyxy_to_center_scale(boxes)
    scales = fix_aspect_ratio(scales, input_size[1] / input_size[0])
    for person, box, dot, scale in zip(people, boxes, dots, scales, strict=True):
        np.testing.assert_array_equal(person.bbox, box)
        assert person.keypoints is not None and person.keypoints.shape == (17, 2)
        assert person.keypoints.dtype == np.float32 and person.keypoint_scores is not None
        pixel = scale[0] / input_size[1]  # image pixels per crop pixel
        # the dot is 3x3 image pixels: its brightest crop pixel lies within a crop pixel of its centre
        assert np.abs(person.keypoints - dot).max() <= 1.0 + pixel, (person.keypoints[0], dot)
        np.testing.assert_array_equal(person.keypoint_scores, np.full(17, 4.0, np.float32))
    assert [round(p.score, 3) for p in people] == [0.9, 0.8, 0.7, 0.6, 0.5]


def test_no_boxes_runs_no_model_and_bad_boxes_are_refused() -> None:
    image, _, _ = _dots_image()
    engine = BrightestPixelEngine()
    pipeline = TopDown.from_engines(engine, _fake_spec())
    assert pipeline.predict_on_boxes(image, np.zeros((0, 4))) == []
    assert engine.batch_sizes == []
    with pytest.raises(RtposeError, match=r"boxes must have shape \(M, 4\)"):
        pipeline.predict_on_boxes(image, np.zeros((3, 5)))
    with pytest.raises(RtposeError, match="got 2 boxes but scores"):
        pipeline.predict_on_boxes(image, np.ones((2, 4)), [0.5])
    with pytest.raises(RtposeError, match="no detector"):
        pipeline(image)
    with pytest.raises(RtposeError, match=r"image must be a NumPy array"):
        pipeline.predict_on_boxes("not an image", np.ones((1, 4)))


def test_spec_without_known_codec_or_wrong_task_is_refused() -> None:
    spec = _fake_spec()
    bad_codec = ModelSpec(**{**spec.__dict__, "extra": {"codec": "nope"}})
    with pytest.raises(RtposeError, match="no decoder registered for codec 'nope'"):
        TopDown.from_engines(BrightestPixelEngine(), bad_codec)
    detector_spec = ModelSpec(**{**spec.__dict__, "task": "detector"})
    with pytest.raises(RtposeError, match="not a top-down pose model"):
        TopDown.from_engines(BrightestPixelEngine(), detector_spec)


# -- the real engines ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pose_only(rtpose_env: dict, random_rtmpose_t: Path) -> TopDown:
    return TopDown("rtmpose-t", det=None, pose_weights=random_rtmpose_t)


@pytest.fixture(scope="module")
def fixture_case(coco_val: tuple[Path, Path], models_dir: Path) -> dict:
    """The 4 annotated persons of the official RTMPose fixture, with the official logits."""
    data = json.loads(coco_val[0].read_text())
    files = {img["id"]: img["file_name"] for img in data["images"]}
    wanted = [442619, 198196, 1709486, 462274]
    anns = {a["id"]: a for a in data["annotations"] if a["id"] in wanted}
    folder = models_dir / "rtmpose_official_arch"
    return {
        "images": [coco_val[1] / files[anns[i]["image_id"]] for i in wanted],
        "boxes": [np.array(anns[i]["bbox"], np.float64) for i in wanted],
        "simcc_x": np.load(folder / "rtmpose-t_simcc_x.npy"),
        "simcc_y": np.load(folder / "rtmpose-t_simcc_y.npy"),
    }


def test_predict_on_boxes_reproduces_official_logits_decoded(pose_only: TopDown, fixture_case: dict) -> None:
    """Our crops + ONNX Runtime + decoding + the way back == the official logits decoded and mapped back
    with MMPose's formula (kpt / input_size * scale + centre - scale / 2)."""
    from rtpose.decode.image import decode_image

    official_kpts, official_scores = decode_simcc(fixture_case["simcc_x"], fixture_case["simcc_y"], 2.0)
    worst = 0.0
    for i, (path, (x, y, w, h)) in enumerate(zip(fixture_case["images"], fixture_case["boxes"], strict=True)):
        box = np.array([[x, y, x + w, y + h]])
        (person,) = pose_only.predict_on_boxes(decode_image(path), box)
        centre, scale = bbox_xyxy_to_center_scale(box)
        scale = fix_aspect_ratio(scale, 192 / 256)
        expected = official_kpts[i] / np.array([192, 256]) * scale + centre - scale / 2
        np.testing.assert_allclose(person.keypoint_scores, official_scores[i], atol=1e-3)
        worst = max(worst, float(np.abs(person.keypoints - expected).max()))
    print(f"keypoints vs official logits decoded: max abs diff {worst:.2e} px")
    assert worst < 1e-3


def test_numpy_and_torch_processing_agree_on_real_image(
    rtpose_env: dict, random_rtmpose_t: Path, pose_only: TopDown, fixture_case: dict
) -> None:
    from rtpose.decode.image import decode_image

    torch_processing = TopDown.from_engines(pose_only.pose_engine, pose_only.pose_spec, processing="torch")
    image = decode_image(fixture_case["images"][0])
    boxes = np.array([[280.8, 44.7, 499.5, 391.4], [100.0, 50.0, 300.0, 420.0], [-40.0, 200.0, 150.0, 500.0]])
    reference = pose_only.predict_on_boxes(image, boxes)
    candidate = torch_processing.predict_on_boxes(torch.from_numpy(image), torch.from_numpy(boxes))
    diffs = np.stack([np.abs(a.keypoints - b.keypoints) for a, b in zip(reference, candidate, strict=True)])
    score_diffs = np.stack(
        [np.abs(a.keypoint_scores - b.keypoint_scores) for a, b in zip(reference, candidate, strict=True)]
    )
    far = (diffs > 1).any(-1).mean()
    print(f"numpy vs torch processing: keypoints max {diffs.max():.3g} px, {far:.1%} > 1 px; "
          f"scores max {score_diffs.max():.3g}")  # fmt: skip
    # One grey level of crop difference moves random-weight logits slightly: allow rare argmax flips.
    assert (diffs > 1.0).any(-1).mean() <= 0.05
    assert score_diffs.max() < 0.05


# -- detector + pose, end to end ---------------------------------------------------------------------

NOBODY_IMAGE = "000000006818.jpg"  # zero person annotations (val2017_extra_index.json); RTMDet finds none


@pytest.fixture(scope="module")
def full_ort(rtpose_env: dict, random_rtmpose_t: Path) -> TopDown:
    return TopDown("rtmpose-t", "rtmdet-nano", pose_weights=random_rtmpose_t)


@pytest.fixture(scope="module")
def full_torch(rtpose_env: dict, random_rtmpose_t: Path) -> TopDown:
    return TopDown("rtmpose-t", "rtmdet-nano", backend="torch", pose_weights=random_rtmpose_t)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


def test_real_image_people_found_with_keypoints(full_ort: TopDown, coco_val: tuple[Path, Path]) -> None:
    from rtpose.decode.image import decode_image

    data = json.loads(coco_val[0].read_text())
    image_id = 196141
    gt = [a for a in data["annotations"] if a["image_id"] == image_id and a["num_keypoints"] >= 5]
    image = decode_image(coco_val[1] / "000000196141.jpg")
    people = full_ort(image)
    assert people, "RTMDet-nano found nobody in an image with 4 annotated people"
    for person in people:
        assert person.keypoints is not None and person.keypoints.shape == (17, 2)
        assert person.keypoint_scores is not None and person.keypoint_scores.shape == (17,)
        x1, y1, x2, y2 = person.bbox
        assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
        assert person.score >= full_ort.detector.score_thr  # type: ignore[union-attr]
    gt_boxes = [np.array([x, y, x + w, y + h]) for x, y, w, h in (a["bbox"] for a in gt)]
    matched = sum(any(_iou(p.bbox, g) > 0.5 for p in people) for g in gt_boxes)
    print(f"image {image_id}: {len(people)} detections, {matched} of {len(gt_boxes)} GT persons matched")
    assert matched >= len(gt_boxes) - 1


def test_ort_and_torch_backends_agree(
    full_ort: TopDown, full_torch: TopDown, coco_val: tuple[Path, Path]
) -> None:
    from rtpose.decode.image import decode_image

    image = decode_image(coco_val[1] / "000000196141.jpg")
    ort_people, torch_people = full_ort(image), full_torch(image)
    assert len(ort_people) == len(torch_people) > 0
    box_diff = max(
        float(np.abs(a.bbox - b.bbox).max()) for a, b in zip(ort_people, torch_people, strict=True)
    )
    kpt_diff = max(
        float(np.abs(a.keypoints - b.keypoints).max()) for a, b in zip(ort_people, torch_people, strict=True)
    )
    print(f"ort vs torch backend: boxes max {box_diff:.3g} px, keypoints max {kpt_diff:.3g} px")
    assert box_diff < 0.1 and kpt_diff <= 1.0


def test_numpy_and_torch_processing_agree_end_to_end(
    full_torch: TopDown, coco_val: tuple[Path, Path]
) -> None:
    """Letterbox, NMS, crops, normalisation, decoding in torch vs NumPy/OpenCV, same torch engines."""
    from rtpose.decode.image import decode_image
    from rtpose.pipelines.detector import Detector

    assert full_torch.processing == "numpy"  # torch engine on the CPU: the NumPy path by default
    det = full_torch.detector
    assert det is not None
    torch_path = TopDown.from_engines(
        full_torch.pose_engine,
        full_torch.pose_spec,
        Detector.from_engine(det.engine, det.spec, processing="torch"),
        processing="torch",
    )
    image = decode_image(coco_val[1] / "000000196141.jpg")
    reference, candidate = full_torch(image), torch_path(image)
    assert len(reference) == len(candidate) > 0
    box_diff = max(float(np.abs(a.bbox - b.bbox).max()) for a, b in zip(reference, candidate, strict=True))
    score_diff = max(abs(a.score - b.score) for a, b in zip(reference, candidate, strict=True))
    # Random weights turn a 0.1 px change of a box into unrelated keypoints, so the pose stage is compared
    # on the same boxes: the NumPy path on the torch path's boxes.
    boxes = np.stack([p.bbox for p in candidate])
    same_boxes = full_torch.predict_on_boxes(image, boxes, [p.score for p in candidate])
    kpt_diffs = np.stack(
        [np.abs(a.keypoints - b.keypoints).max(-1) for a, b in zip(same_boxes, candidate, strict=True)]
    )
    print(
        f"numpy vs torch processing end to end: boxes max {box_diff:.3g} px, scores max {score_diff:.2g}, "
        f"keypoints on the same boxes max {kpt_diffs.max():.3g} px"
    )
    assert box_diff < 0.5 and score_diff < 0.01
    assert (kpt_diffs > 1.0).mean() <= 0.05


def test_run_goes_on_after_bad_items(
    full_ort: TopDown, coco_val: tuple[Path, Path], data_dir: Path, tmp_path: Path
) -> None:
    real = coco_val[1] / "000000196141.jpg"
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(real.read_bytes()[:5000])
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    nobody = data_dir / "coco" / "val2017_extra" / NOBODY_IMAGE
    index = json.loads((data_dir / "coco" / "annotations" / "val2017_extra_index.json").read_text())
    assert {"file_name": NOBODY_IMAGE, "status": "zero_person_annotations"}.items() <= next(
        entry for entry in index["images"] if entry["file_name"] == NOBODY_IMAGE
    ).items()
    one_pixel = tmp_path / "one.png"
    import cv2

    cv2.imwrite(str(one_pixel), np.full((1, 1, 3), 128, np.uint8))
    sources = [
        truncated,
        tmp_path / "missing.jpg",
        real,
        noise,
        nobody,
        one_pixel,
        tmp_path / "empty_dir_glob*.jpg",
    ]
    results = list(full_ort.run(sources, progress=False))
    assert [r.file for r in results] == [str(s) for s in sources]
    assert [r.ok for r in results] == [False, False, True, False, True, True, False]
    assert "truncated.jpg" in results[0].error and "corrupt/truncated" in results[0].error  # type: ignore[operator]
    assert "file not found" in results[1].error  # type: ignore[operator]
    assert results[2].people and (results[2].width, results[2].height) == (640, 429)
    assert results[4].people == []
    assert results[5].people == [] and (results[5].width, results[5].height) == (1, 1)
    as_json = [r.to_json() for r in results]
    json.dumps(as_json)  # serialisable
    assert as_json[2]["people"][0]["keypoints"][0][2] == pytest.approx(
        float(results[2].people[0].keypoint_scores[0]), abs=1e-4
    )  # type: ignore[index]


@pytest.mark.gpu
def test_cuda_pipeline_matches_cpu_reference(
    rtpose_env: dict, random_rtmpose_t: Path, full_ort: TopDown, coco_val: tuple[Path, Path]
) -> None:
    """torch engines on CUDA with pre/post-processing on the device vs the ONNX Runtime + NumPy path."""
    from rtpose.decode.image import decode_image

    gpu = TopDown("rtmpose-t", "rtmdet-nano", backend="torch", device="cuda", pose_weights=random_rtmpose_t)
    assert gpu.processing == "torch" and gpu.detector is not None and gpu.detector.processing == "torch"
    image = decode_image(coco_val[1] / "000000196141.jpg")
    reference, candidate = full_ort(image), gpu(image)
    assert len(reference) == len(candidate) > 0
    box_diff = max(float(np.abs(a.bbox - b.bbox).max()) for a, b in zip(reference, candidate, strict=True))
    assert box_diff < 0.5
    boxes = np.stack([p.bbox for p in candidate])
    same_boxes = full_ort.predict_on_boxes(image, boxes, [p.score for p in candidate])
    kpt_diffs = np.stack(
        [np.abs(a.keypoints - b.keypoints).max(-1) for a, b in zip(same_boxes, candidate, strict=True)]
    )
    print(
        f"cuda vs cpu: boxes max {box_diff:.3g} px, keypoints on the same boxes max {kpt_diffs.max():.3g} px"
    )
    assert (kpt_diffs > 1.0).mean() <= 0.05


def test_onnx_runtime_threads_spin_only_without_a_second_session(
    pose_only: TopDown, full_ort: TopDown
) -> None:
    """With a detector two sessions take turns, and spinning threads of one only slow the other."""

    def spins(engine) -> str:  # type: ignore[no-untyped-def]
        return engine.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning"
        )

    assert spins(pose_only.pose_engine) == "1"
    assert full_ort.detector is not None
    assert spins(full_ort.pose_engine) == "0" and spins(full_ort.detector.engine) == "0"
