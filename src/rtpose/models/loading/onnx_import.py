"""Weights of an ONNX export (mmdeploy end2end files, plain torch exports) -> our networks.

Exported graphs have BatchNorm folded into the convolutions and lose most parameter names, so we
cannot match by name. Instead both sides are put in execution order and paired one to one:

* ONNX side: float initializers in the order of the first node that uses them as a weight (Conv, Gemm,
  MatMul inputs; tensors of rank >= 1 in Mul/Add/Sub/Div, which is where ScaleNorm `g`, GAU
  `gamma`/`beta` and residual scales end up). Rank-0 constants (strides, eps) and tensors feeding
  Resize, NMS, Reshape and friends are not weights and are skipped.
* our side: the model with BatchNorm folded (`fuse_conv_bn`), run once on a dummy batch while a
  `TorchFunctionMode` records each parameter the first time any torch function receives it.

Both exporters (mmdeploy, torch.onnx) emit nodes in the order the PyTorch forward runs, and our
forwards follow the official ones, so the sequences line up; every pair is shape-checked (MatMul
weights are stored transposed) and any disagreement raises `WeightsError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from rtpose.errors import WeightsError
from rtpose.models.layers import fuse_conv_bn

_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (0, 1),
    "Mul": (0, 1),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Div": (0, 1),
}
_ELEMENTWISE = {"Mul", "Add", "Sub", "Div"}


@dataclass
class OnnxWeight:
    name: str
    array: np.ndarray
    op_type: str
    input_index: int
    transposed: bool  # stored as (in, out) for a MatMul / Gemm without transB

    def as_parameter_shape(self, shape: tuple[int, ...]) -> np.ndarray | None:
        array = self.array.T if self.transposed else self.array
        if array.shape == shape:
            return array
        squeeze = tuple(d for d in array.shape if d != 1)
        if array.size == int(np.prod(shape)) and squeeze == tuple(d for d in shape if d != 1):
            return array.reshape(shape)
        return None


def _load_graph(path: str | os.PathLike[str]) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    try:
        return onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises DecodeError / ValueError / RuntimeError for broken files
        raise WeightsError(f"{path} is not a readable ONNX model (truncated or corrupt?): {exc}") from exc


def onnx_weights(path: str | os.PathLike[str]) -> list[OnnxWeight]:
    """Weight-like float initializers of an ONNX file, in order of first use by the graph's nodes."""
    from onnx import helper, numpy_helper

    graph = _load_graph(path)
    initializers = {init.name: init for init in graph.initializer}
    seen: set[str] = set()
    weights: list[OnnxWeight] = []
    for node in graph.node:
        indices = _WEIGHT_INPUTS.get(node.op_type, ())
        for index in indices:
            if index >= len(node.input) or node.input[index] not in initializers or node.input[index] in seen:
                continue
            name = node.input[index]
            array = numpy_helper.to_array(initializers[name])
            if array.dtype.kind != "f" or (node.op_type in _ELEMENTWISE and array.ndim == 0):
                continue
            seen.add(name)
            transposed = False
            if node.op_type == "MatMul" and index == 1 and array.ndim == 2:
                transposed = True
            elif node.op_type == "Gemm" and index == 1:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                transposed = not attrs.get("transB", 0)
            weights.append(OnnxWeight(name, array.astype(np.float32), node.op_type, index, transposed))
    return weights


class _ParameterUseRecorder(TorchFunctionMode):
    """Records parameters in the order torch functions first receive them."""

    def __init__(self, parameters: dict[int, str]) -> None:
        super().__init__()
        self._names = parameters
        self.order: list[str] = []
        self._seen: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, nn.Parameter) and id(value) in self._names and id(value) not in self._seen:
                self._seen.add(id(value))
                self.order.append(self._names[id(value)])
        return func(*args, **kwargs)


def parameters_in_use_order(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of `model` in the order its forward first uses them."""
    named = dict(model.named_parameters())
    recorder = _ParameterUseRecorder({id(p): n for n, p in named.items()})
    with torch.no_grad(), recorder:
        model(example)
    unused = [n for n in named if n not in set(recorder.order)]
    if unused:
        raise WeightsError(f"parameters never used by the forward pass: {', '.join(unused[:5])}")
    return [(n, named[n]) for n in recorder.order]


def _example_input(model: nn.Module) -> torch.Tensor:
    height, width = getattr(model, "input_size", (64, 64))
    param = next(model.parameters())
    return torch.zeros(1, 3, height, width, dtype=param.dtype, device=param.device)


def load_mmdeploy_onnx(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Fold BatchNorm into `model`'s convs and fill it with the weights of an ONNX export.

    Returns the fused model in eval mode (the same object, modified in place).
    """
    weights = onnx_weights(path)
    fused = fuse_conv_bn(model)
    ours = parameters_in_use_order(fused, _example_input(fused))
    name = type(model).__name__
    if len(weights) != len(ours):
        raise WeightsError(
            f"{path} does not fit {name}: the graph has {len(weights)} weight tensors, the model "
            f"{len(ours)} parameters (after folding BatchNorm); is it an export of another architecture?"
        )
    values: list[np.ndarray] = []
    for position, ((param_name, param), weight) in enumerate(zip(ours, weights, strict=True)):
        array = weight.as_parameter_shape(tuple(param.shape))
        if array is None:
            raise WeightsError(
                f"{path} does not fit {name}: weight #{position} {weight.name!r} {weight.array.shape} "
                f"(used by {weight.op_type}) cannot fill {param_name} {tuple(param.shape)}"
            )
        values.append(array)
    with torch.no_grad():
        for (_, param), array in zip(ours, values, strict=True):
            param.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(param.dtype))
    return fused.eval()


@dataclass(frozen=True)
class NmsSettings:
    """The NonMaxSuppression inputs recorded in an exported detector graph."""

    max_output_boxes_per_class: int
    iou_threshold: float
    score_threshold: float


def mmdeploy_nms_settings(path: str | os.PathLike[str]) -> NmsSettings:
    """Read IoU / score thresholds and the per-class cap of the NMS node of an mmdeploy export."""
    from onnx import helper, numpy_helper

    graph = _load_graph(path)
    constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(helper.get_attribute_value(attr))
    for node in graph.node:
        if node.op_type == "NonMaxSuppression":
            try:
                cap, iou, score = (constants[node.input[i]] for i in (2, 3, 4))
            except (KeyError, IndexError) as exc:
                raise WeightsError(f"{path}: NonMaxSuppression inputs are not constants") from exc
            return NmsSettings(int(np.ravel(cap)[0]), float(np.ravel(iou)[0]), float(np.ravel(score)[0]))
    raise WeightsError(f"{path} has no NonMaxSuppression node (not an mmdeploy end2end detector?)")
