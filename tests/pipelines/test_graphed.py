"""The graph-replayed top-down stages (`pipelines.graphed`) against the eager torch path.

On the CPU the steps run as plain functions, so these tests check their logic (fixed-size selection,
person slots, frame buffers, fallbacks) with real RTMDet-nano and random RTMPose-t weights; the GPU
test checks the captured graphs against the eager path with compiled engines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.decode.image import decode_image
from rtpose.engines.factory import create_engine
from rtpose.pipelines import graphed
from rtpose.pipelines.detector import Detector
from rtpose.pipelines.topdown import TopDown
from rtpose.types import Person


@pytest.fixture(scope="module")
def engines(rtpose_env: dict, random_rtmpose_t: Path) -> dict:
    pose, pose_spec = create_engine(
        "rtmpose-t", task="pose-topdown", backend="torch", weights=random_rtmpose_t
    )
    det, det_spec = create_engine("rtmdet-nano", task="detector", backend="torch")
    return {"pose": pose, "pose_spec": pose_spec, "det": det, "det_spec": det_spec}


@pytest.fixture(scope="module")
def frames(coco_val: tuple[Path, Path]) -> list[np.ndarray]:
    """Three images of one size (a 4-person image, its mirror image, and the image again)."""
    image = decode_image(coco_val[1] / "000000196141.jpg")
    return [image, np.ascontiguousarray(image[:, ::-1]), image.copy()]


def _pipeline(engines: dict, graphs: bool) -> TopDown:
    detector = Detector.from_engine(engines["det"], engines["det_spec"], processing="torch", graphs=graphs)
    return TopDown.from_engines(
        engines["pose"], engines["pose_spec"], detector, processing="torch", graphs=graphs
    )


def _json(people: list[list[Person]]) -> list[list[dict]]:
    return [[p.to_json() for p in image] for image in people]


def _graph_steps(pipeline: TopDown) -> tuple[int, set[int]]:
    """(detector steps made, buckets of the pose steps made on their frame buffers)."""
    cache = pipeline.detector._steps if pipeline.detector is not None else None
    made = [step for step in (cache.items.values() if cache else []) if step is not None]
    return len(made), {b for step in made for b, pose in step.frames.pose_steps.items() if pose is not None}


def test_step_cache_makes_a_step_on_the_second_sighting_and_keeps_the_recent_ones() -> None:
    cache, made = graphed.StepCache(after=2, size=2), []

    def make(key):  # type: ignore[no-untyped-def]
        return lambda: made.append(key) or key

    assert cache.get((1, 2, 3), make("a")) is None and made == []  # a shape seen once: op by op
    assert cache.get((1, 2, 3), make("a")) == "a" and cache.get((1, 2, 3), make("x")) == "a"
    for key, name in (((2, 2, 2), "b"), ((3, 3, 3), "c")):
        cache.get(key, make(name))
        assert cache.get(key, make(name)) == name
    assert made == ["a", "b", "c"] and list(cache.items) == [(2, 2, 2), (3, 3, 3)]  # "a" dropped


def test_graph_steps_give_the_eager_results(engines: dict, frames: list[np.ndarray]) -> None:
    eager, steps = _pipeline(engines, graphs=False), _pipeline(engines, graphs=True)
    assert steps.graphs and steps.detector is not None and steps.detector.graphs and not eager.graphs
    expected = eager.predict_batch(frames)
    assert _json(steps.predict_batch(frames)) == _json(expected)  # a new shape: op by op
    assert _graph_steps(steps) == (0, set())
    got = steps.predict_batch(frames)  # the second call with that shape: through the steps
    assert sum(map(len, expected)) >= 8
    assert _json(got) == _json(expected)
    assert _graph_steps(steps)[0] == 1 and len(_graph_steps(steps)[1]) == 1  # the steps did answer
    # given boxes (the video pipeline's call): host boxes through the pose step (from the second call)
    boxes = [np.stack([p.bbox for p in image]) for image in expected]
    scores = [np.array([p.score for p in image], np.float32) for image in expected]
    reference = _json(eager.predict_on_boxes_batch(frames, boxes, scores))
    for _ in range(2):
        assert _json(steps.predict_on_boxes_batch(frames, boxes, scores)) == reference
    assert steps._frames is not None and len(steps._frames.items) == 1
    # the detector alone
    for (b, s), (eb, es) in zip(
        steps.detector.detect_batch(frames), eager.detector.detect_batch(frames), strict=True
    ):
        torch.testing.assert_close(b, eb, rtol=0, atol=0)
        torch.testing.assert_close(s, es, rtol=0, atol=0)


def _every_other(i: int, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A `select` for predict_batch: the detections 0, 2, 4, ... of image i, all of image 0."""
    assert boxes.dtype == np.float32 and boxes.shape == (len(scores), 4)
    return (boxes, scores) if i == 0 else (boxes[::2], scores[::2])


@pytest.mark.parametrize("graphs", [False, True])
def test_select_poses_the_chosen_detections_only(
    engines: dict, frames: list[np.ndarray], graphs: bool
) -> None:
    """predict_batch(select=...) (the video pipeline's detector frames) = detection, then the pose model
    on the chosen boxes alone, with the frames loaded once."""
    eager, pipeline = _pipeline(engines, graphs=False), _pipeline(engines, graphs=graphs)
    everyone = eager.predict_batch(frames)
    chosen = [image if i == 0 else image[::2] for i, image in enumerate(everyone)]
    boxes = [np.stack([p.bbox for p in image]) for image in chosen]
    scores = [np.array([p.score for p in image], np.float32) for image in chosen]
    expected = _json(eager.predict_on_boxes_batch(frames, boxes, scores))
    for _ in range(2):  # with graphs: the second call goes through the steps
        assert _json(pipeline.predict_batch(frames, select=_every_other)) == expected
    assert sum(map(len, chosen)) < sum(map(len, everyone))
    if graphs:
        assert _graph_steps(pipeline)[0] == 1 and pipeline._frames is None  # the detector's frames served


def test_a_pose_step_launched_on_detections_answers_as_predict_batch_with_select(
    engines: dict, frames: list[np.ndarray]
) -> None:
    """`launch_detect`, then `launch_pose_on_detections` (the model server's detector frames) or
    `launched_detections`: the people of `predict_batch(select=)` and the detector's own boxes."""
    steps = _pipeline(engines, graphs=True)
    expected = _json(steps.predict_batch(frames, select=_every_other))
    detections = steps.detector.detect_batch(frames)
    for _ in range(2):  # the first launch may find no step yet (None); then the steps exist
        launched = steps.launch_detect(frames)
        if launched is None:
            steps.predict_batch(frames, select=_every_other)
            continue
        pose = steps.launch_pose_on_detections(launched, _every_other)
        assert pose is not None and _json(steps.predict_pose_launched(pose)) == expected
    launched = steps.launch_detect(frames)
    assert launched is not None
    for (boxes, scores), (want_boxes, want_scores) in zip(steps.launched_detections(launched), detections,
                                                          strict=True):  # fmt: skip
        np.testing.assert_array_equal(boxes, np.asarray(want_boxes))
        np.testing.assert_array_equal(scores, np.asarray(want_scores))
    nobody = steps.launch_pose_on_detections(steps.launch_detect(frames), lambda i, b, s: (b[:0], s[:0]))
    assert nobody is not None and steps.predict_pose_launched(nobody) == [[] for _ in frames]


def test_more_persons_than_the_largest_bucket_run_in_chunks(
    engines: dict, frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = _pipeline(engines, graphs=False)
    expected = eager.predict_batch(frames)
    monkeypatch.setattr(engines["pose"], "buckets", (2, 4), raising=False)
    steps = _pipeline(engines, graphs=True)
    steps.predict_batch(frames)
    got = steps.predict_batch(frames)
    assert sum(map(len, got)) > 4 and _graph_steps(steps)[1] and _graph_steps(steps)[1] <= {2, 4}
    assert [len(p) for p in got] == [len(p) for p in expected]
    for a, b in zip(got, expected, strict=True):
        assert [p.bbox.tolist() for p in a] == [p.bbox.tolist() for p in b]
    pairs = [(p, q) for a, b in zip(got, expected, strict=True) for p, q in zip(a, b, strict=True)]
    errors = np.concatenate([np.abs(p.keypoints - q.keypoints).max(-1) for p, q in pairs])
    # batches of 4 instead of all at once: last-bit differences flip rare argmaxes of random pose weights
    assert np.median(errors) == 0 and (errors > 1).mean() <= 0.03


def test_calls_the_steps_cannot_answer_go_the_eager_way(
    engines: dict, frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = _pipeline(engines, graphs=False)
    # images of different sizes: no frame buffer fits them
    mixed = [frames[0], frames[0][:300, :500].copy()]
    steps = _pipeline(engines, graphs=True)
    for _ in range(2):
        assert _json(steps.predict_batch(mixed)) == _json(eager.predict_batch(mixed))
    assert _graph_steps(steps) == (0, set())
    # a candidate width too narrow for the image: the step says it is not exact, the eager path answers
    original = graphed.DetectStep.__init__

    def narrow(self, *args, **kwargs) -> None:
        original(self, *args, **{**kwargs, "candidates": 2})

    monkeypatch.setattr(graphed.DetectStep, "__init__", narrow)
    steps = _pipeline(engines, graphs=True)
    for _ in range(2):
        assert _json(steps.predict_batch(frames)) == _json(eager.predict_batch(frames))
    assert _graph_steps(steps) == (1, set())
    # nobody found: empty results, no pose step
    blank = [np.zeros_like(frames[0]) for _ in range(2)]
    assert steps.predict_batch(blank) == [[], []]


def test_graphs_need_a_torch_engine(rtpose_env: dict) -> None:
    from rtpose.errors import EngineError

    engine, spec = create_engine("rtmdet-nano", task="detector", backend="ort")
    with pytest.raises(EngineError, match="graphs=True needs a torch or compiled engine"):
        Detector.from_engine(engine, spec, processing="torch", graphs=True)
    assert not Detector.from_engine(engine, spec).graphs  # the default: only where it can


@pytest.mark.gpu
def test_cuda_graph_steps_match_the_eager_path(rtpose_env: dict, random_rtmpose_t: Path, coco_val) -> None:
    """Compiled FP16 engines on CUDA: captured stages vs the same engines op by op (random pose weights
    turn last-bit differences into rare argmax flips, so keypoints are compared on the same boxes)."""
    image = decode_image(coco_val[1] / "000000196141.jpg")
    images = [torch.from_numpy(i).cuda() for i in (image, np.ascontiguousarray(image[:, ::-1]))]
    options = {"backend": "compiled", "device": "cuda", "precision": "fp16", "pose_weights": random_rtmpose_t}
    steps = TopDown("rtmpose-t", "rtmdet-nano", **options)
    eager = TopDown("rtmpose-t", "rtmdet-nano", graphs=False, **options)
    assert steps.graphs and not eager.graphs
    steps.predict_batch(images)  # the first call with a shape runs op by op, the second captures
    got, expected = steps.predict_batch(images), eager.predict_batch(images)
    assert [len(p) for p in got] == [len(p) for p in expected] and sum(map(len, got)) >= 8
    assert _graph_steps(steps)[0] == 1 and len(_graph_steps(steps)[1]) == 1
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.stack([p.bbox for p in a]), np.stack([p.bbox for p in b]), atol=1e-3)
    boxes = [np.stack([p.bbox for p in image]) for image in got]
    steps.predict_on_boxes_batch(images, boxes)
    on_boxes = steps.predict_on_boxes_batch(images, boxes)
    on_boxes_eager = eager.predict_on_boxes_batch(images, boxes)
    pairs = [(a, b) for x, y in zip(on_boxes, on_boxes_eager, strict=True) for a, b in zip(x, y, strict=True)]
    errors = np.concatenate([np.abs(a.keypoints - b.keypoints).max(-1) for a, b in pairs])
    print(f"graphs vs eager on CUDA: {(errors <= 1).mean():.2%} within 1 px, max {errors.max():.3g} px")
    assert (errors <= 1.0).mean() >= 0.97
    launched = steps.launch_pose_on_boxes(images, boxes)
    assert launched is not None and _json(steps.predict_pose_launched(launched)) == _json(on_boxes)
    chosen = steps.predict_batch(images, select=_every_other)  # detector frames reused for the pose step
    assert [len(p) for p in chosen] == [len(got[0]), (len(got[1]) + 1) // 2]
    for _ in range(3):  # replays give fresh results, not the first call's
        assert _json(steps.predict_batch(images[::-1])) == _json(steps.predict_batch(images[::-1]))
    assert len(steps.predict_batch(images[::-1])[0]) == len(got[1])


@pytest.mark.gpu
def test_frame_buffer_reads_pinned_host_images_where_they_lie() -> None:
    """Host images in page-locked memory (a model server's registered shared memory) are copied to the
    device straight from there; pageable ones through the staging buffer; either way the same pixels."""
    device = torch.device("cuda")
    pinned = torch.randint(0, 255, (2, 6, 10, 3), dtype=torch.uint8).pin_memory()
    pageable = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    only_pinned = graphed.FrameBuffer(2, 6, 10, device)
    only_pinned.load([pinned[0].numpy(), pinned[1].numpy()])
    torch.cuda.synchronize()
    assert only_pinned._staging is None  # no staging copy was needed
    assert torch.equal(only_pinned.images.cpu(), pinned)
    mixed = graphed.FrameBuffer(2, 6, 10, device)
    mixed.load([pageable, pinned[1].numpy()])
    torch.cuda.synchronize()
    assert np.array_equal(mixed.images[0].cpu().numpy(), pageable)
    assert torch.equal(mixed.images[1].cpu(), pinned[1])


def test_a_launched_pose_step_gives_the_people_of_the_step_on_boxes(
    engines: dict, frames: list[np.ndarray]
) -> None:
    """`launch_pose_on_boxes` + `predict_pose_launched` (the video pipeline's look-ahead) answer as
    `predict_on_boxes_batch`; None where no graph step runs (no graphs, a shape seen first, no box)."""
    steps, eager = _pipeline(engines, graphs=True), _pipeline(engines, graphs=False)
    boxes = [np.array([[50, 40, 250, 400], [300, 60, 420, 380.5]], np.float32), np.zeros((0, 4), np.float32),
             np.array([[10, 10, 90, 200]], np.float32)]  # fmt: skip
    scores = [np.array([0.9, 0.5], np.float32), np.zeros(0, np.float32), np.array([0.7], np.float32)]
    expected = _json(eager.predict_on_boxes_batch(frames, boxes, scores))
    assert eager.launch_pose_on_boxes(frames, boxes, scores) is None
    assert steps.launch_pose_on_boxes(frames, boxes, scores) is None  # a new shape: op by op
    assert steps.launch_pose_on_boxes(frames, [b[:0] for b in boxes], [s[:0] for s in scores]) is None
    for _ in range(2):
        launched = steps.launch_pose_on_boxes(frames, boxes, scores)
        assert launched is not None and launched.counts == [2, 0, 1]
        assert _json(steps.predict_pose_launched(launched)) == expected
    assert _json(steps.predict_on_boxes_batch(frames, boxes, scores)) == expected
    twin = steps.twin()  # same engines and detector, pose steps of its own: both may have one in flight
    assert twin.pose_engine is steps.pose_engine and twin.detector is steps.detector and twin.graphs
    twin.predict_on_boxes_batch(frames, boxes, scores)
    first, second = (
        steps.launch_pose_on_boxes(frames, boxes, scores),
        twin.launch_pose_on_boxes(frames, boxes, scores),
    )
    assert first is not None and second is not None
    assert _json(steps.predict_pose_launched(first)) == _json(twin.predict_pose_launched(second)) == expected


@pytest.mark.parametrize(
    ("module", "function", "message"),
    [("rtpose.preprocess.crop_triton", "crop_normalize_triton", "one-kernel crop failed"),
     ("rtpose.postprocess.nms_triton", "greedy_nms_triton", "one-kernel NMS failed"),
     ("rtpose.postprocess.simcc_triton", "simcc_rows_triton", "one-kernel SimCC decoding failed")],
)  # fmt: skip
def test_a_failing_one_kernel_step_falls_back_to_torch(
    engines: dict, frames: list[np.ndarray], monkeypatch, module: str, function: str, message: str
) -> None:
    """Where a Triton kernel of the steps (crops, NMS) is available but cannot run (no compiler, say),
    the steps warn once and use the torch version: same results, the graphs stay on."""
    import importlib

    from rtpose import triton_exact

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C compiler for the Triton launcher")

    kernels = importlib.import_module(module)
    monkeypatch.setattr(triton_exact, "wanted", lambda device: True)
    monkeypatch.setattr(kernels, "available", lambda device: True)
    monkeypatch.setattr(kernels, function, broken)
    eager, steps = _pipeline(engines, graphs=False), _pipeline(engines, graphs=True)
    expected = _json(eager.predict_batch(frames))
    steps.predict_batch(frames)  # a new shape: op by op
    with pytest.warns(RuntimeWarning, match=message):
        assert _json(steps.predict_batch(frames)) == expected  # through the steps
    assert steps.graphs and _graph_steps(steps)[0] == 1
    assert _json(steps.predict_batch(frames)) == expected


def test_prepared_steps_answer_from_the_first_call(
    engines: dict, frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prepare_graphs` makes the detector step and every pose bucket up front (both frame buffers), so
    the first call of that shape already goes through the steps, with the eager results. (The 12
    persons fill the 12 bucket exactly: a padded batch may flip rare argmaxes of random pose weights.)"""
    eager, steps = _pipeline(engines, graphs=False), _pipeline(engines, graphs=True)
    expected = eager.predict_batch(frames)
    assert sum(map(len, expected)) == 12
    monkeypatch.setattr(engines["pose"], "buckets", (1, 2, 4, 12), raising=False)
    height, width = frames[0].shape[:2]
    assert eager.prepare_graphs(height, width, (3,)) == 0  # graphs off: nothing to prepare
    made = steps.prepare_graphs(height, width, (1, 3), persons_per_image=2)
    # batch 1: detector + buckets 1, 2 on two buffers; batch 3: detector + buckets 1, 2, 4, 12 on two
    assert made == (1 + 2 * 2) + (1 + 2 * 4)
    assert _graph_steps(steps) == (2, {1, 2, 4, 12})
    assert _json(steps.predict_batch(frames)) == _json(expected)  # first call: through the steps
    assert _graph_steps(steps)[0] == 2  # no new step
    boxes = [np.stack([p.bbox for p in image]) for image in expected]
    scores = [np.array([p.score for p in image], np.float32) for image in expected]
    prepared = steps._frames.items[(3, height, width)]
    assert set(prepared.pose_steps) == {1, 2, 4, 12}
    got = steps.predict_on_boxes_batch(frames, boxes, scores)  # first call with boxes: the prepared buffer
    assert _json(got) == _json(eager.predict_on_boxes_batch(frames, boxes, scores))
    assert steps._frames.items[(3, height, width)] is prepared
