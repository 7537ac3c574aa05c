"""The original runtimes behind our Engine interface (`rtpose.engines.reference`), and the accuracy run.

The reference engines must return what our networks return, from the same network input, so that
"the same preprocessing and the same decoding" holds by construction in `rtpose.benchmarks.accuracy`.
Skipped with a reason where openvino / ai-edge-litert are not installed (the `test` extra has both).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.benchmarks.accuracy import (
    AccuracyReport,
    AccuracyRun,
    compare,
    format_table,
    run_accuracy,
    subset_annotations,
)
from rtpose.decode.image import decode_image
from rtpose.errors import EngineError, RtposeError, WeightsError
from rtpose.models.loading.tflite import parse_tflite, with_graph_outputs
from rtpose.models.spec import get_spec
from rtpose.preprocess.affine import boxes_to_affine_matrices, warp_crops_numpy
from rtpose.preprocess.letterbox import letterbox_numpy
from rtpose.preprocess.normalize import normalize_numpy

torch.set_num_threads(min(2, torch.get_num_threads()))


def _need(module: str, package: str) -> None:
    pytest.importorskip(module, reason=f"{package} (original runtime, in the 'test' extra) is not installed")


@pytest.fixture(scope="module")
def movenet_batch(coco_val: tuple[Path, Path]) -> np.ndarray:
    """The network input our top-down pipeline makes for the first two annotated persons."""
    ann_file, images_dir = coco_val
    data = json.loads(ann_file.read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    spec = get_spec("movenet-lightning")
    crops = []
    for ann in (a for a in data["annotations"] if a["num_keypoints"] >= 5):
        x, y, w, h = ann["bbox"]
        image = decode_image(images_dir / files[ann["image_id"]])
        matrices = boxes_to_affine_matrices(np.array([[x, y, x + w, y + h]]), spec.input_size, 1.25)
        crops.append(warp_crops_numpy(image, matrices, spec.input_size))
        if len(crops) == 2:
            break
    return normalize_numpy(np.concatenate(crops), spec.mean, spec.std, spec.channel_order)


@pytest.fixture(scope="module")
def openpose_batch(coco_val: tuple[Path, Path]) -> np.ndarray:
    """One real image as the bottom-up pipeline feeds it: height 256, width 192 (a small canvas)."""
    ann_file, images_dir = coco_val
    first = min(json.loads(ann_file.read_text())["images"], key=lambda im: im["id"])
    spec = get_spec("openpose-lite")
    canvas, _ = letterbox_numpy(decode_image(images_dir / first["file_name"]), (256, 192), 128)
    return normalize_numpy(canvas[None], spec.mean, spec.std, spec.channel_order)


# -- the flatbuffer helper (no runtime needed) ------------------------------------------------------


def test_with_graph_outputs_rewrites_only_the_outputs(movenet_tflite: Path) -> None:
    data = movenet_tflite.read_bytes()
    original = parse_tflite(data)
    patched = with_graph_outputs(data, [277, 260, 332])
    graph = parse_tflite(patched)
    assert graph.outputs == (277, 260, 332) and original.outputs == (332,)
    assert len(graph.tensors) == len(original.tensors) and len(graph.operators) == len(original.operators)
    np.testing.assert_array_equal(graph.tensors[10].data, original.tensors[10].data)


@pytest.mark.parametrize("tensors", [[], [-1], [10_000]], ids=["none", "negative", "past-the-end"])
def test_with_graph_outputs_rejects_bad_tensors(movenet_tflite: Path, tensors: list[int]) -> None:
    with pytest.raises(WeightsError):
        with_graph_outputs(movenet_tflite.read_bytes(), tensors)


def test_movenet_head_tensors_are_the_head_outputs(movenet_tflite: Path) -> None:
    from rtpose.engines.reference import movenet_head_tensors
    from rtpose.models.loading.tflite import read_tflite

    graph = read_tflite(movenet_tflite)
    heads = movenet_head_tensors(graph)
    shapes = {name: graph.tensors[index].shape for name, index in heads.items()}
    assert shapes == {"heatmaps": (1, 48, 48, 17), "centers": (1, 48, 48, 1),
                      "regression": (1, 48, 48, 34), "offsets": (1, 48, 48, 34)}  # fmt: skip
    ops = {name: graph.producer(index).op for name, index in heads.items()}
    assert ops == {
        "heatmaps": "LOGISTIC",
        "centers": "LOGISTIC",
        "regression": "CONV_2D",
        "offsets": "CONV_2D",
    }
    # regression and offsets have the same shape: tell them apart by name
    assert "regress" in graph.tensors[heads["regression"]].name
    assert "offset" in graph.tensors[heads["offsets"]].name


# -- TFLite ---------------------------------------------------------------------------------------


def test_tflite_engine_heads_equal_ours(movenet_tflite: Path, movenet_batch: np.ndarray) -> None:
    _need("ai_edge_litert.interpreter", "ai-edge-litert")
    from rtpose.engines.reference import TFLiteEngine
    from rtpose.models.loading.tflite import load_movenet_tflite
    from rtpose.models.movenet import MoveNet
    from rtpose.postprocess.movenet import decode

    engine = TFLiteEngine(movenet_tflite)
    theirs = engine(movenet_batch)
    assert engine.output_names == ("heatmaps", "centers", "regression", "offsets")
    model = load_movenet_tflite(MoveNet(), movenet_tflite).eval()
    with torch.no_grad():
        ours = dict(zip(engine.output_names, model(torch.from_numpy(movenet_batch)), strict=True))
    for name in engine.output_names:
        assert theirs[name].shape == tuple(ours[name].shape) and theirs[name].dtype == np.float32
        step = 1e-5 * max(1.0, float(np.abs(theirs[name]).max()))  # float32 rounding of one quant step
        np.testing.assert_allclose(ours[name].numpy(), theirs[name], atol=step, rtol=0, err_msg=name)
    spec = get_spec("movenet-lightning")
    keypoints_ours, scores_ours = decode({k: v.numpy() for k, v in ours.items()}, spec)
    keypoints_theirs, scores_theirs = decode(theirs, spec)
    np.testing.assert_allclose(keypoints_ours, keypoints_theirs, atol=1e-3)
    np.testing.assert_allclose(scores_ours, scores_theirs, atol=1e-5)


def test_tflite_engine_rejects_what_the_graph_cannot_take(
    movenet_tflite: Path, movenet_batch: np.ndarray
) -> None:
    _need("ai_edge_litert.interpreter", "ai-edge-litert")
    from rtpose.engines.reference import TFLiteEngine

    engine = TFLiteEngine(movenet_tflite)
    with pytest.raises(EngineError, match="whole numbers"):
        engine(movenet_batch + 0.5)  # interpolated values are no uint8 pixels
    with pytest.raises(EngineError, match="whole numbers"):
        engine(movenet_batch / 127.5 - 1.0)  # normalised input
    with pytest.raises(EngineError, match="input must be"):
        engine(np.zeros((1, 3, 96, 96), np.float32))
    with pytest.raises(EngineError):
        engine(np.zeros((3, 192, 192), np.float32))
    with pytest.raises(EngineError):
        TFLiteEngine(movenet_tflite.parent / "missing.tflite")


# -- OpenVINO -------------------------------------------------------------------------------------


def _ours_openpose(xml: Path, semantics: str | None):  # our OpenPoseLite network, loaded from the IR
    from rtpose.models.loading.openvino_ir import load_openvino_ir
    from rtpose.models.openpose_lite import build_openpose_lite

    model = build_openpose_lite().eval()
    load_openvino_ir(model, xml)
    if semantics is not None:
        model.set_int8_emulation(True, semantics)
    return model


def test_openvino_engine_undoes_our_normalisation(openpose_ir_xml: Path, openpose_batch: np.ndarray) -> None:
    _need("openvino", "openvino")
    from rtpose.engines.reference import OpenVinoEngine

    raw = OpenVinoEngine(openpose_ir_xml, mode="float", threads=1).raw_input(openpose_batch)
    assert raw.shape == openpose_batch.shape
    np.testing.assert_allclose(raw, np.rint(raw), atol=1e-3)  # back on the uint8 pixel grid
    assert raw.min() >= 0 and raw.max() <= 255


@pytest.mark.parametrize(
    ("mode", "semantics", "max_mean", "max_abs"),
    [
        ("float", None, 1e-6, 1e-4),
        ("fq-f32", "fake-quantize", 2e-4, 0.1),
        ("int8", "openvino-cpu", 0.0, 0.0),  # bit-exact (the FakeQuantize formula: 6.2e-4 / 0.146)
    ],
)
def test_openvino_engine_outputs_equal_ours(
    openpose_ir_xml: Path, openpose_batch: np.ndarray, mode: str, semantics: str | None, max_mean: float,
    max_abs: float,
) -> None:  # fmt: skip
    """float: our float network vs the float graph (exact up to float32). fq-f32: our FakeQuantize
    emulation vs FakeQuantize in f32; a few values move by quantisation steps (bounds 2-8x what was
    measured). int8: our emulation of OpenVINO's INT8 CPU execution vs that runtime, bit for bit."""
    _need("openvino", "openvino")
    from rtpose.engines.reference import OpenVinoEngine

    engine = OpenVinoEngine(openpose_ir_xml, mode=mode, threads=1)
    theirs = engine(openpose_batch)
    assert engine.output_names == ("heatmaps", "pafs")
    with torch.no_grad():
        heatmaps, pafs = _ours_openpose(openpose_ir_xml, semantics)(torch.from_numpy(openpose_batch))
    for name, ours in (("heatmaps", heatmaps.numpy()), ("pafs", pafs.numpy())):
        assert theirs[name].shape == ours.shape == (1, 19 if name == "heatmaps" else 38, 32, 24)
        difference = np.abs(theirs[name] - ours)
        assert difference.mean() <= max_mean and difference.max() <= max_abs, (name, difference.max())


def test_openvino_engine_rejects_bad_requests(openpose_ir_xml: Path) -> None:
    _need("openvino", "openvino")
    from rtpose.engines.reference import OpenVinoEngine

    with pytest.raises(EngineError, match="mode"):
        OpenVinoEngine(openpose_ir_xml, mode="fp8")
    with pytest.raises(EngineError, match="not found"):
        OpenVinoEngine(openpose_ir_xml.with_name("missing.xml"))
    with pytest.raises(EngineError, match="no output"):
        OpenVinoEngine(openpose_ir_xml, output_map={"nope": "heatmaps"})
    engine = OpenVinoEngine(openpose_ir_xml, mode="float", threads=1)
    with pytest.raises(EngineError, match="3 channels"):
        engine(np.zeros((1, 1, 64, 64), np.float32))


# -- the accuracy benchmark ---------------------------------------------------------------------------


def _run(ap: float, *, reference: bool, boxes: str = "gt", engine: str = "x") -> AccuracyRun:
    return AccuracyRun("m", boxes, engine, reference, {"AP": ap, "AP50": ap, "AR": ap, "num_people": 1,
                                                       "seconds": 0.0})  # fmt: skip


def test_compare_pairs_ours_with_references_of_the_same_boxes() -> None:
    runs = [
        _run(0.700, reference=False, engine="ours"), _run(0.704, reference=True, engine="ref"),
        _run(0.600, reference=False, boxes="det", engine="ours"),
        _run(0.590, reference=True, boxes="det", engine="ref"),
    ]  # fmt: skip
    comparisons = compare(runs)
    assert [(c.boxes, c.dap, c.within_limit) for c in comparisons] == [
        ("gt", -0.4, True),
        ("det", 1.0, False),
    ]
    assert "NO" in format_table(AccuracyReport(runs=runs, comparisons=comparisons))


def test_subset_annotations_keeps_first_images(coco_val: tuple[Path, Path], tmp_path: Path) -> None:
    ann_file, _ = coco_val
    subset = json.loads(subset_annotations(ann_file, 3, tmp_path / "s.json").read_text())
    ids = {im["id"] for im in subset["images"]}
    all_ids = sorted(im["id"] for im in json.loads(ann_file.read_text())["images"])
    assert ids == set(all_ids[:3])
    assert subset["annotations"] and all(a["image_id"] in ids for a in subset["annotations"])


def test_run_accuracy_rejects_unknown_requests(data_dir: Path) -> None:
    with pytest.raises(RtposeError, match="unknown model"):
        run_accuracy(data_dir, models=["rtmpose-m"], log=lambda _: None)
    with pytest.raises(RtposeError, match="boxes"):
        run_accuracy(data_dir, models=["movenet-lightning"], boxes=["everything"], log=lambda _: None)


def test_accuracy_run_end_to_end_on_three_images(data_dir: Path, tmp_path: Path) -> None:
    """Both models, both box sources, ours vs the original runtime on 3 images: MoveNet's INT8 emulation
    is exact, so AP is the same; openpose-lite float vs OpenVINO's float graph within the issue's bar."""
    _need("openvino", "openvino")
    _need("ai_edge_litert.interpreter", "ai-edge-litert")
    lines: list[str] = []
    report = run_accuracy(
        data_dir, images=3, openvino_modes=["float"], our_openpose_modes=["float"], threads=1,
        timing_repeats=1, log=lines.append,
    )  # fmt: skip
    assert len(report.runs) == 6 and len(lines) == 6
    assert {(r.model, r.boxes) for r in report.runs} == {
        ("movenet-lightning", "gt"), ("movenet-lightning", "det"), ("openpose-lite", "bottom-up")
    }  # fmt: skip
    for run in report.runs:
        assert run.metrics["num_images"] == 3 and run.metrics["num_people"] > 0
        assert 0.0 < run.metrics["AP"] <= 1.0 and math.isfinite(run.forward_ms)
    assert len(report.comparisons) == 3
    for comparison in report.comparisons:
        assert comparison.within_limit, comparison
    movenet_gt = [c for c in report.comparisons if c.model == "movenet-lightning" and c.boxes == "gt"]
    assert movenet_gt[0].dap == 0.0
    out = json.loads(json.dumps(report.to_json()))
    assert out["info"]["images"] == 3 and len(out["comparisons"]) == 3
    # decoded keypoints: our float port against OpenVINO running the same float graph, and our MoveNet
    # emulation against TFLite on the ground-truth boxes (bit-exact)
    agreement = {(a.model, a.boxes): a for a in report.agreements}
    assert set(agreement) == {("openpose-lite", "bottom-up"), ("movenet-lightning", "gt")}
    openpose = agreement["openpose-lite", "bottom-up"]
    assert (openpose.engine, openpose.reference) == ("ours torch float", "OpenVINO float")
    movenet = agreement["movenet-lightning", "gt"]
    for row in (openpose, movenet):
        assert row.keypoints > 20 and row.within_1px == 1.0, row
    assert "<=1px" in format_table(report) and len(out["keypoint_agreement"]) == 2


@pytest.mark.gpu
def test_our_engines_on_cuda_match_the_original_runtimes(
    movenet_tflite: Path, movenet_batch: np.ndarray, openpose_ir_xml: Path, openpose_batch: np.ndarray
) -> None:
    """Our torch engines on the GPU against the reference runtimes (CPU) on the same inputs."""
    _need("openvino", "openvino")
    _need("ai_edge_litert.interpreter", "ai-edge-litert")
    from rtpose.engines.reference import OpenVinoEngine, TFLiteEngine
    from rtpose.engines.torch_engine import TorchEngine
    from rtpose.models.loading.tflite import load_movenet_tflite
    from rtpose.models.movenet import MoveNet

    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would be no float32 reference
    tflite = TFLiteEngine(movenet_tflite)
    movenet = TorchEngine(load_movenet_tflite(MoveNet(), movenet_tflite), device="cuda",
                          output_names=tflite.output_names)  # fmt: skip
    ours, theirs = movenet(movenet_batch), tflite(movenet_batch)
    for name in tflite.output_names:
        assert ours[name].device.type == "cuda"
        same = np.abs(ours[name].cpu().numpy() - theirs[name]) < 1e-4
        assert same.mean() > 0.999, name  # cuDNN's summation order may flip a rare rounding by one step
    openvino = OpenVinoEngine(openpose_ir_xml, mode="float", threads=1)
    openpose = TorchEngine(
        _ours_openpose(openpose_ir_xml, None), device="cuda", output_names=("heatmaps", "pafs")
    )
    ours, theirs = openpose(openpose_batch), openvino(openpose_batch)
    for name in ("heatmaps", "pafs"):
        np.testing.assert_allclose(ours[name].cpu().numpy(), theirs[name], atol=1e-3)
