"""Engines that run an imported model in its ORIGINAL runtime, behind our `Engine` interface.

They are the oracles of our PyTorch ports: put into the same pipeline as our engines (same
preprocessing, same decoding), any difference in keypoints or COCO AP comes from the network
computation alone. Both runtimes are optional packages (the `reference` and `test` extras) and are
imported only when an engine is created; a missing one is an `EngineError` saying what to install.

- `TFLiteEngine`: MoveNet's INT8 TFLite file in ai-edge-litert (default CPU kernels, XNNPACK). The
  file's own graph decodes its heads into (y, x, score); to apply OUR decoder to both sides this engine
  returns the raw heads our MoveNet returns (heatmaps and centres after the sigmoid, regression,
  offsets), read by making them the graph's outputs (`loading.tflite.with_graph_outputs`).
- `OpenVinoEngine`: lightweight OpenPose's OpenVINO IR. Takes our normalised batch, undoes the spec's
  normalisation (the IR takes raw BGR 0-255 and normalises inside its graph), and returns
  {"heatmaps", "pafs"} named as our network's outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rtpose.engines.base import Engine
from rtpose.engines.ort import to_numpy_batch
from rtpose.errors import EngineError, WeightsError
from rtpose.models.spec import ModelSpec, get_spec

#: MoveNet output names, in the order our network returns them
MOVENET_HEADS = ("heatmaps", "centers", "regression", "offsets")
#: IR output -> our output name (Open Model Zoo human-pose-estimation-0001)
OPENPOSE_IR_OUTPUTS = {"Mconv7_stage2_L2": "heatmaps", "Mconv7_stage2_L1": "pafs"}
OpenVinoMode = Literal["int8", "fq-f32", "float"]
#: How OpenVINO runs the INT8 IR on the CPU (f32 inference precision in every mode):
#: "int8": its default, the runtime users get (u8/i8 convolutions, FakeQuantize folded into requantisation);
#: "fq-f32": low-precision transformations off, f32 convolutions with every FakeQuantize executed as
#:     defined (the semantics our INT8 emulation follows);
#: "float": the activation FakeQuantize nodes cut out (weights still dequantised; our float mode).
OPENVINO_MODES: tuple[str, ...] = ("int8", "fq-f32", "float")
#: how far from an integer a value of the batch may be and still count as the uint8 pixel it came from
_PIXEL_TOLERANCE = 1e-3


def _import(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineError(
            f"the reference runtime needs the optional package {extra!r} "
            f"(pip install 'rtpose[reference]'): {exc}"
        ) from None


def movenet_head_tensors(graph: Any, num_keypoints: int = 17) -> dict[str, int]:
    """{our output name: graph tensor index} of the raw heads of a MoveNet TFLite graph.

    Found by walking the graph's network operators alongside our MoveNet's `graph_order()` (the same
    walk the weight loader does, so a file that loads into our network gives its heads here): each
    head's tensor is the output of its last operator (the sigmoid where the head has one).
    """
    from rtpose.models.loading.tflite import network_operators
    from rtpose.models.movenet import MoveNet

    model = MoveNet(num_keypoints=num_keypoints)
    ops = network_operators(graph)
    slots = list(model.graph_order())
    if len(ops) != len(slots):
        raise WeightsError(f"the TFLite graph has {len(ops)} network operators, MoveNet has {len(slots)}")
    by_module = {id(module): op for op, (_, module) in zip(ops, slots, strict=True)}
    heads = {
        "heatmaps": model.heatmap_head, "centers": model.center_head,
        "regression": model.regression_head, "offsets": model.offset_head,
    }  # fmt: skip
    tensors = {}
    for name, head in heads.items():
        last = head.sigmoid_quant if head.sigmoid_quant is not None else head.out
        tensors[name] = int(by_module[id(last)].outputs[0])
    return tensors


class TFLiteEngine(Engine):
    """MoveNet's TFLite file in ai-edge-litert, returning the raw heads as our MoveNet does (NumPy).

    Input: our network input, (N, 3, H, W) float32 RGB 0..255 (MoveNet's spec has mean 0, std 1). The
    TFLite graph takes uint8 NHWC, so every value must be a whole number in 0..255 (what normalising a
    uint8 crop gives); anything else is an EngineError rather than a silent rounding. Outputs are
    dequantised with each tensor's scale and zero point and returned NCHW, float32.
    The graph has batch 1: a batch runs image by image.
    """

    backend = "tflite"
    device = "cpu"

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = 1) -> None:
        from rtpose.models.loading.tflite import parse_tflite, with_graph_outputs

        litert = _import("ai_edge_litert.interpreter", "ai-edge-litert")
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read TFLite file {self.path}: {exc}") from None
        graph = parse_tflite(data)
        self.head_tensors = movenet_head_tensors(graph)
        self.output_names = MOVENET_HEADS
        patched = with_graph_outputs(data, [self.head_tensors[name] for name in MOVENET_HEADS])
        try:
            self.interpreter = litert.Interpreter(model_content=patched, num_threads=threads)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"ai-edge-litert cannot load {self.path}: {exc}") from None
        details = self.interpreter.get_input_details()
        if len(details) != 1:
            raise EngineError(f"{self.path.name}: expected one input, the graph has {len(details)}")
        self._input = details[0]
        shape = tuple(int(v) for v in self._input["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or self._input["dtype"] != np.uint8:
            raise EngineError(f"{self.path.name}: expected a (1, H, W, 3) uint8 input, the graph has {shape}")
        self.input_size = (shape[1], shape[2])
        self._dequant: dict[int, tuple[float, int] | None] = {}
        for output in self.interpreter.get_output_details():
            quant = output["quantization_parameters"]
            scales, zero_points = quant["scales"], quant["zero_points"]
            self._dequant[output["index"]] = (float(scales[0]), int(zero_points[0])) if len(scales) else None

    def _to_pixels(self, batch: Any) -> np.ndarray:
        array = to_numpy_batch(batch)
        if array.shape[1:] != (3, *self.input_size):
            raise EngineError(
                f"{self.path.name}: input must be (N, 3, {self.input_size[0]}, {self.input_size[1]}), "
                f"got {tuple(array.shape)}"
            )
        rounded = np.rint(array)
        if array.size and (
            float(np.abs(array - rounded).max()) > _PIXEL_TOLERANCE
            or rounded.min() < 0
            or rounded.max() > 255
        ):
            raise EngineError(
                f"{self.path.name} takes uint8 pixels: the batch must hold whole numbers in 0..255 "
                "(RGB 0..255 crops of a uint8 image), not interpolated or normalised values"
            )
        return np.ascontiguousarray(rounded.astype(np.uint8).transpose(0, 2, 3, 1))

    def _dequantised(self, index: int) -> np.ndarray:
        value = self.interpreter.get_tensor(index)
        params = self._dequant[index]
        if params is None:
            return value.astype(np.float32)
        scale, zero_point = params
        return (value.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        pixels = self._to_pixels(batch)
        if not len(pixels):
            raise EngineError(f"{self.path.name}: empty batch")
        results: dict[str, list[np.ndarray]] = {name: [] for name in MOVENET_HEADS}
        for image in pixels:
            self.interpreter.set_tensor(self._input["index"], image[None])
            self.interpreter.invoke()
            for name in MOVENET_HEADS:
                results[name].append(self._dequantised(self.head_tensors[name])[0].transpose(2, 0, 1))
        return {name: np.ascontiguousarray(np.stack(values)) for name, values in results.items()}


class OpenVinoEngine(Engine):
    """Lightweight OpenPose's OpenVINO IR on the CPU, returning {"heatmaps", "pafs"} as our network does.

    Input: our network input, (N, 3, H, W) float32 normalised with `spec`'s mean/std in its channel
    order (openpose-lite: (x - 128) / 255, BGR). The IR takes raw BGR 0..255 and normalises inside its
    graph, so this engine undoes the spec's normalisation exactly (x * std + mean, then to BGR) and hands
    OpenVINO the raw batch. Any H, W (multiples of the stride) and batch size: the IR is reshaped and
    compiled once per input shape. mode: see OPENVINO_MODES.
    """

    backend = "openvino"
    device = "cpu"

    def __init__(
        self,
        xml_path: str | os.PathLike[str],
        *,
        mode: OpenVinoMode | str = "int8",
        threads: int | None = None,
        spec: ModelSpec | None = None,
        output_map: dict[str, str] | None = None,
    ) -> None:
        ov = _import("openvino", "openvino")
        if mode not in OPENVINO_MODES:
            raise EngineError(f"unknown OpenVINO mode {mode!r}; choose one of {', '.join(OPENVINO_MODES)}")
        self.path = Path(xml_path)
        if not self.path.is_file() or not self.path.with_suffix(".bin").is_file():
            raise EngineError(f"OpenVINO IR {self.path} (and its .bin beside it) not found")
        self.mode = mode
        self.threads = threads
        self.spec = spec if spec is not None else get_spec("openpose-lite")
        self.output_map = dict(output_map if output_map is not None else OPENPOSE_IR_OUTPUTS)
        self.output_names = tuple(self.output_map.values())
        self.core = ov.Core()
        try:
            model = self.core.read_model(str(self.path))
        except RuntimeError as exc:
            raise EngineError(f"OpenVINO cannot read {self.path}: {exc}") from None
        if len(model.inputs) != 1:
            raise EngineError(f"{self.path.name}: expected one input, the IR has {len(model.inputs)}")
        self.input_name = model.inputs[0].get_any_name()
        names = {name for output in model.outputs for name in output.get_names()}
        missing = sorted(set(self.output_map) - names)
        if missing:
            raise EngineError(f"{self.path.name} has no output(s) {missing}; it has {sorted(names)}")
        mean = np.asarray(self.spec.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.spec.std, np.float32).reshape(1, 3, 1, 1)
        self._mean, self._std = mean, std
        self._compiled: dict[tuple[int, ...], Any] = {}

    def _compile(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._compiled:
            model = self.core.read_model(str(self.path))
            if self.mode == "float":
                for op in model.get_ordered_ops():
                    # activation quantisers take a computed tensor; weight quantisers a constant
                    if op.get_type_name() == "FakeQuantize" and op.input_value(
                        0
                    ).get_node().get_type_name() not in (
                        "Constant",
                        "Convert",
                    ):
                        op.output(0).replace(op.input_value(0))
            model.reshape({self.input_name: list(shape)})
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
            if self.threads is not None:
                config["INFERENCE_NUM_THREADS"] = int(self.threads)
            if self.mode == "fq-f32":
                config["LP_TRANSFORMS_MODE"] = "NO"
            try:
                self._compiled[shape] = self.core.compile_model(model, "CPU", config)
            except RuntimeError as exc:
                raise EngineError(
                    f"OpenVINO cannot compile {self.path.name} for input {shape}: {exc}"
                ) from None
        return self._compiled[shape]

    def raw_input(self, batch: Any) -> np.ndarray:
        """The raw BGR 0..255 batch the IR takes, from our normalised batch."""
        array = to_numpy_batch(batch)
        if array.shape[1] != 3:
            raise EngineError(f"{self.path.name}: input must have 3 channels, got shape {tuple(array.shape)}")
        raw = array * self._std + self._mean
        if self.spec.channel_order == "RGB":
            raw = raw[:, ::-1]
        return np.ascontiguousarray(raw, dtype=np.float32)

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        raw = self.raw_input(batch)
        compiled = self._compile(tuple(int(v) for v in raw.shape))
        outputs = compiled({self.input_name: raw})
        by_name: dict[str, np.ndarray] = {}
        for port, value in outputs.items():
            for name in port.get_names():
                by_name[name] = value
        return {ours: np.asarray(by_name[theirs], np.float32) for theirs, ours in self.output_map.items()}
