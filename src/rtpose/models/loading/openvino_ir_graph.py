"""A reader of OpenVINO IR (v10/v11) graphs: the .xml with xml.etree, the .bin with NumPy.

Why our own reader: the `openvino` package is an optional, large runtime; loading weights must work
where only our own dependencies are installed. The IR is simple: `<layers>` of typed nodes with
`<data>` attributes and numbered ports, `<edges>` from (layer, port) to (layer, port), and `Const`
layers that point at a byte range of the .bin with an element type and a shape.

Constant subgraphs (weight decompression: `Const(u8/i8) -> Convert -> FakeQuantize`, or
`-> Subtract(zero point) -> Multiply(scale)`, then maybe a `Reshape`) are folded here in NumPy.
Floating point is folded in float32 whatever the IR's f16 destination types say: OpenVINO does the
same when it runs an f16 IR at f32 inference precision, and f16 -> f32 is exact.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtpose.errors import WeightsError

#: IR element types we can hand out as arrays ("bf16" is widened by hand, below)
ELEMENT_DTYPES: dict[str, np.dtype] = {
    "f16": np.dtype("<f2"), "f32": np.dtype("<f4"), "f64": np.dtype("<f8"),
    "i8": np.dtype("i1"), "u8": np.dtype("u1"), "i16": np.dtype("<i2"), "u16": np.dtype("<u2"),
    "i32": np.dtype("<i4"), "u32": np.dtype("<u4"), "i64": np.dtype("<i8"), "u64": np.dtype("<u8"),
    "boolean": np.dtype("?"),
}  # fmt: skip
SUPPORTED_IR_VERSIONS = (10, 11)


@dataclass
class IrLayer:
    id: int
    name: str
    type: str
    attrs: dict[str, str]
    #: producers of each input, in input-port order: (layer id, output port id)
    inputs: list[tuple[int, int]] = field(default_factory=list)
    #: dims of each output port, in port order
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class IrGraph:
    name: str
    version: int
    layers: dict[int, IrLayer]
    #: layer id -> ids of the layers that read one of its outputs (graph order, repeats removed)
    consumers: dict[int, list[int]]
    #: every layer id, producers before consumers
    topo_order: list[int]
    weights: np.ndarray
    bin_path: Path

    def const_array(self, layer_id: int) -> np.ndarray:
        """The raw data of a Const layer, in its own element type."""
        layer = self.layers[layer_id]
        element_type = layer.attrs.get("element_type", "")
        shape = parse_shape(layer.attrs.get("shape", ""), layer)
        try:
            offset, size = int(layer.attrs["offset"]), int(layer.attrs["size"])
        except (KeyError, ValueError):
            raise WeightsError(
                f"{self.bin_path.with_suffix('.xml').name}: Const {layer.name!r} has no offset/size"
            ) from None
        if offset < 0 or offset + size > self.weights.size:
            raise WeightsError(
                f"{self.bin_path}: truncated weights file ({self.weights.size} bytes); Const {layer.name!r} "
                f"needs bytes {offset}..{offset + size}"
            )
        raw = self.weights[offset : offset + size]
        count = int(np.prod(shape, dtype=np.int64))
        if element_type == "bf16":
            if size != 2 * count:
                raise WeightsError(f"Const {layer.name!r}: {size} bytes do not hold bf16 {shape}")
            widened = raw.view("<u2").astype(np.uint32) << 16
            return widened.view(np.float32).reshape(shape)
        dtype = ELEMENT_DTYPES.get(element_type)
        if dtype is None:
            raise WeightsError(f"Const {layer.name!r}: unsupported element type {element_type!r}")
        if size != dtype.itemsize * count:
            raise WeightsError(f"Const {layer.name!r}: {size} bytes do not hold {element_type} {shape}")
        return raw.view(dtype).reshape(shape).copy()

    def producer(self, layer_id: int, input_index: int) -> IrLayer:
        return self.layers[self.layers[layer_id].inputs[input_index][0]]

    def fold(self, layer_id: int) -> np.ndarray | None:
        """The value of a layer whose inputs are all constant (float32 for float math), else None."""
        cache: dict[int, np.ndarray | None] = {}
        return self._fold(layer_id, cache)

    def _fold(self, layer_id: int, cache: dict[int, np.ndarray | None]) -> np.ndarray | None:
        if layer_id in cache:
            return cache[layer_id]
        layer = self.layers[layer_id]
        value: np.ndarray | None
        if layer.type == "Const":
            value = self.const_array(layer_id)
            if value.dtype.kind == "f":
                value = value.astype(np.float32)
        elif layer.type in _FOLDERS:
            args = [self._fold(src, cache) for src, _ in layer.inputs]
            value = None if any(a is None for a in args) else _FOLDERS[layer.type](layer, args)  # type: ignore[arg-type]
        else:
            value = None
        cache[layer_id] = value
        return value


def parse_shape(text: str, layer: IrLayer) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise WeightsError(f"layer {layer.name!r}: cannot read shape {text!r}") from None


def fake_quantize_np(
    x: np.ndarray,
    levels: int,
    in_low: np.ndarray,
    in_high: np.ndarray,
    out_low: np.ndarray,
    out_high: np.ndarray,
) -> np.ndarray:
    """OpenVINO FakeQuantize-1 in float32 (see rtpose.models.fake_quantize for the formula)."""
    x, in_low, in_high, out_low, out_high = (
        np.asarray(a, np.float32) for a in (x, in_low, in_high, out_low, out_high)
    )
    steps = np.float32(levels - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.round((x - in_low) / (in_high - in_low) * steps) / steps * (out_high - out_low) + out_low
    below = x <= np.minimum(in_low, in_high)
    above = x > np.maximum(in_low, in_high)
    return np.where(below, out_low, np.where(above, out_high, inside)).astype(np.float32)


def _float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype.kind in "fiub" and a.dtype != np.float32 else a


def _fold_convert(layer: IrLayer, args: list[np.ndarray]) -> np.ndarray:
    target = layer.attrs.get("destination_type", "")
    if target in ("f16", "f32", "f64", "bf16"):
        return args[0].astype(np.float32)
    if target in ELEMENT_DTYPES:
        return args[0].astype(ELEMENT_DTYPES[target])
    raise WeightsError(f"Convert {layer.name!r}: unsupported destination type {target!r}")


def _fold_reshape(layer: IrLayer, args: list[np.ndarray]) -> np.ndarray:
    data, target = args[0], [int(d) for d in args[1].ravel()]
    if layer.attrs.get("special_zero", "false").lower() == "true":
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    try:
        return data.reshape(target)
    except ValueError:
        raise WeightsError(f"Reshape {layer.name!r}: cannot reshape {data.shape} to {target}") from None


def _fold_unsqueeze(layer: IrLayer, args: list[np.ndarray]) -> np.ndarray:
    data = args[0]
    axes = sorted(int(a) % (data.ndim + args[1].size) for a in args[1].ravel())
    for axis in axes:
        data = np.expand_dims(data, axis)
    return data


def _fold_squeeze(layer: IrLayer, args: list[np.ndarray]) -> np.ndarray:
    if len(args) == 1:
        return np.squeeze(args[0])
    return np.squeeze(args[0], axis=tuple(int(a) % args[0].ndim for a in args[1].ravel()))


def _fold_fake_quantize(layer: IrLayer, args: list[np.ndarray]) -> np.ndarray:
    return fake_quantize_np(args[0], int(layer.attrs["levels"]), *args[1:5])


_FOLDERS: dict[str, Callable[[IrLayer, list[np.ndarray]], np.ndarray]] = {
    "Convert": _fold_convert,
    "Reshape": _fold_reshape,
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Transpose": lambda layer, a: np.transpose(a[0], [int(d) for d in a[1].ravel()]),
    "Multiply": lambda layer, a: (_float(a[0]) * _float(a[1])).astype(np.float32),
    "Subtract": lambda layer, a: (_float(a[0]) - _float(a[1])).astype(np.float32),
    "Add": lambda layer, a: (_float(a[0]) + _float(a[1])).astype(np.float32),
    "Divide": lambda layer, a: (_float(a[0]) / _float(a[1])).astype(np.float32),
    "FakeQuantize": _fold_fake_quantize,
}


def _layer_from_xml(node: ET.Element) -> IrLayer:
    try:
        layer_id = int(node.attrib["id"])
    except (KeyError, ValueError):
        raise WeightsError(f"IR layer without a numeric id: {node.attrib}") from None
    data = node.find("data")
    layer = IrLayer(
        layer_id,
        node.get("name", str(layer_id)),
        node.get("type", ""),
        dict(data.attrib) if data is not None else {},
    )
    output = node.find("output")
    if output is not None:
        for port in output.findall("port"):
            dims: list[int] = []
            for dim in port.findall("dim"):
                try:
                    dims.append(int(dim.text or ""))
                except ValueError:
                    dims.append(-1)  # dynamic dimension
            layer.output_shapes.append(tuple(dims))
    return layer


def read_ir(xml_path: str | Path) -> IrGraph:
    """Parse `model.xml` and read `model.bin` beside it; WeightsError for anything unusable."""
    xml_path = Path(xml_path)
    bin_path = xml_path.with_suffix(".bin")
    if not xml_path.is_file():
        raise WeightsError(f"OpenVINO IR {xml_path} does not exist")
    if not bin_path.is_file():
        raise WeightsError(
            f"OpenVINO IR {xml_path.name}: its weights {bin_path} are missing "
            "(the .bin must lie beside the .xml)"
        )
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise WeightsError(f"{xml_path}: not a readable IR xml ({e})") from None
    if root.tag != "net" or root.find("layers") is None or root.find("edges") is None:
        raise WeightsError(f"{xml_path}: not an OpenVINO IR (no <net> with <layers> and <edges>)")
    try:
        version = int(root.get("version", "0"))
    except ValueError:
        version = 0
    if version not in SUPPORTED_IR_VERSIONS:
        raise WeightsError(
            f"{xml_path}: IR version {root.get('version')!r} is not supported "
            f"(need one of {SUPPORTED_IR_VERSIONS})"
        )

    layers: dict[int, IrLayer] = {}
    input_ports: dict[int, list[int]] = {}
    for node in root.find("layers"):  # type: ignore[union-attr]
        layer = _layer_from_xml(node)
        if layer.id in layers:
            raise WeightsError(f"{xml_path}: layer id {layer.id} appears twice")
        layers[layer.id] = layer
        inp = node.find("input")
        input_ports[layer.id] = (
            [int(p.get("id", "-1")) for p in inp.findall("port")] if inp is not None else []
        )

    sources: dict[tuple[int, int], tuple[int, int]] = {}
    for edge in root.find("edges"):  # type: ignore[union-attr]
        try:
            src = (int(edge.attrib["from-layer"]), int(edge.attrib["from-port"]))
            dst = (int(edge.attrib["to-layer"]), int(edge.attrib["to-port"]))
        except (KeyError, ValueError):
            raise WeightsError(f"{xml_path}: malformed edge {edge.attrib}") from None
        if src[0] not in layers or dst[0] not in layers:
            raise WeightsError(f"{xml_path}: edge {edge.attrib} names a layer that does not exist")
        sources[dst] = src

    consumers: dict[int, list[int]] = {i: [] for i in layers}
    for layer_id, ports in input_ports.items():
        for port in ports:
            if (layer_id, port) not in sources:
                raise WeightsError(
                    f"{xml_path}: input port {port} of layer {layers[layer_id].name!r} is not connected"
                )
            src = sources[(layer_id, port)]
            layers[layer_id].inputs.append(src)
            if layer_id not in consumers[src[0]]:
                consumers[src[0]].append(layer_id)

    weights = np.fromfile(bin_path, dtype=np.uint8)
    return IrGraph(
        root.get("name", xml_path.stem),
        version,
        layers,
        consumers,
        _topological_order(layers, xml_path),
        weights,
        bin_path,
    )


def _topological_order(layers: dict[int, IrLayer], xml_path: Path) -> list[int]:
    """Kahn's algorithm, taking the lowest id first among ready layers (the IR's own order)."""
    import heapq

    pending = {i: len({src for src, _ in layer.inputs}) for i, layer in layers.items()}
    readers: dict[int, set[int]] = {i: set() for i in layers}
    for i, layer in layers.items():
        for src, _ in layer.inputs:
            readers[src].add(i)
    ready = [i for i, n in pending.items() if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        current = heapq.heappop(ready)
        order.append(current)
        for reader in readers[current]:
            pending[reader] -= 1
            if pending[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(layers):
        raise WeightsError(f"{xml_path}: the graph has a cycle")
    return order
