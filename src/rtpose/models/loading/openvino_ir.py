"""Load the weights (and the INT8 quantisation) of an OpenVINO IR into one of our PyTorch networks.

The IR graph is reduced to a list of records in topological order: convolutions (weights folded from
their decompression subgraph, bias, activation), residual adds and concats, each with the
FakeQuantize that an INT8 graph puts on its output. The network lists its blocks in the same order
(`ir_units`), so records and blocks are matched one to one, and every shape, stride, padding,
dilation, group count, activation and add/concat wiring is checked before anything is copied.

Two modes: plain float (weights dequantised, activation FakeQuantize nodes ignored; the default) or
emulation of the INT8 model. The emulation follows OpenVINO's CPU execution of the IR where the importer
can plan it (`rtpose.models.openvino_cpu_int8`: integer codes, fused adds, concats on a common grid),
else the IR's FakeQuantize formula. The ranges and the plan are loaded in both modes, so
`model.set_int8_emulation(...)` can switch later.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtpose.errors import WeightsError
from rtpose.models.ir_blocks import Concat, ConvAct, IrMappable, ResidualAdd
from rtpose.models.loading.openvino_ir_graph import IrGraph, IrLayer, read_ir
from rtpose.models.openvino_cpu_int8 import QuantPlan, concat_plans, quant_plan

INPUT = -1  # record index of the network input
_ACTIVATIONS = {"ReLU": "relu", "Elu": "elu", "PReLU": "prelu"}


@dataclass
class FqRanges:
    levels: int
    input_low: np.ndarray
    input_high: np.ndarray
    output_low: np.ndarray
    output_high: np.ndarray
    #: the FakeQuantize layer's name in the IR
    name: str = ""

    def load_into(self, quantizer: Any, channels: int, where: str) -> None:
        for name in ("input_low", "input_high", "output_low", "output_high"):
            size = getattr(self, name).size
            if size not in (1, channels):
                raise WeightsError(
                    f"FakeQuantize after {where}: {name} has {size} values for {channels} channels"
                )
        quantizer.load(
            self.levels,
            *(torch.from_numpy(np.asarray(getattr(self, n), np.float32).copy()) for n in
              ("input_low", "input_high", "output_low", "output_high")),
        )  # fmt: skip


@dataclass
class ConvRecord:
    name: str
    source: int
    weight: np.ndarray
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, ...], tuple[int, ...]]
    bias: np.ndarray | None = None
    act: str = "none"
    act_param: np.ndarray | float | None = None
    out_fq: FqRanges | None = None
    kind: str = "conv"
    #: spacing of the quantised weights per output channel (their FakeQuantize), None for float weights
    weight_step: np.ndarray | None = None


@dataclass
class AddRecord:
    name: str
    sources: tuple[int, ...]
    out_fq: FqRanges | None = None
    kind: str = "add"


@dataclass
class ConcatRecord:
    name: str
    sources: tuple[int, ...]
    axis: int
    out_fq: FqRanges | None = None
    kind: str = "concat"


@dataclass
class InputRecord:
    name: str
    #: the graph computes x * scale + shift on its input before anything else
    scale: np.ndarray = field(default_factory=lambda: np.ones((), np.float32))
    shift: np.ndarray = field(default_factory=lambda: np.zeros((), np.float32))
    out_fq: FqRanges | None = None


Record = ConvRecord | AddRecord | ConcatRecord


@dataclass
class IrImportReport:
    """What `load_openvino_ir` found and loaded."""

    graph_name: str
    ir_version: int
    num_convolutions: int
    #: FakeQuantize nodes on activations (0 for a float IR)
    num_activation_fq: int
    #: FakeQuantize nodes folded into weights
    num_weight_fq: int
    #: element types of the Const data, with counts
    const_element_types: dict[str, int]
    #: the IR's own input normalisation: network input = raw * input_scale + input_shift
    input_scale: np.ndarray
    input_shift: np.ndarray
    #: IR output (Result producer) name -> our block name
    outputs: dict[str, str]
    int8_emulation: bool
    #: the blocks can follow OpenVINO's CPU INT8 execution (int8 semantics "openvino-cpu")
    cpu_int8_plan: bool = False


def load_openvino_ir(
    model: IrMappable, xml_path: str | Path, *, emulate_int8: bool = False
) -> IrImportReport:
    """Copy the weights of `xml_path` (+ the .bin beside it) into `model`; WeightsError if they do not fit."""
    graph = read_ir(xml_path)
    input_record, records, results = _records(graph)
    units = model.ir_units()
    where = Path(xml_path).name
    if len(records) != len(units):
        raise WeightsError(
            f"{where}: the IR has {len(records)} blocks (convolutions, adds, concats), "
            f"our {type(model).__name__} has {len(units)}: this IR does not fit the network"
        )
    names = [name for name, _ in units]
    for record, (name, unit) in zip(records, units, strict=True):
        _check(record, name, unit, names, where)
    outputs = {ir_name: names[index] for ir_name, index in results.items()}
    expected_outputs = getattr(model, "ir_outputs", None)
    if expected_outputs is not None and set(outputs.values()) != set(expected_outputs()):
        raise WeightsError(
            f"{where}: the IR's outputs come from {sorted(outputs.values())}, "
            f"ours from {sorted(expected_outputs())}"
        )

    num_fq = sum(r.out_fq is not None for r in records) + (input_record.out_fq is not None)
    if emulate_int8 and num_fq == 0:
        raise WeightsError(
            f"{where}: INT8 emulation asked for, but the IR has no activation FakeQuantize nodes"
        )
    with torch.no_grad():
        for record, (name, unit) in zip(records, units, strict=True):
            _copy(record, name, unit)
        if input_record.out_fq is not None:
            input_record.out_fq.load_into(model.input_quant, 3, "the input")
        planned = bool(num_fq) and _plan_cpu_int8(model, input_record, records, units)
    if num_fq:
        model.set_int8_emulation(emulate_int8, "openvino-cpu" if planned else "fake-quantize")

    counts = Counter(
        layer.attrs.get("element_type", "?") for layer in graph.layers.values() if layer.type == "Const"
    )
    weight_fq = sum(
        1
        for layer in graph.layers.values()
        if layer.type == "FakeQuantize" and graph.fold(layer.inputs[0][0]) is not None
    )
    return IrImportReport(
        graph_name=graph.name,
        ir_version=graph.version,
        num_convolutions=sum(isinstance(r, ConvRecord) for r in records),
        num_activation_fq=num_fq,
        num_weight_fq=weight_fq,
        const_element_types=dict(counts),
        input_scale=input_record.scale,
        input_shift=input_record.shift,
        outputs=outputs,
        int8_emulation=bool(emulate_int8),
        cpu_int8_plan=planned,
    )


# -- reducing the IR graph to records ------------------------------------------------------------------------


def _constant_layers(graph: IrGraph) -> set[int]:
    constant: set[int] = set()
    for layer_id in graph.topo_order:
        layer = graph.layers[layer_id]
        if layer.type == "Const" or (layer.inputs and all(src in constant for src, _ in layer.inputs)):
            constant.add(layer_id)
    return constant


def _fold(graph: IrGraph, layer: IrLayer, index: int, what: str) -> np.ndarray:
    value = graph.fold(layer.inputs[index][0])
    if value is None:
        raise WeightsError(f"{layer.type} {layer.name!r}: its {what} is not a constant we can fold")
    return value


def _weight_step(graph: IrGraph, conv: IrLayer) -> np.ndarray | None:
    """Spacing of a convolution's quantised weights per output channel, if a FakeQuantize makes them."""
    node = graph.producer(conv.id, 1)
    while node.type in ("Reshape", "Convert", "Squeeze", "Unsqueeze"):
        node = graph.producer(node.id, 0)
    if node.type != "FakeQuantize":
        return None
    out_low, out_high = (_fold(graph, node, i, "weight range") for i in (3, 4))
    levels = np.float32(int(node.attrs.get("levels", "0")) - 1)
    return ((out_high.astype(np.float32) - out_low.astype(np.float32)) / levels).reshape(-1)


def _ints(layer: IrLayer, key: str, default: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in layer.attrs.get(key, default).split(","))
    except ValueError:
        raise WeightsError(
            f"{layer.type} {layer.name!r}: cannot read {key}={layer.attrs.get(key)!r}"
        ) from None


def _records(graph: IrGraph) -> tuple[InputRecord, list[Record], dict[str, int]]:
    """Walk the graph once; returns the input, the blocks in order, and {output name: block index}."""
    constant = _constant_layers(graph)
    input_record: InputRecord | None = None
    records: list[Record] = []
    # layer id -> (record index, stage) of the value that layer outputs
    value_of: dict[int, tuple[int, str]] = {}
    uses: list[tuple[str, int, str]] = []  # (reader, record index, stage read)
    results: dict[str, int] = {}

    def data_input(layer: IrLayer, index: int, consuming: bool = False) -> tuple[int, str]:
        """The (record, stage) a layer reads; `consuming` for layers that start a new block or output."""
        src = layer.inputs[index][0]
        if src not in value_of:
            raise WeightsError(f"{layer.type} {layer.name!r} reads {graph.layers[src].type} "
                               f"{graph.layers[src].name!r}, which we cannot map")  # fmt: skip
        record, stage = value_of[src]
        if consuming:
            uses.append((layer.name, record, stage))
        return record, stage

    def record_at(index: int) -> Record | InputRecord:
        return input_record if index == INPUT else records[index]  # type: ignore[return-value]

    for layer_id in graph.topo_order:
        if layer_id in constant:
            continue
        layer = graph.layers[layer_id]
        kind = layer.type
        if kind == "Parameter":
            if input_record is not None:
                raise WeightsError(f"the IR has more than one input ({input_record.name!r}, {layer.name!r})")
            input_record = InputRecord(layer.name)
            value_of[layer_id] = (INPUT, "input")
        elif kind in ("Convolution", "GroupConvolution"):
            source, _ = data_input(layer, 0, consuming=True)
            weight = _fold(graph, layer, 1, "weight")
            groups = 1
            if kind == "GroupConvolution":
                if weight.ndim != 5:
                    raise WeightsError(
                        f"GroupConvolution {layer.name!r}: weight of shape {weight.shape}, need 5-D"
                    )
                groups = weight.shape[0]
                weight = weight.reshape(groups * weight.shape[1], *weight.shape[2:])
            if weight.ndim != 4:
                raise WeightsError(
                    f"{kind} {layer.name!r}: only 2-D convolutions are supported, weight {weight.shape}"
                )
            auto_pad = layer.attrs.get("auto_pad", "explicit").lower()
            if auto_pad not in ("explicit", "notset", "valid", ""):
                raise WeightsError(f"{kind} {layer.name!r}: auto_pad={auto_pad!r} is not supported")
            pads = (
                ((0, 0), (0, 0))
                if auto_pad == "valid"
                else (_ints(layer, "pads_begin", "0,0"), _ints(layer, "pads_end", "0,0"))
            )
            strides, dilations = _ints(layer, "strides", "1,1"), _ints(layer, "dilations", "1,1")
            records.append(
                ConvRecord(layer.name, source, weight.astype(np.float32), groups, strides, dilations, pads,
                           weight_step=_weight_step(graph, layer))
            )  # fmt: skip
            value_of[layer_id] = (len(records) - 1, "conv")
        elif kind in ("Add", "Multiply", "Subtract") and any(src in constant for src, _ in layer.inputs):
            data_index = 0 if layer.inputs[1][0] in constant else 1
            record_index, stage = data_input(layer, data_index)
            operand = _fold(graph, layer, 1 - data_index, "operand")
            if record_index == INPUT and stage == "input":
                assert input_record is not None
                if kind == "Multiply":
                    input_record.scale = input_record.scale * operand
                    input_record.shift = input_record.shift * operand
                elif kind == "Add":
                    input_record.shift = input_record.shift + operand
                elif data_index == 0:  # x - c
                    input_record.shift = input_record.shift - operand
                else:
                    raise WeightsError(f"Subtract {layer.name!r}: c - x on the input is not supported")
            elif kind == "Add" and record_index != INPUT and stage == "conv":
                record = records[record_index]
                assert isinstance(record, ConvRecord)
                channels = record.weight.shape[0]
                if operand.size != channels or (operand.ndim == 4 and operand.shape[1] != channels):
                    raise WeightsError(
                        f"bias {layer.name!r} of shape {operand.shape} for {channels} channels"
                    )
                record.bias = operand.reshape(channels).astype(np.float32)
            else:
                raise WeightsError(f"{kind} {layer.name!r} by a constant after a {stage} is not supported")
            value_of[layer_id] = (record_index, stage)
        elif kind in _ACTIVATIONS:
            record_index, stage = data_input(layer, 0)
            record = record_at(record_index)
            if not isinstance(record, ConvRecord) or stage not in ("conv", "bias"):
                raise WeightsError(f"{kind} {layer.name!r} must follow a convolution (and its bias)")
            record.act = _ACTIVATIONS[kind]
            if kind == "Elu":
                record.act_param = float(layer.attrs.get("alpha", "1"))
            elif kind == "PReLU":
                record.act_param = _fold(graph, layer, 1, "slope").astype(np.float32)
            value_of[layer_id] = (record_index, "act")
        elif kind == "FakeQuantize":
            record_index, _ = data_input(layer, 0)
            ranges = [_fold(graph, layer, i, "range") for i in range(1, 5)]
            target = record_at(record_index)
            if target.out_fq is not None:
                raise WeightsError(
                    f"FakeQuantize {layer.name!r}: a second FakeQuantize on one output is not supported"
                )
            target.out_fq = FqRanges(int(layer.attrs.get("levels", "0")), *ranges, name=layer.name)
            value_of[layer_id] = (record_index, "fq")
        elif kind == "Add":
            sources = tuple(data_input(layer, i, consuming=True)[0] for i in range(len(layer.inputs)))
            records.append(AddRecord(layer.name, sources))
            value_of[layer_id] = (len(records) - 1, "add")
        elif kind == "Concat":
            sources = tuple(data_input(layer, i, consuming=True)[0] for i in range(len(layer.inputs)))
            records.append(ConcatRecord(layer.name, sources, int(layer.attrs.get("axis", "1"))))
            value_of[layer_id] = (len(records) - 1, "concat")
        elif kind == "Result":
            record_index, _ = data_input(layer, 0, consuming=True)
            producer = graph.layers[layer.inputs[0][0]]
            results[producer.name] = record_index
        else:
            raise WeightsError(f"IR operation {kind} ({layer.name!r}) is not supported by our importer")

    if input_record is None:
        raise WeightsError("the IR has no input (Parameter)")
    # Blocks end where their last attachment (bias, activation, FakeQuantize) ends; a branch that reads
    # a block half-way (say before its activation) cannot be expressed by our blocks.
    final_stage = {index: stage for index, stage in value_of.values()}
    for reader, index, stage in uses:
        if stage != final_stage[index]:
            raise WeightsError(
                f"{reader!r} reads an intermediate value of block {index} ({stage}, not {final_stage[index]})"
            )
    return input_record, records, results


# -- OpenVINO's CPU INT8 execution ---------------------------------------------------------------------------


def _plan_cpu_int8(
    model: IrMappable, input_record: InputRecord, records: list[Record], units: list[tuple[str, Any]]
) -> bool:
    """Give the blocks the plan of OpenVINO's CPU INT8 execution (rules in `rtpose.models.openvino_cpu_int8`).

    False, leaving the blocks without a plan, where the IR has a structure the rules do not cover.
    """

    def record_at(index: int) -> Record | InputRecord:
        return input_record if index == INPUT else records[index]

    plans: dict[int, QuantPlan] = {}
    readers: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        for source in (record.source,) if isinstance(record, ConvRecord) else record.sources:
            readers.setdefault(source, []).append(index)

    def plan_of(index: int, fused_into_convolution: bool = True) -> QuantPlan:
        fq = record_at(index).out_fq
        assert fq is not None
        return quant_plan(
            fq.levels, fq.input_low, fq.input_high, fq.output_low, fq.output_high,
            fused_into_convolution=fused_into_convolution and not isinstance(record_at(index), AddRecord),
        )  # fmt: skip

    try:
        for index in (INPUT, *range(len(records))):
            if record_at(index).out_fq is not None:
                plans[index] = plan_of(index)
        raw: set[int] = set()  # blocks whose readers quantise their output themselves
        for record in records:
            if isinstance(record, ConcatRecord):
                fqs = [record_at(source).out_fq for source in record.sources]
                if any(fq is None for fq in fqs) or INPUT in record.sources:
                    return False
                ranges = [(fq.levels, fq.input_low, fq.input_high) for fq in fqs]  # type: ignore[union-attr]
                # rule 4: the concat's grid is the sources' quantisation for every reader (one u8 tensor)
                plans.update(zip(record.sources, concat_plans(ranges), strict=True))
                raw.update(record.sources)

        def step_of(index: int) -> torch.Tensor:
            record = record_at(index)
            quantised = record.sources[0] if isinstance(record, ConcatRecord) else index  # one common step
            return torch.from_numpy(plans[quantised].step.copy())

        adds: dict[int, int] = {}  # add record -> the position of its fused operand, -1 for none
        for index, record in enumerate(records):
            if isinstance(record, AddRecord):
                if len(record.sources) != 2 or any(plans[s].step.size != 1 for s in record.sources):
                    return False
                unsigned = all(np.all(plans[s].offset == 0) for s in record.sources)
                position = int(np.argmax(record.sources)) if unsigned else -1  # the operand computed last
                if position >= 0:
                    conv, other = record.sources[position], record.sources[1 - position]
                    if not isinstance(record_at(conv), ConvRecord) or len(readers[conv]) != 1:
                        return False
                    raw.add(conv)
                    # the other operand is read from memory by the fused add: its quantisation runs
                    # as a node of its own when a convolution reads the tensor too
                    if len(readers[other]) > 1:
                        plans[other] = plan_of(other, fused_into_convolution=False)
                adds[index] = position
        if any(not isinstance(record_at(i), ConvRecord) for i in raw):
            return False
        for index, record in enumerate(records):
            unit = units[index][1]
            if isinstance(record, ConvRecord):
                if record.weight_step is None:
                    return False
                weight_step = torch.from_numpy(record.weight_step.copy())
                unit.load_cpu_plan(step_of(record.source), weight_step, index in raw)
                if record.source in raw:  # a raw block read by a convolution: quantise it here
                    unit.input_quant = _quantiser(record_at(record.source).out_fq, plans[record.source])
            elif isinstance(record, AddRecord):
                fields = [
                    torch.tensor(
                        [float(np.asarray(getattr(plans[s], name)).reshape(-1)[0]) for s in record.sources]
                    )
                    for name in ("step", "offset", "low", "high")
                ]
                unit.load_cpu_plan(adds[index], *fields)
            elif isinstance(record, ConcatRecord):
                unit.input_quants = torch.nn.ModuleList(
                    _quantiser(record_at(s).out_fq, plans[s]) for s in record.sources
                )
    except (ValueError, KeyError, RuntimeError):
        return False
    for index, plan in plans.items():
        (model.input_quant if index == INPUT else units[index][1].out_quant).load_plan(plan)
    return True


def _quantiser(ranges: FqRanges | None, plan: QuantPlan) -> Any:
    from rtpose.models.fake_quantize import FakeQuantize

    assert ranges is not None
    quantiser = FakeQuantize()
    ranges.load_into(quantiser, _channels_of(ranges), ranges.name)
    quantiser.load_plan(plan)
    return quantiser


# -- checking and copying ------------------------------------------------------------------------------------


def _check(record: Record, name: str, unit: Any, names: list[str], where: str) -> None:
    def misfit(detail: str) -> WeightsError:
        return WeightsError(f"{where}: IR layer {record.name!r} does not fit our block {name!r}: {detail}")

    if isinstance(record, ConvRecord):
        if not isinstance(unit, ConvAct):
            raise misfit(f"a convolution where we have a {type(unit).__name__}")
        conv = unit.conv
        if tuple(record.weight.shape) != tuple(conv.weight.shape):
            raise misfit(f"weight shape {tuple(record.weight.shape)}, ours {tuple(conv.weight.shape)}")
        padding = tuple(conv.padding) if not isinstance(conv.padding, str) else ()
        checks = {"groups": (record.groups, conv.groups), "stride": (record.stride, tuple(conv.stride)),
                  "dilation": (record.dilation, tuple(conv.dilation)),
                  "pads_begin": (record.pads[0], padding), "pads_end": (record.pads[1], padding),
                  "activation": (record.act, unit.act_kind)}  # fmt: skip
        for what, (theirs, ours) in checks.items():
            if theirs != ours:
                raise misfit(f"{what} {theirs}, ours {ours}")
        if record.act == "elu" and record.act_param != getattr(unit.act, "alpha", 1.0):
            raise misfit(f"ELU alpha {record.act_param}")
    elif isinstance(record, AddRecord):
        if not isinstance(unit, ResidualAdd):
            raise misfit(f"a residual add where we have a {type(unit).__name__}")
        theirs = tuple(names[i] if i >= 0 else "<input>" for i in record.sources)
        if theirs != tuple(unit.inputs):
            raise misfit(f"adds {theirs}, ours adds {unit.inputs}")
    elif isinstance(record, ConcatRecord):
        if not isinstance(unit, Concat):
            raise misfit(f"a concat where we have a {type(unit).__name__}")
        theirs = tuple(names[i] if i >= 0 else "<input>" for i in record.sources)
        if theirs != tuple(unit.inputs) or record.axis != 1:
            raise misfit(f"concatenates {theirs} on axis {record.axis}, ours {unit.inputs} on axis 1")
        if record.out_fq is not None:
            raise misfit("a FakeQuantize after a concat is not supported")


def _copy(record: Record, name: str, unit: Any) -> None:
    if isinstance(record, ConvRecord):
        conv = unit.conv
        conv.weight.copy_(torch.from_numpy(record.weight))
        bias = record.bias if record.bias is not None else np.zeros(conv.out_channels, np.float32)
        conv.bias.copy_(torch.from_numpy(bias))
        if record.act == "prelu":
            slope = np.asarray(record.act_param, np.float32).ravel()
            if slope.size not in (1, unit.act.weight.numel()):
                raise WeightsError(
                    f"PReLU after {record.name!r}: {slope.size} slopes for {unit.act.weight.numel()} channels"
                )
            unit.act.weight.copy_(torch.from_numpy(np.broadcast_to(slope, unit.act.weight.shape).copy()))
        channels = conv.out_channels
    else:
        channels = 0
    if record.out_fq is not None:
        record.out_fq.load_into(
            unit.out_quant, channels or _channels_of(record.out_fq), f"{record.name!r} ({name})"
        )


def _channels_of(ranges: FqRanges) -> int:
    return max(
        np.asarray(getattr(ranges, n)).size for n in ("input_low", "input_high", "output_low", "output_high")
    )
