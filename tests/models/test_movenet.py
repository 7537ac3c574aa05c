"""MoveNet Lightning: our TFLite reader and our PyTorch network against the official runtime.

The oracle is ai-edge-litert running the INT8 file with its default CPU kernels (XNNPACK). Its raw
heads are read by re-pointing the graph's output at them (a 4-byte patch of the flatbuffer), so the
comparison is against what the runtime computes, not against the reference kernels (which round
differently and give other keypoints).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtpose.errors import WeightsError
from rtpose.models.factory import get_loader
from rtpose.models.loading.tflite import _FlatBuffer, load_movenet_tflite, parse_tflite, read_tflite
from rtpose.models.movenet import LIGHTNING_INT8_DECODE_QUANT, MoveNet, load_tflite_weights
from rtpose.models.spec import get_spec
from rtpose.postprocess.movenet import decode
from rtpose.postprocess.pose_codecs import decode_pose

MODEL_FILE = "movenet_singlepose_lightning_int8/lite-model_movenet_singlepose_lightning_tflite_int8_4.tflite"
# graph tensors of the raw heads (after sigmoid where the graph has one) and of the final output
HEAD_TENSORS = {"heatmaps": 277, "centers": 260, "regression": 285, "offsets": 282}
OUTPUT_TENSOR = 332
# a few crops by default; RTPOSE_MOVENET_CROPS=200 runs the parity tests on every person (104 crops)
NUM_CROPS = int(os.environ.get("RTPOSE_MOVENET_CROPS", "4"))


@pytest.fixture(scope="module")
def movenet(movenet_tflite: Path) -> MoveNet:
    return load_movenet_tflite(MoveNet(), movenet_tflite).eval()


def person_crops(coco_val: tuple[Path, Path], count: int) -> np.ndarray:
    """Square 1.25x crops (192x192 RGB) of the first `count` persons with >= 5 keypoints."""
    annotation_file, image_dir = coco_val
    data = json.loads(annotation_file.read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    crops = []
    for ann in data["annotations"]:
        if ann["num_keypoints"] < 5:
            continue
        image = cv2.imread(str(image_dir / files[ann["image_id"]]))
        x, y, w, h = ann["bbox"]
        size = max(w, h) * 1.25
        k = 192 / size
        warp = np.array([[k, 0, 96 - (x + w / 2) * k], [0, k, 96 - (y + h / 2) * k]])
        crops.append(cv2.cvtColor(cv2.warpAffine(image, warp, (192, 192)), cv2.COLOR_BGR2RGB))
        if len(crops) == count:
            break
    assert crops, "no person with >= 5 keypoints"
    return np.stack(crops)


def run_litert(movenet_tflite: Path, crops: np.ndarray, tensor: int) -> np.ndarray:
    """TFLite's (default kernels) `tensor` for each crop, dequantised; the graph output is re-pointed."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    data = bytearray(movenet_tflite.read_bytes())
    fb = _FlatBuffer(bytes(data))
    subgraph = fb.table_vector(fb.root(), 2)[0]
    start, length = fb.vector(subgraph, 2)
    assert length == 1
    data[start : start + 4] = struct.pack("<i", tensor)
    interpreter = litert.Interpreter(model_content=bytes(data))
    interpreter.allocate_tensors()
    details = next(d for d in interpreter.get_tensor_details() if d["index"] == tensor)
    quant = details["quantization_parameters"]
    results = []
    for crop in crops:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], crop[None])
        interpreter.invoke()
        value = interpreter.get_tensor(tensor).astype(np.float32)
        if len(quant["scales"]):
            value = (value - quant["zero_points"][0]) * quant["scales"][0]
        results.append(value[0])
    return np.stack(results)


@pytest.fixture(scope="module")
def crops(coco_val: tuple[Path, Path]) -> np.ndarray:
    return person_crops(coco_val, NUM_CROPS)


@pytest.fixture(scope="module")
def litert_heads(movenet_tflite: Path, crops: np.ndarray) -> dict[str, np.ndarray]:
    return {
        name: run_litert(movenet_tflite, crops, t).transpose(0, 3, 1, 2) for name, t in HEAD_TENSORS.items()
    }


@pytest.fixture(scope="module")
def litert_output(movenet_tflite: Path, crops: np.ndarray) -> np.ndarray:
    """(N, 17, 3) y, x, score normalised, as the file's own output gives them."""
    return run_litert(movenet_tflite, crops, OUTPUT_TENSOR)[:, 0]


def to_pixels(output: np.ndarray) -> np.ndarray:
    return np.stack([output[..., 1] * 192, output[..., 0] * 192], axis=-1)


def run_ours(model: MoveNet, crops: np.ndarray) -> dict[str, torch.Tensor]:
    spec = get_spec("movenet-lightning")
    with torch.no_grad():
        heads = model(torch.from_numpy(crops).permute(0, 3, 1, 2).float())
    return dict(zip(spec.extra["output_names"], heads, strict=True))


# --- the reader --------------------------------------------------------------------------------


def test_reader_agrees_with_litert(movenet_tflite: Path) -> None:
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    graph = read_tflite(movenet_tflite)
    interpreter = litert.Interpreter(
        model_path=str(movenet_tflite),
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for tensor in graph.tensors:
        d = details[tensor.index]
        assert tensor.name == d["name"]
        assert tensor.shape == tuple(d["shape"])
        q = d["quantization_parameters"]
        if tensor.quantization is None:
            assert len(q["scales"]) == 0
        else:
            np.testing.assert_array_equal(tensor.quantization.scale, q["scales"])
            np.testing.assert_array_equal(tensor.quantization.zero_point, q["zero_points"])
            assert tensor.quantization.axis == q["quantized_dimension"]
        if tensor.data is not None and tensor.dtype == np.dtype("i1"):
            np.testing.assert_array_equal(tensor.data, interpreter.get_tensor(tensor.index))
    ops = interpreter._get_ops_details()
    assert len(ops) == len(graph.operators) == 157
    for ours, theirs in zip(graph.operators, ops, strict=True):
        assert ours.op == theirs["op_name"]
        assert list(ours.inputs) == list(theirs["inputs"])
        assert list(ours.outputs) == list(theirs["outputs"])


def test_reader_options_and_quantisation(movenet_tflite: Path) -> None:
    graph = read_tflite(movenet_tflite)
    stem = graph.operators[5]
    assert stem.op == "CONV_2D"
    assert stem.options == {"padding": "SAME", "stride_w": 2, "stride_h": 2, "activation": "RELU6",
                            "dilation_w": 1, "dilation_h": 1}  # fmt: skip
    weights = graph.tensors[stem.inputs[1]]
    assert weights.shape == (32, 3, 3, 3) and weights.dtype == np.dtype("i1")
    assert weights.quantization.per_channel and weights.quantization.axis == 0
    # per-channel dequantisation: channel c is scaled by scale[c]
    np.testing.assert_allclose(
        weights.dequantized()[3], weights.data[3] * weights.quantization.scale[3], rtol=1e-6
    )
    depthwise = graph.tensors[graph.operators[6].inputs[1]]
    assert depthwise.quantization.axis == 3
    resizes = graph.ops("RESIZE_BILINEAR")
    assert [r.options for r in resizes] == [{"align_corners": False, "half_pixel_centers": True}] * 3


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 16, b"\x10\x00\x00\x00ONNX" + b"\x00" * 32],
    ids=["empty", "zeros", "wrong-identifier"],
)
def test_reader_rejects_non_tflite(data: bytes) -> None:
    with pytest.raises(WeightsError):
        parse_tflite(data)


def test_reader_rejects_truncated_file(movenet_tflite: Path) -> None:
    data = movenet_tflite.read_bytes()
    with pytest.raises(WeightsError):
        parse_tflite(data[: len(data) // 3])


def test_missing_file_is_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError):
        read_tflite(tmp_path / "nope.tflite")


# --- loading -----------------------------------------------------------------------------------


def test_spec_and_loader_registered() -> None:
    spec = get_spec("movenet-lightning")
    assert spec.task == "pose-topdown" and spec.family == "movenet"
    assert spec.input_size == (192, 192) and spec.channel_order == "RGB"
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
    assert spec.extra["codec"] == "movenet" and spec.extra["bbox_padding"] == 1.25
    assert spec.extra["output_names"] == ("heatmaps", "centers", "regression", "offsets")
    assert spec.weights[0].format == "tflite" and spec.weights[0].offline_names == (MODEL_FILE,)
    assert get_loader(spec, "tflite") is load_tflite_weights


def test_random_network_shapes() -> None:
    model = get_spec("movenet-lightning").build().eval()
    with torch.no_grad():
        heat, center, regression, offsets = model(torch.rand(2, 3, 192, 192) * 255)
    assert heat.shape == (2, 17, 48, 48) and center.shape == (2, 1, 48, 48)
    assert regression.shape == (2, 34, 48, 48) and offsets.shape == (2, 34, 48, 48)
    assert not model.int8_emulation
    with pytest.raises(WeightsError):
        model.set_int8_emulation(True)  # no TFLite quantisation loaded


def test_file_that_does_not_fit_is_weights_error(movenet_tflite: Path) -> None:
    with pytest.raises(WeightsError, match="shape"):
        load_movenet_tflite(MoveNet(num_keypoints=16), movenet_tflite)
    with pytest.raises(WeightsError):
        load_tflite_weights(torch.nn.Conv2d(3, 3, 1), movenet_tflite)


def test_decode_constants_are_the_files(movenet_tflite: Path) -> None:
    """spec.extra['decode_quant'] holds exactly the graph's quantisation of its decoding tensors."""
    tensors = {t.name: t for t in read_tflite(movenet_tflite).tensors}
    names = {"center_weight": "truediv_2;add_1", "weighted_center": "truediv_2;add_11",
             "center_y": "tfl.quantize1", "center_x": "tfl.quantize2", "keypoint_y": "add_2",
             "keypoint_x": "add_3", "grid": "strided_slice_3", "delta_y": "sub_5", "delta_x": "sub_6",
             "delta_y_sq": "pow_2;pow/y", "delta_x_sq": "pow_3;pow/y", "dist_sq": "add_4",
             "dist": "tfl.quantize3", "bias": "add_1/y", "denominator": "add_5",
             "weighted_heatmap": "tfl.quantize4", "peak": "tfl.quantize5", "refined": "add_6",
             "output": "StatefulPartitionedCall:01", "inv_size": "Reshape_13"}  # fmt: skip
    assert set(names) == set(LIGHTNING_INT8_DECODE_QUANT)
    for key, name in names.items():
        q = tensors[name].quantization
        scale, zero_point = LIGHTNING_INT8_DECODE_QUANT[key]
        assert (np.float32(scale), zero_point) == (q.scale[0], int(q.zero_point[0])), key
    # the decoder's formulas give the graph's constants: centre prior, coordinate grid, 1.8, 1/48
    rows = np.arange(48, dtype=np.float32)
    prior = 1.0 / (np.sqrt((rows[:, None] - 24) ** 2 + (rows[None, :] - 24) ** 2) + np.float32(1.8))
    np.testing.assert_allclose(tensors["truediv_2;add_1"].dequantized()[..., 0], prior, atol=0.0011)
    np.testing.assert_allclose(tensors["strided_slice_3"].dequantized()[:, 0, 0], rows, atol=0.1)
    assert tensors["add_1/y"].dequantized() == pytest.approx(1.8, abs=1e-5)
    assert float(tensors["Reshape_13"].dequantized().mean()) == pytest.approx(1 / 48, abs=1e-6)


# --- parity with the official runtime on real crops ---------------------------------------------


def test_raw_heads_match_litert_exactly(movenet: MoveNet, crops: np.ndarray, litert_heads: dict) -> None:
    ours = run_ours(movenet, crops)
    for name, reference in litert_heads.items():
        step = 1e-5 * max(1.0, float(np.abs(reference).max()))
        np.testing.assert_allclose(ours[name].numpy(), reference, atol=step, rtol=0, err_msg=name)


def test_keypoints_match_litert(movenet: MoveNet, crops: np.ndarray, litert_output: np.ndarray) -> None:
    spec = get_spec("movenet-lightning")
    keypoints, scores = decode_pose(spec, run_ours(movenet, crops))
    error = np.linalg.norm(keypoints.numpy() - to_pixels(litert_output), axis=-1)
    assert np.mean(error <= 1.0) >= 0.99, error
    np.testing.assert_allclose(scores.numpy(), litert_output[..., 2], atol=0.0042)  # one output step


def test_decoder_on_litert_heads_matches_litert(litert_heads: dict, litert_output: np.ndarray) -> None:
    keypoints, scores = decode(litert_heads, get_spec("movenet-lightning"))
    np.testing.assert_allclose(keypoints, to_pixels(litert_output), atol=1e-3)
    np.testing.assert_allclose(scores, litert_output[..., 2], atol=0.0042)


def test_float_mode_is_close_but_not_exact(movenet: MoveNet, crops: np.ndarray, litert_heads: dict) -> None:
    movenet.set_int8_emulation(False)
    try:
        heat = run_ours(movenet, crops)["heatmaps"].numpy()
    finally:
        movenet.set_int8_emulation(True)
    difference = np.abs(heat - litert_heads["heatmaps"])
    assert 0 < difference.mean() < 0.02


@pytest.mark.gpu
def test_int8_emulation_on_cuda_matches_cpu(
    movenet: MoveNet, movenet_tflite: Path, crops: np.ndarray
) -> None:
    spec = get_spec("movenet-lightning")
    cpu = run_ours(movenet, crops)
    gpu_model = load_movenet_tflite(MoveNet(), movenet_tflite).eval().cuda()
    with torch.no_grad():
        heads = gpu_model(torch.from_numpy(crops).permute(0, 3, 1, 2).float().cuda())
    gpu = dict(zip(spec.extra["output_names"], heads, strict=True))
    for name in cpu:
        same = np.abs(gpu[name].cpu().numpy() - cpu[name].numpy()) < 1e-4
        assert same.mean() > 0.999, name  # allows rare one-step flips from cuDNN's summation order
    keypoints_gpu, scores_gpu = decode(gpu, spec)
    keypoints_cpu, _ = decode(cpu, spec)
    assert keypoints_gpu.device.type == "cuda" and scores_gpu.device.type == "cuda"
    error = np.linalg.norm(keypoints_gpu.cpu().numpy() - keypoints_cpu.numpy(), axis=-1)
    assert np.mean(error <= 1.0) >= 0.99
