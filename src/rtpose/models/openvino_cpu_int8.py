"""What OpenVINO's CPU plugin computes for an INT8 IR, in PyTorch, bit for bit.

An INT8 IR states its arithmetic as FakeQuantize nodes (`rtpose.models.fake_quantize`). OpenVINO's CPU
plugin does not execute that formula: its low-precision transformations turn the graph into u8/i8
convolutions with fused post-ops, and the numbers change. The rules below were found by probing
OpenVINO 2026.4 (AVX-512 VNNI) on human-pose-estimation-0001: single layers, prefixes of the IR and a
float32 clone of the whole IR fed with our tensors at chosen cuts, the plugin's codes read back through
an identity kernel in the next convolution. With them our network gives the runtime's heatmaps and PAFs
bit for bit on most images, and 99.3% of decoded keypoints within 1 px on all 60 val images (the formula:
77%). What a rule does not cover shows up as exact ties (.5) rounded the other way.

1. **Integer zero points.** An activation quantised to `levels` over [low, high] is stored as the code
   q = round(clip(x) * scale + shift) and read back as (q - round(zero point)) * step, not as
   q * step + low. The input's range [-0.506, 0.502] has its zero point at 127.994: every pixel moves by
   0.006 steps.
2. **Exact integer convolutions.** The accumulator of u8 codes times i8 weight codes is exact (float64
   here); the dequantisation is a float32 multiply by float32(step_in * step_weight), then the bias add.
3. **Residual adds.** Of two unsigned tensors (zero points 0), the add is fused into the convolution
   that computes one operand, whose own FakeQuantize is dropped but for its crop: the sum is
   fma(code_other, step_other, clip(conv output)), then quantised. Of signed tensors, both operands are
   quantised and added as the FakeQuantize formula has them, with the exact zero point
   ((code - offset) * step + low, in float32).
4. **Concats of differently quantised tensors share one step**, (max high - min low) / (levels - 1);
   each input keeps its own range but is quantised to round((high - low) / step) + 1 levels on that
   common grid, and every other reader of that input reads the same codes.
5. **Requantisation constants.** Fused into the convolution that computes the tensor, an unsigned
   per-tensor quantisation multiplies by float32(1 / step), step being float32 already, the others
   (signed, per-channel) by (levels - 1) / (high - low) rounded once; the shift is -low times that, in
   float64. A quantisation that runs as a node of its own (the output of an unfused add; a tensor that
   a fused add and a convolution both read) multiplies by float32((levels - 1) / (high - low)) and
   shifts by float32(-low * scale). The variants differ in the last bit, which decides exact ties, and
   ties are common on these grids.
6. **ELU's exp is oneDNN's**: range reduction by ln 2 and a degree-5 polynomial (`onednn_exp`), not a
   correctly rounded exp.

The tensors here carry dequantised values (code * step, float32); a consumer gets the exact integer
codes back by dividing by the step it knows and rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class QuantPlan:
    """How the plugin quantises one tensor: code = round(clip(x, low, high) * scale + shift) + offset,
    value = code * step. Arrays broadcast like the FakeQuantize ranges (scalars or per channel)."""

    low: np.ndarray
    high: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    offset: np.ndarray
    step: np.ndarray


def _f32(value: np.ndarray | float) -> np.ndarray:
    return np.asarray(value, np.float32)


def quant_plan(
    levels: int,
    low: np.ndarray,
    high: np.ndarray,
    out_low: np.ndarray,
    out_high: np.ndarray,
    *,
    fused_into_convolution: bool = True,
) -> QuantPlan:
    """Rules 1 and 5: an activation FakeQuantize as the plugin executes it (integer zero point).

    fused_into_convolution: the quantisation is a post-op of the convolution that computes x; False for
    one that runs as a node of its own (rule 5).
    """
    low, high, out_low, out_high = (_f32(a) for a in (low, high, out_low, out_high))
    step = _f32((out_high - out_low) / np.float32(levels - 1))
    zero_point = np.round(-out_low.astype(np.float64) / step)
    if not fused_into_convolution:
        scale = _f32(np.float32(levels - 1) / (high - low))
        return QuantPlan(low, high, scale, _f32(-low * scale), _f32(-zero_point), step)
    exact_scale = (levels - 1) / (high.astype(np.float64) - low)
    unsigned_per_tensor = step.size == 1 and not np.any(zero_point)
    scale = _f32(np.float32(1) / step) if unsigned_per_tensor else _f32(exact_scale)
    return QuantPlan(low, high, scale, _f32(-low.astype(np.float64) * exact_scale), _f32(-zero_point), step)


def concat_plans(ranges: list[tuple[int, np.ndarray, np.ndarray]]) -> list[QuantPlan]:
    """Rule 4: the plans of a concat's inputs, given each input's (levels, low, high)."""
    levels = {lv for lv, _, _ in ranges}
    if len(levels) != 1:
        raise ValueError(f"a concat of inputs quantised to different level counts {sorted(levels)}")
    steps = np.float32(levels.pop() - 1)
    if any(np.asarray(lo).size != 1 or np.asarray(hi).size != 1 for _, lo, hi in ranges):
        raise ValueError("a concat of per-channel quantised inputs is not supported")
    common_low = min(float(lo) for _, lo, _ in ranges)
    common_high = max(float(hi) for _, _, hi in ranges)
    step = _f32((np.float32(common_high) - np.float32(common_low)) / steps)
    zero_point = np.round(-np.float64(common_low) / step)
    plans = []
    for _, low, high in ranges:
        low, high = _f32(low), _f32(high)
        own_steps = np.float32(np.round((high - low) / step))
        scale = _f32(own_steps / (high - low))
        offset = np.round((low.astype(np.float64) - common_low) / step) - zero_point
        plans.append(QuantPlan(low, high, scale, _f32(-low * scale), _f32(offset), step))
    return plans


def _f32_bits(bits: int) -> float:
    return float(np.array([bits], np.uint32).view(np.float32)[0])


#: oneDNN's exp constants (jit_uni_eltwise_injector: log2(e), ln 2, the clamp bounds, p1..p5)
_LOG2E, _LN2 = _f32_bits(0x3FB8AA3B), _f32_bits(0x3F317218)
_LN_FLT_MAX, _LN_FLT_MIN = _f32_bits(0x42B17218), _f32_bits(0xC2AEAC50)
_EXP_POLY = tuple(_f32_bits(b) for b in (0x3F7FFFFB, 0x3EFFFEE3, 0x3E2AAD40, 0x3D2B9D0D, 0x3C07CFCE))


def _fma(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor | float) -> torch.Tensor:
    """float32 a * b + c rounded once (float64 holds the product of two float32 exactly)."""
    return (a.double() * b + c).float()


def quantise(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor,
             shift: torch.Tensor, offset: torch.Tensor, step: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """A QuantPlan applied to float32 `x` (its arrays as tensors on x's device): code * step."""
    code = torch.round(torch.clamp(x, low, high) * scale + shift) + offset
    return code * step


def codes(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The integer codes behind dequantised values code * step (exact: |code| <= 510)."""
    return torch.round(x / step)


def convolve(
    conv: nn.Conv2d, x: torch.Tensor, in_step: torch.Tensor, weight_codes: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Rule 2: `conv` on dequantised input codes: exact integer accumulation (float64), then the
    float32 multiply by `scale` (float32(step_in * step_weight) per channel) and the float32 bias add,
    each rounded (a fused multiply-add gives other codes)."""
    acc = F.conv2d(
        codes(x, in_step).double(), weight_codes.double(), None,
        conv.stride, conv.padding, conv.dilation, conv.groups,
    ).float()  # fmt: skip
    y = acc * scale.view(1, -1, 1, 1)
    return y + conv.bias.view(1, -1, 1, 1) if conv.bias is not None else y


def onednn_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) in float32 as oneDNN's vectorised kernels compute it (the plugin's ELU post-op)."""
    underflow = x < _LN_FLT_MIN
    x = x.clamp(_LN_FLT_MIN, _LN_FLT_MAX)
    n = torch.floor(x * _LOG2E + 0.5)
    r = _fma(n, -_LN2, x)
    poly = torch.full_like(x, _EXP_POLY[4])
    for coefficient in (*_EXP_POLY[3::-1], 1.0):
        poly = _fma(poly, r, coefficient)
    scale = torch.ldexp(torch.ones_like(x), n.to(torch.int32))
    return torch.where(underflow, torch.zeros_like(x), poly * scale)


def elu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Rule 6: ELU with oneDNN's exp, alpha * (exp(x) - 1) for x <= 0."""
    negative = onednn_exp(x) - 1.0
    return torch.where(x > 0, x, negative if alpha == 1.0 else negative * alpha)


def exact_values(
    x: torch.Tensor, step: torch.Tensor, offset: torch.Tensor, low: torch.Tensor
) -> torch.Tensor:
    """Rule 3, signed adds: the FakeQuantize value q * step + low of dequantised codes."""
    return (codes(x, step) - offset) * step + low


def fused_add(conv_output: torch.Tensor, other: torch.Tensor, other_step: torch.Tensor) -> torch.Tensor:
    """Rule 3: fma(code_other, step_other, conv_output), rounded once."""
    return _fma(codes(other, other_step), other_step, conv_output)
