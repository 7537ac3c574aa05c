"""OpenVINO's FakeQuantize operation, in PyTorch, so that an INT8 model can be emulated exactly.

An INT8 OpenVINO IR marks every quantised tensor with a FakeQuantize node (opset1). Its definition:

    x <= min(input_low, input_high)  ->  output_low
    x >  max(input_low, input_high)  ->  output_high
    otherwise                        ->  round((x - input_low) / (input_high - input_low) * (levels - 1))
                                         / (levels - 1) * (output_high - output_low) + output_low

`round` rounds half to even (the reference uses `std::nearbyint`), as `torch.round` does. The four
range tensors broadcast against `x` (scalars or per-channel `(1, C, 1, 1)`). The same formula in NumPy,
used to fold weight FakeQuantize subgraphs, lives in `rtpose.models.loading.openvino_ir_graph`.

OpenVINO's CPU plugin executes these nodes differently (`rtpose.models.openvino_cpu_int8`); a node given
that plan (`load_plan`) follows it when its semantics is "openvino-cpu".
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from rtpose.models.openvino_cpu_int8 import QuantPlan, quantise

#: "fake-quantize": the IR's FakeQuantize formula; "openvino-cpu": what OpenVINO's CPU plugin computes
Int8Semantics = Literal["fake-quantize", "openvino-cpu"]
_PLAN_FIELDS = ("low", "high", "scale", "shift", "offset", "step")


def fake_quantize(
    x: torch.Tensor,
    levels: int,
    input_low: torch.Tensor,
    input_high: torch.Tensor,
    output_low: torch.Tensor,
    output_high: torch.Tensor,
) -> torch.Tensor:
    """OpenVINO FakeQuantize-1 on `x` (any float dtype; the ranges are cast to it)."""
    input_low, input_high = input_low.to(x.dtype), input_high.to(x.dtype)
    output_low, output_high = output_low.to(x.dtype), output_high.to(x.dtype)
    steps = float(levels - 1)
    quantised = torch.round((x - input_low) / (input_high - input_low) * steps)
    inside = quantised / steps * (output_high - output_low) + output_low
    # torch.where keeps a NaN of a zero-width range (input_low == input_high) out of the result: such a
    # range sends every x to one of the two clamping branches.
    below = x <= torch.minimum(input_low, input_high)
    above = x > torch.maximum(input_low, input_high)
    return torch.where(below, output_low, torch.where(above, output_high, inside))


class FakeQuantize(nn.Module):
    """A FakeQuantize node that is the identity until its ranges are loaded and it is enabled.

    The ranges are non-persistent buffers: they move with `.to(device)`, but a float state_dict of the
    network stays the same whether or not an INT8 graph was imported.
    """

    def __init__(self) -> None:
        super().__init__()
        self.levels = 0
        self.enabled = False
        self.semantics: Int8Semantics = "fake-quantize"
        for name in ("input_low", "input_high", "output_low", "output_high"):
            self.register_buffer(name, torch.zeros(0), persistent=False)
        for name in _PLAN_FIELDS:
            self.register_buffer(f"plan_{name}", torch.zeros(0), persistent=False)

    @property
    def loaded(self) -> bool:
        return self.levels > 0

    def load(
        self,
        levels: int,
        input_low: torch.Tensor,
        input_high: torch.Tensor,
        output_low: torch.Tensor,
        output_high: torch.Tensor,
    ) -> None:
        if levels < 2:
            raise ValueError(f"FakeQuantize needs at least 2 levels, got {levels}")
        device = self.input_low.device
        self.levels = int(levels)
        self.input_low = input_low.detach().to(device=device, dtype=torch.float32)
        self.input_high = input_high.detach().to(device=device, dtype=torch.float32)
        self.output_low = output_low.detach().to(device=device, dtype=torch.float32)
        self.output_high = output_high.detach().to(device=device, dtype=torch.float32)

    @property
    def has_plan(self) -> bool:
        return self.plan_step.numel() > 0

    def load_plan(self, plan: QuantPlan) -> None:
        """How OpenVINO's CPU plugin quantises this node (used when `semantics` is "openvino-cpu")."""
        device = self.input_low.device
        for name in _PLAN_FIELDS:
            value = torch.from_numpy(getattr(plan, name).astype("float32").copy())
            setattr(self, f"plan_{name}", value.to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.enabled and self.levels):
            return x
        if self.semantics == "openvino-cpu" and self.has_plan:
            return quantise(x, *(getattr(self, f"plan_{name}").to(x.dtype) for name in _PLAN_FIELDS))
        return fake_quantize(
            x, self.levels, self.input_low, self.input_high, self.output_low, self.output_high
        )

    def extra_repr(self) -> str:
        if not self.loaded:
            return "not loaded"
        per = "per-channel" if self.input_low.numel() > 1 else "per-tensor"
        return f"levels={self.levels}, {per}, enabled={self.enabled}, semantics={self.semantics}"
