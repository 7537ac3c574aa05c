"""The batched top-down hot path: `predict_batch`, device-side preprocessing, GPU decoding, stage timing.

CPU tests run the torch processing path on the CPU against the NumPy/OpenCV reference with the same
engines (real RTMDet-nano weights, official-format random RTMPose-t). GPU tests (marked `gpu`) compare
the CUDA path with the CPU reference, GPU decoding with OpenCV, and compiled fp16 with fp32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from rtpose.decode.image import decode_image
from rtpose.engines.factory import create_engine
from rtpose.errors import ImageDecodeError, RtposeError
from rtpose.pipelines.detector import Detector
from rtpose.pipelines.processing import engine_input_rows
from rtpose.pipelines.topdown import TopDown
from rtpose.preprocess.affine import boxes_to_affine_matrices, warp_crops_torch
from rtpose.preprocess.device_batch import (
    ImagePack,
    crop_normalize_torch,
    letterbox_normalize_torch,
)
from rtpose.preprocess.letterbox import letterbox_torch
from rtpose.preprocess.normalize import normalize_torch
from rtpose.types import Person

#: people in all three, of three different sizes (640x429 with 4 people, 500x375, 481x640)
IMAGES = ("000000196141.jpg", "000000034417.jpg", "000000078915.jpg")
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


# -- device-side preprocessing == the single-image torch functions -----------------------------------


def _random_images() -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [
        torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 120), (64, 50))
    ]


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
def test_crops_of_all_images_in_one_gather_equal_per_image_crops(channel_order: str) -> None:
    images = _random_images()
    boxes = [
        np.array([[10, 5, 70, 80], [-20, 30, 60, 120]], np.float64),
        np.array([[5, 5, 45, 60]], np.float64),
    ]
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    pack = ImagePack(images)
    all_boxes = torch.from_numpy(np.concatenate(boxes))
    matrices = boxes_to_affine_matrices(all_boxes, (32, 24))
    out = torch.full((3, 3, 32, 24), float("nan"))
    result = crop_normalize_torch(pack, pack.crop_params([0, 0, 1]), matrices, (32, 24), mean, std,
                                  channel_order, out=out)  # fmt: skip
    assert result.data_ptr() == out.data_ptr()  # written into the given buffer, not a copy
    expected = torch.cat([
        normalize_torch(warp_crops_torch(image, boxes_to_affine_matrices(torch.from_numpy(b), (32, 24)),
                                         (32, 24)), MEAN, STD, channel_order)  # type: ignore[arg-type]
        for image, b in zip(images, boxes, strict=True)
    ])  # fmt: skip
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


def test_letterbox_of_all_images_equals_per_image_letterbox() -> None:
    images = [*_random_images(), _random_images()[0]]  # two of one size share one resize call
    mean, std = torch.tensor(MEAN[::-1]), torch.tensor(STD[::-1])
    batch, scales = letterbox_normalize_torch(images, (64, 64), 114, mean, std, "BGR")
    for index, image in enumerate(images):
        canvas, scale = letterbox_torch(image[None], (64, 64), 114)
        expected = normalize_torch(canvas, MEAN[::-1], STD[::-1], "BGR")
        torch.testing.assert_close(batch[index : index + 1], expected, rtol=0, atol=0)
        assert scales[index] == tuple(scale[0].tolist())


def test_engine_input_rows_are_the_compiled_engines_graph_input() -> None:
    """With CUDA-graph buckets, the batch is written into the bucket's static input (the engine's own copy
    is then a no-op); any other engine gets a fresh tensor."""
    static = torch.zeros(4, 3, 8, 6)
    graph_engine = SimpleNamespace(graph_input=lambda n: static[:n])
    rows = engine_input_rows(graph_engine, 3, (3, 8, 6), "cpu")
    assert rows.data_ptr() == static.data_ptr() and tuple(rows.shape) == (3, 3, 8, 6)
    assert engine_input_rows(graph_engine, 5, (3, 8, 6), "cpu").data_ptr() != static.data_ptr()
    assert engine_input_rows(SimpleNamespace(), 2, (3, 8, 6), "cpu").shape == (2, 3, 8, 6)


# -- the pipeline on real images ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(rtpose_env: dict, random_rtmpose_t: Path) -> dict:
    """Torch engines on the CPU (the processing comparisons) and ONNX Runtime ones (the backends)."""
    pose_torch, pose_spec = create_engine(
        "rtmpose-t", task="pose-topdown", backend="torch", weights=random_rtmpose_t
    )
    det_torch, det_spec = create_engine("rtmdet-nano", task="detector", backend="torch")
    pose_ort, _ = create_engine("rtmpose-t", task="pose-topdown", backend="ort", weights=random_rtmpose_t)
    det_ort, _ = create_engine("rtmdet-nano", task="detector", backend="ort")
    return {"pose_torch": pose_torch, "det_torch": det_torch, "pose_ort": pose_ort, "det_ort": det_ort,
            "pose_spec": pose_spec, "det_spec": det_spec}  # fmt: skip


def _pipeline(engines: dict, backend: str, processing: str, **options) -> TopDown:
    detector = Detector.from_engine(engines[f"det_{backend}"], engines["det_spec"], processing=processing)  # type: ignore[arg-type]
    return TopDown.from_engines(
        engines[f"pose_{backend}"],
        engines["pose_spec"],
        detector,
        processing=processing,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def images(coco_val: tuple[Path, Path]) -> list[np.ndarray]:
    return [decode_image(coco_val[1] / name) for name in IMAGES]


def _keypoint_errors(reference: list[list[Person]], candidate: list[list[Person]]) -> np.ndarray:
    return np.concatenate([
        np.abs(a.keypoints - b.keypoints).max(-1)  # type: ignore[operator]
        for ref, cand in zip(reference, candidate, strict=True) for a, b in zip(ref, cand, strict=True)
    ])  # fmt: skip


def _boxes(people: list[Person]) -> np.ndarray:
    return np.stack([p.bbox for p in people]) if people else np.zeros((0, 4), np.float32)


def test_predict_batch_torch_processing_matches_numpy_reference(
    engines: dict, images: list[np.ndarray]
) -> None:
    reference = _pipeline(engines, "torch", "numpy").predict_batch(images)
    torch_path = _pipeline(engines, "torch", "torch")
    candidate = torch_path.predict_batch([torch.from_numpy(image) for image in images])
    assert [len(p) for p in candidate] == [len(p) for p in reference] and sum(map(len, reference)) >= 5
    box_diff = max(
        float(np.abs(_boxes(a) - _boxes(b)).max()) for a, b in zip(reference, candidate, strict=True)
    )
    score_diff = max(abs(a.score - b.score) for r, c in zip(reference, candidate, strict=True)
                     for a, b in zip(r, c, strict=True))  # fmt: skip
    # Keypoints on the same boxes: with random pose weights a 0.1 px box change moves keypoints anywhere.
    same_boxes = _pipeline(engines, "torch", "numpy").predict_on_boxes_batch(
        images,
        [_boxes(c) for c in candidate],
        [np.array([p.score for p in c], np.float32) for c in candidate],
    )
    errors = _keypoint_errors(same_boxes, candidate)
    print(f"predict_batch numpy vs torch processing: boxes max {box_diff:.3g} px, "
          f"scores max {score_diff:.2g}, keypoints max {errors.max():.3g} px, "
          f"{(errors > 1).mean():.2%} of {errors.size} over 1 px")  # fmt: skip
    assert box_diff < 0.5 and score_diff < 0.01
    assert (errors > 1.0).mean() <= 0.05


def test_predict_batch_equals_per_image_calls(engines: dict, images: list[np.ndarray]) -> None:
    for processing in ("numpy", "torch"):
        pipeline = _pipeline(engines, "torch", processing, max_batch=3)  # chunks across image borders
        batched = pipeline.predict_batch(images)
        single = [pipeline(image) for image in images]
        assert [len(p) for p in batched] == [len(p) for p in single]
        box_diff = max(
            float(np.abs(_boxes(a) - _boxes(b)).max()) for a, b in zip(batched, single, strict=True)
        )
        errors = _keypoint_errors(batched, single)
        print(
            f"{processing}: batch vs single boxes max {box_diff:.2g} px, keypoints max {errors.max():.2g} px"
        )
        # Batched convolutions round differently in the last bits: boxes move by ~1e-4 px, and random pose
        # weights turn that into a rare argmax flip. A mix-up of persons or images would move everything.
        assert box_diff < 1e-3 and np.median(errors) < 1e-3 and (errors > 1.0).mean() <= 0.03


def test_bytes_arrays_tensors_and_files_give_the_same_people(
    engines: dict, images: list[np.ndarray], coco_val: tuple[Path, Path]
) -> None:
    pipeline = _pipeline(engines, "ort", "numpy")
    path = coco_val[1] / IMAGES[0]
    from_array = pipeline(images[0])
    from_bytes = pipeline(path.read_bytes())
    from_tensor = pipeline(torch.from_numpy(images[0]))
    (from_file,) = list(pipeline.run([path], progress=False))
    assert from_array and from_file.ok and (from_file.width, from_file.height) == (640, 429)
    for other in (from_bytes, from_tensor, from_file.people):
        assert [p.to_json() for p in other] == [p.to_json() for p in from_array]
    with pytest.raises(ImageDecodeError, match="for files use run"):
        pipeline.predict_batch([str(path)])
    with pytest.raises(ImageDecodeError, match="corrupt/truncated"):
        pipeline(b"\xff\xd8 not really a jpeg")
    with pytest.raises(RtposeError, match="takes a list"):
        pipeline.predict_batch(images[0])


def test_ort_and_torch_backends_agree_on_predict_batch(engines: dict, images: list[np.ndarray]) -> None:
    ort_people = _pipeline(engines, "ort", "numpy").predict_batch(images)
    torch_people = _pipeline(engines, "torch", "numpy").predict_batch(images)
    assert [len(p) for p in ort_people] == [len(p) for p in torch_people]
    box_diff = max(
        float(np.abs(_boxes(a) - _boxes(b)).max()) for a, b in zip(ort_people, torch_people, strict=True)
    )
    errors = _keypoint_errors(ort_people, torch_people)
    print(f"ort vs torch: boxes max {box_diff:.3g} px, keypoints max {errors.max():.3g} px")
    # different convolution kernels: random pose weights flip a few argmaxes (as in test_topdown.py)
    assert box_diff < 0.1 and (errors > 1.0).mean() <= 0.05


def test_run_in_batches_matches_one_by_one_and_isolates_bad_items(
    engines: dict, coco_val: tuple[Path, Path], tmp_path: Path
) -> None:
    pipeline = _pipeline(engines, "ort", "numpy")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((coco_val[1] / IMAGES[0]).read_bytes()[:5000])
    sources = [coco_val[1] / IMAGES[0], truncated, tmp_path / "missing.jpg", coco_val[1] / IMAGES[1]]
    one_by_one = list(pipeline.run(sources, progress=False))
    batched = list(pipeline.run(sources, progress=False, batch_size=3))
    assert [r.ok for r in batched] == [True, False, False, True] == [r.ok for r in one_by_one]
    assert [r.to_json() for r in batched] == [r.to_json() for r in one_by_one]
    with pytest.raises(RtposeError, match="batch_size"):
        list(pipeline.run(sources, batch_size=0))


def test_profile_records_stage_times_and_is_off_by_default(
    engines: dict, coco_val: tuple[Path, Path]
) -> None:
    data = (coco_val[1] / IMAGES[0]).read_bytes()
    plain = _pipeline(engines, "ort", "numpy")
    plain(data)
    assert plain.last_timings == {}
    profiled = _pipeline(engines, "ort", "numpy", profile=True)
    profiled(data)
    timings = profiled.last_timings
    assert set(timings) == {"decode", "pre", "infer", "post", "total"}
    assert all(timings[stage] > 0 for stage in ("decode", "pre", "infer", "post"))
    assert timings["total"] == pytest.approx(sum(timings[s] for s in ("decode", "pre", "infer", "post")))
    profiled(decode_image(coco_val[1] / IMAGES[0]))
    assert profiled.last_timings["decode"] == 0.0  # nothing to decode: an array was given
    print("stage ms (ort, numpy processing):", {k: round(v, 1) for k, v in timings.items()})


# -- GPU --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Compiled engines in $RTPOSE_ENGINE_CACHE when set (scripts/gpu_check_pipeline.sh pre-builds them)."""
    path = os.environ.get("RTPOSE_ENGINE_CACHE") or str(tmp_path_factory.mktemp("engines"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTPOSE_CACHE", path)
        yield path


@pytest.mark.gpu
def test_gpu_path_matches_cpu_reference(images: list[np.ndarray], rtpose_env: dict) -> None:
    """Torch engines and torch pre/post-processing on CUDA vs the same on the CPU, real weights (RTMDet-nano,
    MoveNet with its INT8 emulation).

    The reference is the CPU *torch* processing, not NumPy/OpenCV: the one-grey-level rounding
    differences between our crop gather and cv2.warpAffine (~0.002% of the input values) move 80% of
    MoveNet's keypoints by more than 1 px at 192x192 -- in Google's TFLite runtime just as in our
    emulation (the INT8 network is that sensitive; its float version keeps 99%) -- so only identical
    crops make a strict test. NumPy vs torch processing is compared on the CPU in
    `test_predict_batch_torch_processing_matches_numpy_reference`."""
    gpu = TopDown("movenet-lightning", "rtmdet-nano", backend="torch", device="cuda")
    assert gpu.processing == "torch" and gpu.detector is not None and gpu.detector.processing == "torch"
    reference_pipeline = TopDown("movenet-lightning", "rtmdet-nano", backend="torch", processing="torch")
    reference = reference_pipeline.predict_batch(images)
    candidate = gpu.predict_batch(images)
    assert [len(p) for p in candidate] == [len(p) for p in reference]
    box_diff = max(
        float(np.abs(_boxes(a) - _boxes(b)).max()) for a, b in zip(reference, candidate, strict=True)
    )
    # The detector's convolutions use TF32 on the GPU, so boxes differ slightly: compare pose on one set.
    same_boxes = reference_pipeline.predict_on_boxes_batch(
        [torch.from_numpy(image) for image in images],
        [_boxes(c) for c in candidate],
        [np.array([p.score for p in c], np.float32) for c in candidate],
    )
    errors = _keypoint_errors(same_boxes, candidate)
    print(f"cuda vs cpu: boxes max {box_diff:.3g} px; keypoints on the same boxes max {errors.max():.3g} px, "
          f"{(errors <= 1).mean():.2%} within 1 px")  # fmt: skip
    assert box_diff < 0.5
    assert (errors <= 1.0).mean() >= 0.99


@pytest.mark.gpu
def test_gpu_decode_matches_cv2(coco_val: tuple[Path, Path], tmp_path: Path) -> None:
    from rtpose.decode.gpu import decode_image_gpu, decode_images_gpu, gpu_decoder_name

    paths = [coco_val[1] / name for name in IMAGES]
    decoded = decode_images_gpu([p.read_bytes() for p in paths], device="cuda")
    worst, mean = 0, 0.0
    for path, image in zip(paths, decoded, strict=True):
        assert image.device.type == "cuda" and image.dtype == torch.uint8 and image.is_contiguous()
        reference = decode_image(path)
        assert tuple(image.shape) == reference.shape
        diff = np.abs(image.cpu().numpy().astype(np.int16) - reference.astype(np.int16))
        worst, mean = max(worst, int(diff.max())), max(mean, float(diff.mean()))
    print(f"GPU decode ({gpu_decoder_name()}) vs cv2: max {worst} grey levels, mean {mean:.3f}")
    assert mean < 1.0 and worst <= 16
    png = tmp_path / "image.png"
    cv2.imwrite(str(png), decode_image(paths[1]))
    np.testing.assert_array_equal(decode_image_gpu(png).cpu().numpy(), decode_image(paths[1]))  # cv2 + upload
    truncated = paths[0].read_bytes()[:5000]
    with pytest.raises(ImageDecodeError, match=r"^cut\.jpg: "):
        decode_image_gpu(truncated, name="cut.jpg")
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image_gpu(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image_gpu(paths[0], max_pixels=1000)


@pytest.mark.gpu
def test_compiled_fp16_pipeline_matches_fp32(
    rtpose_env: dict, engine_cache: str, images: list[np.ndarray]
) -> None:
    """Real weights: RTMDet-nano and MoveNet's float network (its INT8 emulation cannot run in fp16).

    MoveNet's argmax decoding on 4-px heatmap cells turns fp16 rounding into cell flips: the eager cast
    keeps 78% of keypoints within 0.5 px and the compiled engine 82% on the H100 (the issue's 99%
    criterion is a known miss, measured by `rtpose.benchmarks.precision_check`). This test guards
    against a broken fp16 engine, which would move nearly every keypoint."""
    from rtpose.engines.compiled import load_compiled_engine, weights_digest
    from rtpose.models.factory import load_model

    movenet = load_model("movenet-lightning", task="pose-topdown")
    movenet.module.set_int8_emulation(False)
    weights_id = weights_digest(movenet.module)
    pipelines = {}
    for precision in ("fp32", "fp16"):
        engine = load_compiled_engine(movenet.module, movenet.spec, weights_id=weights_id, device="cuda",
                                      precision=precision, progress=False)  # fmt: skip
        detector = Detector("rtmdet-nano", backend="compiled", device="cuda", precision=precision)
        pipelines[precision] = TopDown.from_engines(engine, movenet.spec, detector, profile=True)
    fp32, fp16 = pipelines["fp32"], pipelines["fp16"]
    ref, cand = fp32.predict_batch(images), fp16.predict_batch(images)
    assert [len(p) for p in ref] == [len(p) for p in cand]
    box_diff = max(float(np.abs(_boxes(a) - _boxes(b)).max()) for a, b in zip(ref, cand, strict=True))
    same_boxes = fp32.predict_on_boxes_batch(
        images, [_boxes(c) for c in cand], [np.array([p.score for p in c], np.float32) for c in cand]
    )
    errors = _keypoint_errors(same_boxes, cand)
    print(f"compiled fp16 vs fp32: boxes max {box_diff:.3g} px; keypoints {(errors <= 0.5).mean():.2%} "
          f"within 0.5 px, max {errors.max():.3g} px; fp16 stage ms {fp16.last_timings}")  # fmt: skip
    assert box_diff < 2.0
    assert np.median(errors) <= 0.5 and (errors <= 0.5).mean() >= 0.75


@pytest.mark.gpu
def test_gpu_pose_batch_is_written_into_the_cuda_graph_input(
    rtpose_env: dict, engine_cache: str, random_rtmpose_t: Path, images: list[np.ndarray]
) -> None:
    pipeline = TopDown("rtmpose-t", "rtmdet-nano", backend="compiled", device="cuda", precision="fp16",
                       pose_weights=random_rtmpose_t)  # fmt: skip
    engine = pipeline.pose_engine
    rows = engine_input_rows(engine, 3, (3, 256, 192), "cuda")
    bucket = engine._graphs[engine.bucket_for(3)]  # type: ignore[attr-defined]
    assert rows.data_ptr() == bucket.static_input.data_ptr()
    people = pipeline.predict_batch([torch.from_numpy(image).cuda() for image in images])
    assert sum(map(len, people)) > 0
