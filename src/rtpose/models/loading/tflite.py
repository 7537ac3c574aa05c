"""A small reader for TFLite flatbuffers, and the loader that maps a TFLite graph onto our networks.

Why our own reader: the official runtime (ai-edge-litert) is an optional, platform-specific wheel and
the `tflite` package drags in the generated flatbuffers code; the part of the schema we need (tensors,
buffers, quantisation, operators and a few option tables) is small enough to read by hand.

FlatBuffer layout in one paragraph: the file starts with a uint32 offset to the root table. A table
starts with an int32 that, subtracted from the table position, gives its vtable: uint16 vtable size,
uint16 table size, then one uint16 per field giving the field's offset inside the table (0 = absent,
take the default). Offsets to sub-tables, vectors and strings are uint32s relative to where they are
stored. A vector is a uint32 length followed by its elements. Field numbers below follow
tensorflow/lite/schema/schema.fbs (a union takes two slots: its type, then its value).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtpose.errors import WeightsError

#: TensorType enum of schema.fbs -> NumPy dtype (only the types we can hand out as arrays)
TENSOR_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f2"),
    2: np.dtype("<i4"),
    3: np.dtype("u1"),
    4: np.dtype("<i8"),
    6: np.dtype("?"),
    7: np.dtype("<i2"),
    9: np.dtype("i1"),
    10: np.dtype("<f8"),
}

#: BuiltinOperator enum of schema.fbs (the operators MoveNet-class graphs use, and their neighbours)
BUILTIN_OPERATORS: dict[int, str] = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU",
    21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH", 32: "CUSTOM",
    34: "PAD", 36: "GATHER", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 42: "DIV", 43: "SQUEEZE",
    45: "STRIDED_SLICE", 47: "EXP", 49: "SPLIT", 53: "CAST", 56: "ARG_MAX", 70: "EXPAND_DIMS",
    75: "SQRT", 77: "SHAPE", 83: "PACK", 88: "UNPACK", 90: "FLOOR_DIV", 97: "RESIZE_NEAREST_NEIGHBOR",
    107: "GATHER_ND", 114: "QUANTIZE", 117: "HARD_SWISH",
}  # fmt: skip

#: ActivationFunctionType enum of schema.fbs
ACTIVATIONS: dict[int, str] = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
PADDINGS: dict[int, str] = {0: "SAME", 1: "VALID"}


class _FlatBuffer:
    """Bounds-checked access to the tables, vectors and scalars of one flatbuffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _unpack(self, fmt: str, pos: int) -> Any:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise WeightsError(f"TFLite file is truncated or corrupt (read of {size} bytes at {pos})")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def root(self) -> int:
        return self._unpack("<I", 0)

    def field_pos(self, table: int, slot: int) -> int | None:
        """Absolute position of field `slot` of the table at `table`, or None when absent."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        entry = 4 + 2 * slot
        if entry + 2 > vtable_size:
            return None
        offset = self._unpack("<H", vtable + entry)
        return table + offset if offset else None

    def scalar(self, table: int, slot: int, fmt: str, default: Any) -> Any:
        pos = self.field_pos(table, slot)
        return default if pos is None else self._unpack(fmt, pos)

    def indirect(self, table: int, slot: int) -> int | None:
        """Target of an offset field (sub-table, vector or string)."""
        pos = self.field_pos(table, slot)
        return None if pos is None else pos + self._unpack("<I", pos)

    def vector(self, table: int, slot: int) -> tuple[int, int] | None:
        """(position of the first element, length) of a vector field."""
        pos = self.indirect(table, slot)
        if pos is None:
            return None
        length = self._unpack("<I", pos)
        return pos + 4, length

    def scalar_vector(self, table: int, slot: int, dtype: str) -> np.ndarray:
        vec = self.vector(table, slot)
        if vec is None:
            return np.zeros(0, dtype=dtype)
        start, length = vec
        nbytes = length * np.dtype(dtype).itemsize
        if start + nbytes > len(self.data):
            raise WeightsError("TFLite file is truncated or corrupt (vector runs past the end)")
        return np.frombuffer(self.data, dtype=dtype, count=length, offset=start).copy()

    def table_vector(self, table: int, slot: int) -> list[int]:
        vec = self.vector(table, slot)
        if vec is None:
            return []
        start, length = vec
        return [start + 4 * i + self._unpack("<I", start + 4 * i) for i in range(length)]

    def string(self, table: int, slot: int) -> str:
        pos = self.indirect(table, slot)
        if pos is None:
            return ""
        length = self._unpack("<I", pos)
        if pos + 4 + length > len(self.data):
            raise WeightsError("TFLite file is truncated or corrupt (string runs past the end)")
        return self.data[pos + 4 : pos + 4 + length].decode("utf-8", errors="replace")


@dataclass
class Quantization:
    """Affine quantisation of one tensor: real = scale * (q - zero_point), per channel along `axis`."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class TFLiteTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype | None
    type_code: int
    quantization: Quantization | None
    #: raw constant data (weights, constants), or None for activations
    data: np.ndarray | None = None

    def dequantized(self) -> np.ndarray:
        """The constant as float32 (dequantised with its per-tensor or per-channel parameters)."""
        if self.data is None:
            raise WeightsError(f"tensor {self.name!r} holds no constant data")
        values = self.data.astype(np.float64)
        q = self.quantization
        if q is None or q.scale.size == 0:
            return values.astype(np.float32)
        if q.per_channel:
            bshape = [1] * values.ndim
            bshape[q.axis] = -1
            scale = q.scale.reshape(bshape)
            zero = q.zero_point.reshape(bshape) if q.zero_point.size == q.scale.size else q.zero_point[0]
        else:
            scale, zero = q.scale[0], q.zero_point[0] if q.zero_point.size else 0
        return ((values - zero) * scale).astype(np.float32)


@dataclass
class TFLiteOperator:
    index: int
    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TFLiteGraph:
    """The first subgraph of a TFLite model: tensors (with constants) and operators in execution order."""

    tensors: list[TFLiteTensor]
    operators: list[TFLiteOperator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    version: int = 3
    description: str = ""

    def ops(self, op: str) -> list[TFLiteOperator]:
        return [o for o in self.operators if o.op == op]

    def producer(self, tensor: int) -> TFLiteOperator | None:
        for o in self.operators:
            if tensor in o.outputs:
                return o
        return None

    def consumers(self, tensor: int) -> list[TFLiteOperator]:
        return [o for o in self.operators if tensor in o.inputs]


def _conv_options(fb: _FlatBuffer, t: int) -> dict[str, Any]:
    return {
        "padding": PADDINGS.get(fb.scalar(t, 0, "<b", 0), "?"),
        "stride_w": fb.scalar(t, 1, "<i", 0),
        "stride_h": fb.scalar(t, 2, "<i", 0),
        "activation": ACTIVATIONS.get(fb.scalar(t, 3, "<b", 0), "?"),
        "dilation_w": fb.scalar(t, 4, "<i", 1),
        "dilation_h": fb.scalar(t, 5, "<i", 1),
    }


def _depthwise_options(fb: _FlatBuffer, t: int) -> dict[str, Any]:
    return {
        "padding": PADDINGS.get(fb.scalar(t, 0, "<b", 0), "?"),
        "stride_w": fb.scalar(t, 1, "<i", 0),
        "stride_h": fb.scalar(t, 2, "<i", 0),
        "depth_multiplier": fb.scalar(t, 3, "<i", 0),
        "activation": ACTIVATIONS.get(fb.scalar(t, 4, "<b", 0), "?"),
        "dilation_w": fb.scalar(t, 5, "<i", 1),
        "dilation_h": fb.scalar(t, 6, "<i", 1),
    }


def _activation_only(fb: _FlatBuffer, t: int) -> dict[str, Any]:
    return {"activation": ACTIVATIONS.get(fb.scalar(t, 0, "<b", 0), "?")}


def _resize_bilinear_options(fb: _FlatBuffer, t: int) -> dict[str, Any]:
    return {
        "align_corners": bool(fb.scalar(t, 2, "<B", 0)),
        "half_pixel_centers": bool(fb.scalar(t, 3, "<B", 0)),
    }


def _concat_options(fb: _FlatBuffer, t: int) -> dict[str, Any]:
    return {"axis": fb.scalar(t, 0, "<i", 0), "activation": ACTIVATIONS.get(fb.scalar(t, 1, "<b", 0), "?")}


# BuiltinOptions union member number -> reader; those not listed are kept as {} (we never need them).
_OPTION_READERS: dict[int, Callable[[_FlatBuffer, int], dict[str, Any]]] = {
    1: _conv_options,
    2: _depthwise_options,
    10: _concat_options,
    11: _activation_only,  # AddOptions
    15: _resize_bilinear_options,
    21: _activation_only,  # MulOptions
    28: _activation_only,  # SubOptions
    29: _activation_only,  # DivOptions
}


def parse_tflite(data: bytes) -> TFLiteGraph:
    """Parse a TFLite flatbuffer (its first subgraph). Raises WeightsError on anything malformed."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise WeightsError("not a TFLite model (missing the 'TFL3' file identifier)")
    fb = _FlatBuffer(data)
    try:
        return _parse_model(fb)
    except WeightsError:
        raise
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise WeightsError(f"TFLite file is corrupt: {exc}") from exc


def _parse_model(fb: _FlatBuffer) -> TFLiteGraph:
    model = fb.root()
    version = fb.scalar(model, 0, "<I", 0)
    opcodes: list[str] = []
    for oc in fb.table_vector(model, 1):
        deprecated = fb.scalar(oc, 0, "<b", 0)
        code = max(deprecated, fb.scalar(oc, 3, "<i", 0))
        opcodes.append(fb.string(oc, 1) if code == 32 else BUILTIN_OPERATORS.get(code, f"BUILTIN_{code}"))
    buffers: list[np.ndarray | None] = []
    for buf in fb.table_vector(model, 4):
        raw = fb.scalar_vector(buf, 0, "u1")
        if raw.size == 0 and fb.scalar(buf, 2, "<Q", 0):
            raise WeightsError(
                "TFLite files with buffers outside the flatbuffer (>2 GB models) are not supported"
            )
        buffers.append(raw if raw.size else None)
    subgraphs = fb.table_vector(model, 2)
    if not subgraphs:
        raise WeightsError("TFLite model has no subgraph")
    sg = subgraphs[0]

    tensors: list[TFLiteTensor] = []
    for index, t in enumerate(fb.table_vector(sg, 0)):
        shape = tuple(int(v) for v in fb.scalar_vector(t, 0, "<i4"))
        type_code = fb.scalar(t, 1, "<b", 0)
        dtype = TENSOR_DTYPES.get(type_code)
        buffer_index = fb.scalar(t, 2, "<I", 0)
        quant = None
        q = fb.indirect(t, 4)
        if q is not None:
            scale = fb.scalar_vector(q, 2, "<f4")
            if scale.size:
                quant = Quantization(
                    scale=scale, zero_point=fb.scalar_vector(q, 3, "<i8"), axis=fb.scalar(q, 6, "<i", 0)
                )
        data = None
        if 0 < buffer_index < len(buffers) and buffers[buffer_index] is not None:
            raw = buffers[buffer_index]
            if dtype is None:
                raise WeightsError(f"tensor {index} has an unsupported type code {type_code}")
            count = int(np.prod(shape)) if shape else 1
            needed = count * dtype.itemsize
            if raw.size != needed:
                raise WeightsError(
                    f"tensor {index}: buffer holds {raw.size} bytes, shape {shape} needs {needed}"
                )
            data = raw.view(dtype).reshape(shape)
        elif buffer_index >= len(buffers) and buffer_index:
            raise WeightsError(f"tensor {index} points at buffer {buffer_index} of {len(buffers)}")
        tensors.append(TFLiteTensor(index, fb.string(t, 3), shape, dtype, type_code, quant, data))

    operators: list[TFLiteOperator] = []
    for index, o in enumerate(fb.table_vector(sg, 3)):
        opcode_index = fb.scalar(o, 0, "<I", 0)
        if opcode_index >= len(opcodes):
            raise WeightsError(f"operator {index} uses opcode {opcode_index} of {len(opcodes)}")
        inputs = tuple(int(v) for v in fb.scalar_vector(o, 1, "<i4"))
        outputs = tuple(int(v) for v in fb.scalar_vector(o, 2, "<i4"))
        for ref in inputs + outputs:
            if ref >= len(tensors):
                raise WeightsError(f"operator {index} refers to tensor {ref} of {len(tensors)}")
        options: dict[str, Any] = {}
        reader = _OPTION_READERS.get(fb.scalar(o, 3, "<B", 0))
        options_table = fb.indirect(o, 4)
        if reader is not None and options_table is not None:
            options = reader(fb, options_table)
        operators.append(TFLiteOperator(index, opcodes[opcode_index], inputs, outputs, options))

    return TFLiteGraph(
        tensors=tensors,
        operators=operators,
        inputs=tuple(int(v) for v in fb.scalar_vector(sg, 1, "<i4")),
        outputs=tuple(int(v) for v in fb.scalar_vector(sg, 2, "<i4")),
        version=version,
        description=fb.string(model, 3),
    )


def read_tflite(path: str | Path) -> TFLiteGraph:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read TFLite file {path}: {exc}") from exc
    return parse_tflite(data)


# --- mapping a TFLite graph onto a network --------------------------------------------------------

#: graph operators that belong to the network proper (the decoding part of a graph uses other ops, or
#: the same ops on tensors of lower rank)
_NETWORK_OPS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise", "ADD": "add",
                "RESIZE_BILINEAR": "resize", "LOGISTIC": "sigmoid"}  # fmt: skip
_ACTIVATION_NAMES = {"NONE": "none", "RELU": "relu", "RELU6": "relu6"}


def network_operators(graph: TFLiteGraph) -> list[TFLiteOperator]:
    """The conv / depthwise / add / resize / sigmoid operators on 4-D activations, in execution order."""
    selected = []
    for op in graph.operators:
        if op.op not in _NETWORK_OPS:
            continue
        activations = [graph.tensors[i] for i in op.inputs if i >= 0 and graph.tensors[i].data is None]
        if all(len(t.shape) == 4 for t in activations) and len(graph.tensors[op.outputs[0]].shape) == 4:
            selected.append(op)
    return selected


def _per_tensor(tensor: TFLiteTensor) -> tuple[float, int]:
    q = tensor.quantization
    if q is None or q.scale.size != 1:
        raise WeightsError(f"tensor {tensor.name!r} is not quantised per tensor; INT8 emulation needs that")
    return float(q.scale[0]), int(q.zero_point[0]) if q.zero_point.size else 0


def _check_normalisation(graph: TFLiteGraph, first_conv: TFLiteOperator) -> None:
    """The ops before the first conv must map 0..255 to -1..1 (x / 127.5 - 1), which our network does."""

    def constant(op: TFLiteOperator) -> float:
        values = [graph.tensors[i] for i in op.inputs if graph.tensors[i].data is not None]
        if len(values) != 1:
            raise WeightsError(f"unexpected input normalisation operator {op.op} #{op.index}")
        return float(np.mean(values[0].dequantized()))

    lo, hi = 0.0, 255.0
    for op in graph.operators[: first_conv.index]:
        if op.op == "SUB":
            c = constant(op)
            lo, hi = lo - c, hi - c
        elif op.op == "MUL":
            c = constant(op)
            lo, hi = lo * c, hi * c
        elif op.op not in ("CAST", "QUANTIZE", "DEQUANTIZE"):
            raise WeightsError(f"unexpected operator {op.op} before the first convolution")
    if abs(lo + 1.0) > 1e-3 or abs(hi - 1.0) > 1e-3:
        raise WeightsError(f"the graph normalises 0..255 to {lo:.3f}..{hi:.3f}, the network expects -1..1")


def _load_conv(module: Any, op: TFLiteOperator, graph: TFLiteGraph, kind: str) -> None:
    import torch

    conv = module.conv
    weight_t, bias_t = graph.tensors[op.inputs[1]], graph.tensors[op.inputs[2]]
    weight = weight_t.dequantized()
    # TFLite: conv [O, kh, kw, I], depthwise [1, kh, kw, C]; torch: [O, I/groups, kh, kw]
    weight = weight.transpose(3, 0, 1, 2) if kind == "depthwise" else weight.transpose(0, 3, 1, 2)
    name = f"{op.op} #{op.index} ({weight_t.name})"
    if tuple(weight.shape) != tuple(conv.weight.shape):
        raise WeightsError(f"{name}: weight shape {weight.shape} does not fit {tuple(conv.weight.shape)}")
    bias = bias_t.dequantized() if bias_t.data is not None else np.zeros(weight.shape[0], np.float32)
    if tuple(bias.shape) != tuple(conv.bias.shape):
        raise WeightsError(f"{name}: bias shape {bias.shape} does not fit {tuple(conv.bias.shape)}")
    opts = op.options
    if (opts.get("stride_h"), opts.get("stride_w")) != (module.stride, module.stride):
        raise WeightsError(f"{name}: stride {opts.get('stride_h')} where the network has {module.stride}")
    if module.kernel > 1 and opts.get("padding") != "SAME":
        raise WeightsError(f"{name}: padding {opts.get('padding')} where the network pads SAME")
    if _ACTIVATION_NAMES.get(opts.get("activation", "?")) != module.act:
        raise WeightsError(f"{name}: activation {opts.get('activation')} where the network has {module.act}")
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        conv.bias.copy_(torch.from_numpy(bias))
    # the integer form, for INT8 emulation
    input_t, output_t = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    wq = weight_t.quantization
    if input_t.quantization is None or output_t.quantization is None or wq is None or bias_t.data is None:
        return
    int_weight = weight_t.data.astype(np.float32)
    int_weight = int_weight.transpose(3, 0, 1, 2) if kind == "depthwise" else int_weight.transpose(0, 3, 1, 2)
    if np.any(wq.zero_point != 0):
        raise WeightsError(f"{name}: weights with a non-zero zero point are not supported")
    weight_scale = np.broadcast_to(wq.scale.astype(np.float32), (weight.shape[0],)).copy()
    module.load_int8(
        torch.from_numpy(np.ascontiguousarray(int_weight)),
        torch.from_numpy(bias_t.data.astype(np.float64)),
        torch.from_numpy(weight_scale),
        _per_tensor(input_t)[0],
        *_per_tensor(output_t),
    )


def load_graph_into(model: Any, graph: TFLiteGraph) -> None:
    """Copy a TFLite graph's weights (dequantised) and activation quantisation onto `model`.

    `model` lists its layers in graph order through `graph_order()` (kind, module) and has an
    `input_quant`; conv modules have `.conv`, `.stride`, `.kernel`, `.act` and `.out_quant`; every
    quantiser has `load(scale, zero_point)`. Raises WeightsError wherever the graph does not fit.
    """
    ops = network_operators(graph)
    slots = list(model.graph_order())
    if len(ops) != len(slots):
        raise WeightsError(
            f"the TFLite graph has {len(ops)} network operators, the network expects {len(slots)}"
        )
    if not ops or ops[0].op != "CONV_2D":
        raise WeightsError("the TFLite graph does not start with a convolution")
    _check_normalisation(graph, ops[0])
    input_tensor = graph.tensors[ops[0].inputs[0]]
    if input_tensor.quantization is not None:
        scale, zero_point = _per_tensor(input_tensor)
        if abs(scale * 127.5 - 1.0) > 1e-5:
            raise WeightsError(f"the graph's input grid has step {scale}, the network expects 1/127.5")
        model.input_quant.load(scale, zero_point)
    for op, (kind, module) in zip(ops, slots, strict=True):
        if _NETWORK_OPS[op.op] != kind:
            raise WeightsError(f"graph operator #{op.index} is {op.op}, the network expects a {kind} here")
        out = graph.tensors[op.outputs[0]]
        if kind in ("conv", "depthwise"):
            _load_conv(module, op, graph, kind)
            quant = module.out_quant
        else:
            quant = module
        if kind == "resize" and (op.options.get("align_corners") or not op.options.get("half_pixel_centers")):
            raise WeightsError(f"RESIZE_BILINEAR #{op.index}: only half-pixel centres are supported")
        if out.quantization is not None and kind not in ("conv", "depthwise"):
            quant.load(*_per_tensor(out))


def load_movenet_tflite(model: Any, path: str | Path, *, int8_emulation: bool = True) -> Any:
    """Load a MoveNet TFLite file into our MoveNet: weights, and the INT8 emulation (on by default)."""
    graph = read_tflite(path)
    load_graph_into(model, graph)
    if int8_emulation:
        model.set_int8_emulation(True)
    return model


def with_graph_outputs(data: bytes, tensors: Sequence[int]) -> bytes:
    """A copy of a TFLite flatbuffer whose first subgraph outputs exactly `tensors` (graph indices).

    Why: a runtime exposes only graph outputs reliably (delegates such as XNNPACK never materialise
    tensors inside the part of the graph they take over), so reading intermediate tensors, e.g. the raw
    heads of a model whose graph decodes them, means making them outputs. The new output vector is
    appended at the end of the buffer (4-byte aligned) and the subgraph's `outputs` field is re-pointed
    at it; flatbuffer offsets are unsigned and point forward, which an appended vector satisfies. Nothing
    else moves, so every other offset stays valid.
    """
    graph = parse_tflite(data)  # validates the file and gives the tensor count
    wanted = [int(t) for t in tensors]
    if not wanted:
        raise WeightsError("with_graph_outputs needs at least one tensor")
    for index in wanted:
        if not 0 <= index < len(graph.tensors):
            raise WeightsError(f"tensor {index} does not exist; the graph has {len(graph.tensors)} tensors")
    fb = _FlatBuffer(data)
    subgraph = fb.table_vector(fb.root(), 2)[0]
    field = fb.field_pos(subgraph, 2)
    if field is None:
        raise WeightsError("the TFLite subgraph has no outputs field to re-point")
    out = bytearray(data)
    out += b"\x00" * (-len(out) % 4)
    vector_pos = len(out)
    out += struct.pack(f"<I{len(wanted)}i", len(wanted), *wanted)
    out[field : field + 4] = struct.pack("<I", vector_pos - field)
    return bytes(out)
