"""Building blocks that an imported inference graph (OpenVINO IR) maps onto one to one.

Inference exports fold batch norm into the convolution, so a block is a convolution with bias, an
activation, and the FakeQuantize that an INT8 graph puts on the block's output. A network built of
these blocks lists them in graph order (`IrMappable.ir_units`), which is all an importer needs: it
walks the foreign graph, and checks and fills the blocks one by one.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import nn

from rtpose.models.fake_quantize import FakeQuantize

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_quant(self.act(self.conv(x)))


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

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.out_quant(a + b)


class Concat(nn.Module):
    """Channel concatenation of named blocks' outputs (no parameters; recorded to check the order)."""

    def __init__(self, inputs: tuple[str, ...]) -> None:
        super().__init__()
        self.inputs = inputs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=1)


IrUnit = ConvAct | ResidualAdd | Concat


class IrMappable(Protocol):
    """What an importer needs from a network."""

    #: FakeQuantize on the (already normalised) network input
    input_quant: FakeQuantize

    def ir_units(self) -> list[tuple[str, IrUnit]]:
        """Every block, named, in the topological order of the exported graph."""
        ...

    def set_int8_emulation(self, enabled: bool) -> None: ...


def fake_quantizers(model: nn.Module) -> list[FakeQuantize]:
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]
