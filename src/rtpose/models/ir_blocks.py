"""Building blocks that an imported inference graph (OpenVINO IR) maps onto one to one.

Inference exports fold batch norm into the convolution, so a block is a convolution with bias, an
activation, and the FakeQuantize that an INT8 graph puts on the block's output. A network built of
these blocks lists them in graph order (`IrMappable.ir_units`), which is all an importer needs: it
walks the foreign graph, and checks and fills the blocks one by one.

Convolutions, adds and concats can also run as OpenVINO's CPU plugin runs them in INT8
(`rtpose.models.openvino_cpu_int8`) once the importer has planned them (`load_cpu_plan`, `load_plan`)
and emulation with "openvino-cpu" semantics is on.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import nn

from rtpose.models import openvino_cpu_int8 as cpu_int8
from rtpose.models.fake_quantize import FakeQuantize, Int8Semantics

Activation = Literal["none", "relu", "elu", "prelu"]


class ConvAct(nn.Module):
    """Conv2d (with bias, 'same' padding for odd kernels) -> activation -> output FakeQuantize."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: Activation = "relu",
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups
        )
        self.act_kind: Activation = act
        self.act: nn.Module
        if act == "relu":
            self.act = nn.ReLU(inplace=True)
        elif act == "elu":
            self.act = nn.ELU(inplace=True)
        elif act == "prelu":
            self.act = nn.PReLU(out_channels)
        elif act == "none":
            self.act = nn.Identity()
        else:
            raise ValueError(f"unknown activation {act!r}")
        self.out_quant = FakeQuantize()
        #: follow OpenVINO's CPU INT8 execution (set by `set_int8_semantics` once a plan is loaded)
        self.cpu_int8 = False
        #: its readers quantise its output themselves (a residual add fused into this convolution, or a
        #: concat that quantises on a grid of its own): the output FakeQuantize is skipped
        self.raw_output = False
        #: quantises a raw input (from a block with raw_output) as that block's FakeQuantize would
        self.input_quant: FakeQuantize | None = None
        for name in ("input_step", "weight_codes", "dequant_scale"):
            self.register_buffer(name, torch.zeros(0), persistent=False)

    def load_cpu_plan(self, input_step: torch.Tensor, weight_step: torch.Tensor, raw_output: bool) -> None:
        """Integer weights and scales for OpenVINO's CPU INT8 execution; weight_step per output channel."""
        weight = self.conv.weight.detach().double()
        step = weight_step.double().view(-1, 1, 1, 1)
        weight_codes = torch.round(weight / step)
        if (weight - weight_codes * step).abs().max() > 1e-3 * step.max():
            raise ValueError("the weights are not integer multiples of their quantisation step")
        device = self.conv.weight.device
        self.input_step = input_step.float().to(device)
        self.weight_codes = weight_codes.float().to(device)
        self.dequant_scale = (input_step.float().reshape(-1) * weight_step.float()).to(device)
        self.raw_output = raw_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cpu_int8:
            return self.out_quant(self.act(self.conv(x)))
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = cpu_int8.convolve(self.conv, x, self.input_step, self.weight_codes, self.dequant_scale)
        y = cpu_int8.elu(y, self.act.alpha) if self.act_kind == "elu" else self.act(y)
        return y if self.raw_output else self.out_quant(y)


def conv_dw(
    in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1, act: Activation = "relu"
):
    """MobileNet-v1 separable pair: depthwise 3x3 then pointwise 1x1, each with its activation."""
    return [
        ConvAct(in_channels, in_channels, 3, stride=stride, dilation=dilation, groups=in_channels, act=act),
        ConvAct(in_channels, out_channels, 1, act=act),
    ]


class ResidualAdd(nn.Module):
    """`a + b` of two named blocks' outputs, then the FakeQuantize an INT8 graph puts on the sum."""

    def __init__(self, inputs: tuple[str, str]) -> None:
        super().__init__()
        #: names (as in `ir_units`) of the blocks whose outputs are added, in graph input order
        self.inputs = inputs
        self.out_quant = FakeQuantize()
        #: OpenVINO's CPU INT8 execution: which input is the convolution the add is fused into (-1: none)
        self.cpu_int8 = False
        self.fused_input = -1
        for name in ("input_steps", "input_offsets", "input_lows", "input_highs"):
            self.register_buffer(name, torch.zeros(0), persistent=False)

    def load_cpu_plan(
        self,
        fused_input: int,
        steps: torch.Tensor,
        offsets: torch.Tensor,
        lows: torch.Tensor,
        highs: torch.Tensor,
    ) -> None:
        """(2,) each: the inputs' quantisation steps, code offsets and ranges (`models.openvino_cpu_int8`)."""
        device = self.input_steps.device
        self.fused_input = fused_input
        self.input_steps, self.input_offsets, self.input_lows, self.input_highs = (
            t.float().to(device) for t in (steps, offsets, lows, highs)
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self.cpu_int8:
            return self.out_quant(a + b)
        if self.fused_input < 0:
            a, b = (
                cpu_int8.exact_values(x, self.input_steps[i], self.input_offsets[i], self.input_lows[i])
                for i, x in enumerate((a, b))
            )
            return self.out_quant(a + b)
        i, other = self.fused_input, 1 - self.fused_input
        # the fused convolution's own FakeQuantize is dropped, but not its crop
        fused = torch.clamp((a, b)[i], self.input_lows[i], self.input_highs[i])
        return self.out_quant(cpu_int8.fused_add(fused, (a, b)[other], self.input_steps[other]))


class Concat(nn.Module):
    """Channel concatenation of named blocks' outputs (no parameters; recorded to check the order).

    Under OpenVINO's CPU INT8 execution its inputs arrive raw and it quantises each on the common grid
    (`input_quants`, loaded by the importer).
    """

    def __init__(self, inputs: tuple[str, ...]) -> None:
        super().__init__()
        self.inputs = inputs
        self.cpu_int8 = False
        self.input_quants = nn.ModuleList()

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.cpu_int8:
            tensors = tuple(quant(t) for quant, t in zip(self.input_quants, tensors, strict=True))
        return torch.cat(tensors, dim=1)


IrUnit = ConvAct | ResidualAdd | Concat


class IrMappable(Protocol):
    """What an importer needs from a network."""

    #: FakeQuantize on the (already normalised) network input
    input_quant: FakeQuantize

    def ir_units(self) -> list[tuple[str, IrUnit]]:
        """Every block, named, in the topological order of the exported graph."""
        ...

    def set_int8_emulation(self, enabled: bool, semantics: Int8Semantics = "openvino-cpu") -> None: ...


def fake_quantizers(model: nn.Module) -> list[FakeQuantize]:
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


def set_int8_semantics(model: nn.Module, enabled: bool, semantics: Int8Semantics) -> None:
    """Switch every loaded FakeQuantize of `model` on or off, under the given semantics; "openvino-cpu"
    needs the plan the importer gives networks whose IR it could plan (ValueError otherwise)."""
    if semantics not in ("fake-quantize", "openvino-cpu"):
        raise ValueError(f"unknown INT8 semantics {semantics!r}: fake-quantize or openvino-cpu")
    quantizers = [q for q in fake_quantizers(model) if q.loaded]
    cpu = enabled and semantics == "openvino-cpu"
    convs = [m for m in model.modules() if isinstance(m, ConvAct)]
    if cpu and not (all(q.has_plan for q in quantizers) and all(c.weight_codes.numel() for c in convs)):
        raise ValueError("this network has no OpenVINO CPU INT8 plan: load an INT8 OpenVINO IR first")
    for q in quantizers:
        q.enabled, q.semantics = enabled, semantics
    for block in model.modules():
        if isinstance(block, (ConvAct, ResidualAdd, Concat)):
            block.cpu_int8 = cpu
