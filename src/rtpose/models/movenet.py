"""MoveNet SinglePose Lightning in plain PyTorch: MobileNetV2 + FPN + CenterNet heads at stride 4.

The network returns the RAW heads; decoding (centre choice, regression, heatmap re-weighting,
offsets) lives in `rtpose.postprocess.movenet`. Input is NCHW float RGB in 0..255 (spec mean 0, std 1);
the graph's own normalisation (x / 127.5 - 1) is the first thing the network does, as in the TFLite file.

Padding follows TensorFlow's SAME rule (for stride 2 on an even size: nothing before, one row/column
after), so weights from the TFLite graph give the same results.

Two modes:
- float: dequantised weights, float activations.
- INT8 emulation (the default after loading the official INT8 TFLite file): convolutions run on the
  integer values and every int8 tensor of the graph is requantised with its scale and zero point, with
  the rounding of TFLite's default CPU runtime (XNNPACK). This network is fragile under quantisation: a
  one-step difference in an early layer (TFLite's own reference kernels round differently) moves many
  keypoints by pixels, so only a faithful emulation reproduces the file's outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rtpose.models.spec import ModelSpec, WeightSource, register

NUM_KEYPOINTS = 17
OUTPUT_NAMES = ("heatmaps", "centers", "regression", "offsets")


class TFLiteQuant(nn.Module):
    """Fake-quantisation of one int8 TFLite tensor; the identity until loaded and enabled.

    Rounds x / scale half to even, then adds the zero point (XNNPACK's float requantisation of ADD and
    LOGISTIC outputs). Buffers are non-persistent: the float state_dict is the same with or without them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.register_buffer("scale", torch.zeros(()), persistent=False)
        self.register_buffer("zero_point", torch.zeros(()), persistent=False)

    @property
    def loaded(self) -> bool:
        return bool(self.scale.item() > 0)

    def load(self, scale: float, zero_point: int) -> None:
        self.scale.fill_(float(scale))
        self.zero_point.fill_(float(zero_point))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, -128.0, 127.0)
        return (q - self.zero_point) * self.scale


class Upsample2x(TFLiteQuant):
    """2x bilinear upsampling with half-pixel centres (TF's, and torch's align_corners=False).

    In INT8 emulation it works as XNNPACK's integer resize: the raw int8 values are interpolated (the
    weights 1/4, 3/4 are exact) and rounded half up; the output keeps the input's quantisation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        raw = torch.round(x / self.scale) + self.zero_point
        up = F.interpolate(raw, scale_factor=2.0, mode="bilinear", align_corners=False)
        return (torch.clamp(torch.floor(up + 0.5), -128.0, 127.0) - self.zero_point) * self.scale


class InputQuant(TFLiteQuant):
    """Quantisation of the normalised input onto the graph's first int8 tensor.

    The graph computes x / 127.5 - 1 in integer arithmetic onto a grid of step 1/127.5, so every value
    lies half-way between two levels; TFLite's default CPU runtime (XNNPACK) rounds all of them up,
    giving (x - 127) / 127.5. Float division would break those ties at random, hence this exact form
    (takes 0..255, returns about -1..1).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x / 127.5 - 1.0
        q = torch.clamp(torch.floor(x - 127.0) + self.zero_point, -128.0, 127.0)
        return (q - self.zero_point) * self.scale


class ConvAct(nn.Module):
    """Conv (TF SAME padding) + bias + optional ReLU/ReLU6.

    In INT8 emulation the convolution runs on the integer values (input / input scale, int8 weights;
    the sums are exact in float32 for these sizes), the int32 bias is added in two float32 parts (its
    low part inside the conv, exactly; its float32-rounded high part last, so that the one rounding is
    that of XNNPACK's int32 -> float32 conversion), and the accumulator is requantised as XNNPACK does: times
    a float32 per-channel scale (input scale x weight scale / output scale), rounded half to even, plus
    the output zero point, clamped to the activation's range.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, depthwise: bool = False,
                 act: str = "none") -> None:  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, 0, groups=cin if depthwise else 1, bias=True)
        self.kernel, self.stride, self.depthwise, self.act = kernel, stride, depthwise, act
        self.out_quant = TFLiteQuant()
        for name in ("int_weight", "int_bias", "int_bias_high", "requant_scale", "in_scale"):
            self.register_buffer(name, torch.zeros(0), persistent=False)

    def load_int8(self, weight: torch.Tensor, bias: torch.Tensor, weight_scale: torch.Tensor,
                  in_scale: float, out_scale: float, out_zero_point: int) -> None:  # fmt: skip
        """Integer weights (torch layout) and bias, per-channel weight scales, tensor quantisation."""
        f32 = torch.float32
        self.int_weight = weight.to(f32)
        bias64 = bias.to(torch.float64)
        self.int_bias_high = bias64.to(f32).view(1, -1, 1, 1)
        self.int_bias = (bias64 - self.int_bias_high.view(-1).double()).to(f32)
        self.in_scale = torch.tensor(in_scale, dtype=f32)
        self.requant_scale = (self.in_scale * weight_scale.to(f32) / torch.tensor(out_scale, dtype=f32)).view(
            1, -1, 1, 1
        )
        self.out_quant.load(out_scale, out_zero_point)

    def _same_pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == 1:
            return x
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            out = -(-size // self.stride)
            total = max((out - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_quant.enabled:
            return self._forward_int8(x)
        x = self.conv(self._same_pad(x))
        if self.act == "relu":
            x = F.relu(x)
        elif self.act == "relu6":
            x = F.relu6(x)
        return x

    def _forward_int8(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self.out_quant.scale, self.out_quant.zero_point
        x_int = torch.round(x / self.in_scale)
        acc = F.conv2d(
            self._same_pad(x_int), self.int_weight, self.int_bias, self.stride, 0, 1, self.conv.groups
        )
        acc = acc + self.int_bias_high
        low = zero_point if self.act in ("relu", "relu6") else torch.full_like(zero_point, -128.0)
        high = torch.full_like(zero_point, 127.0)
        if self.act == "relu6":
            high = torch.clamp(zero_point + torch.round(6.0 / scale), max=127.0)
        q = torch.clamp(torch.round(acc * self.requant_scale) + zero_point, low, high)
        return (q - zero_point) * scale


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 project, residual add."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = ConvAct(cin, hidden, act="relu6") if expand != 1 else None
        self.depthwise = ConvAct(hidden, hidden, 3, stride, depthwise=True, act="relu6")
        self.project = ConvAct(hidden, cout)
        self.residual = stride == 1 and cin == cout
        self.add_quant = TFLiteQuant() if self.residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        if self.add_quant is not None:
            y = self.add_quant(x + y)
        return y


# (expansion, output channels, repeats, first stride) of MobileNetV2 (width 1.0)
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
# indices of the blocks whose outputs feed the FPN (strides 4, 8, 16)
FPN_TAPS = (2, 5, 9)


class FPNMerge(nn.Module):
    """Upsample the coarser map 2x (bilinear, half-pixel centres), add the lateral, separable conv + ReLU."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = Upsample2x()
        self.add_quant = TFLiteQuant()
        self.depthwise = ConvAct(channels, channels, 3, depthwise=True)
        self.pointwise = ConvAct(channels, out_channels, act="relu")

    def forward(self, top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        up = self.upsample(top)
        return self.pointwise(self.depthwise(self.add_quant(up + lateral)))


class Head(nn.Module):
    """CenterNet head: 3x3 depthwise, 1x1 to 96 + ReLU, 1x1 to the outputs (+ sigmoid if the graph has it)."""

    def __init__(self, channels: int, outputs: int, sigmoid: bool) -> None:
        super().__init__()
        self.depthwise = ConvAct(channels, channels, 3, depthwise=True)
        self.hidden = ConvAct(channels, 96, act="relu")
        self.out = ConvAct(96, outputs)
        self.sigmoid_quant = TFLiteQuant() if sigmoid else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.out(self.hidden(self.depthwise(x)))
        if self.sigmoid_quant is not None:
            x = self.sigmoid_quant(torch.sigmoid(x))
        return x


class MoveNet(nn.Module):
    """MoveNet SinglePose: (N, 3, 192, 192) RGB 0..255 -> heatmaps, centres, regression, offsets at 1/4."""

    def __init__(self, num_keypoints: int = NUM_KEYPOINTS) -> None:
        super().__init__()
        self.num_keypoints = num_keypoints
        self.input_quant = InputQuant()
        self.stem = ConvAct(3, 32, 3, 2, act="relu6")
        blocks: list[nn.Module] = []
        cin = 32
        for expand, cout, repeats, stride in MOBILENET_V2_STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.last = ConvAct(320, 1280, act="relu6")
        self.lateral4 = ConvAct(24, 24)
        self.lateral8 = ConvAct(32, 32)
        self.lateral16 = ConvAct(64, 64)
        self.top = ConvAct(1280, 64)
        self.merge16 = FPNMerge(64, 32)
        self.merge8 = FPNMerge(32, 24)
        self.merge4 = FPNMerge(24, 24)
        self.center_head = Head(24, 1, sigmoid=True)
        self.heatmap_head = Head(24, num_keypoints, sigmoid=True)
        self.offset_head = Head(24, 2 * num_keypoints, sigmoid=False)
        self.regression_head = Head(24, 2 * num_keypoints, sigmoid=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.input_quant(x)
        x = self.stem(x)
        laterals = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in FPN_TAPS:
                laterals.append(x)
        lat4, lat8, lat16 = (
            self.lateral4(laterals[0]),
            self.lateral8(laterals[1]),
            self.lateral16(laterals[2]),
        )
        feat = self.top(self.last(x))
        feat = self.merge4(self.merge8(self.merge16(feat, lat16), lat8), lat4)
        return (self.heatmap_head(feat), self.center_head(feat), self.regression_head(feat),
                self.offset_head(feat))  # fmt: skip

    def graph_order(self) -> Iterator[tuple[str, nn.Module]]:
        """Every conv / add / resize / sigmoid, in the order the TFLite graph executes them.

        Yields (kind, module): kind is "conv", "depthwise", "add", "resize" or "sigmoid"; the loader
        walks the graph's operators in the same order and checks every shape.
        """
        yield "conv", self.stem
        for i, block in enumerate(self.blocks):
            assert isinstance(block, InvertedResidual)
            if block.expand is not None:
                yield "conv", block.expand
            yield "depthwise", block.depthwise
            yield "conv", block.project
            if block.add_quant is not None:
                yield "add", block.add_quant
            if i in FPN_TAPS:
                yield "conv", (self.lateral4, self.lateral8, self.lateral16)[FPN_TAPS.index(i)]
        yield "conv", self.last
        yield "conv", self.top
        for merge in (self.merge16, self.merge8, self.merge4):
            yield "resize", merge.upsample
            yield "add", merge.add_quant
            yield "depthwise", merge.depthwise
            yield "conv", merge.pointwise
        for head in (self.center_head, self.heatmap_head, self.offset_head, self.regression_head):
            yield "depthwise", head.depthwise
            yield "conv", head.hidden
            yield "conv", head.out
            if head.sigmoid_quant is not None:
                yield "sigmoid", head.sigmoid_quant

    def quantizers(self) -> list[TFLiteQuant]:
        return [m for m in self.modules() if isinstance(m, TFLiteQuant)]

    @property
    def int8_emulation(self) -> bool:
        return any(q.enabled for q in self.quantizers())

    def int8_ready(self) -> bool:
        convs = [m for m in self.modules() if isinstance(m, ConvAct)]
        return all(q.loaded for q in self.quantizers()) and all(c.int_weight.numel() > 0 for c in convs)

    def set_int8_emulation(self, enabled: bool) -> MoveNet:
        """Switch INT8 emulation on or off; it needs the quantisation parameters of an INT8 TFLite file."""
        quantizers = self.quantizers()
        if enabled and not self.int8_ready():
            from rtpose.errors import WeightsError

            raise WeightsError("INT8 emulation needs the quantisation parameters of an INT8 TFLite file")
        for q in quantizers:
            q.enabled = enabled
        return self


def build_movenet_lightning() -> MoveNet:
    return MoveNet()


def load_tflite_weights(model: nn.Module, path: Path) -> MoveNet:
    """Loader for format "tflite": official weights (dequantised) and INT8 emulation switched on."""
    from rtpose.models.loading.tflite import load_movenet_tflite

    if not isinstance(model, MoveNet):
        from rtpose.errors import WeightsError

        raise WeightsError(f"TFLite weights load into MoveNet only, not {type(model).__name__}")
    load_movenet_tflite(model, path, int8_emulation=True)
    return model


# Quantisation of the decoding part of the official INT8 graph, by the graph's tensor names: the
# decoder emulates it to reproduce the file's outputs (tests check these numbers against the file).
LIGHTNING_INT8_DECODE_QUANT: dict[str, tuple[float, int]] = {
    "center_weight": (0.0021786494, -128),  # truediv_2;add_1: 1 / (distance to the middle + 1.8)
    "weighted_center": (0.0020440402, -128),  # truediv_2;add_11
    "center_y": (0.101960786, -128),  # tfl.quantize1
    "center_x": (0.105882354, -128),  # tfl.quantize2
    "keypoint_y": (0.21009913, -128),  # add_2
    "keypoint_x": (0.17527825, -128),  # add_3
    "grid": (0.18431373, -128),  # strided_slice_3 and strided_slice_4
    "delta_y": (0.38818967, 10),  # sub_5
    "delta_x": (0.35212147, -1),  # sub_6
    "delta_y_sq": (11.25612, -128),  # pow_2;pow/y
    "delta_x_sq": (7.9747496, -128),  # pow_3;pow/y
    "dist_sq": (14.999096, -128),  # add_4
    "dist": (0.24252832, -128),  # tfl.quantize3
    "bias": (0.0070588235, -128),  # add_1/y (the constant 1.8)
    "denominator": (0.24958715, -128),  # add_5
    "weighted_heatmap": (0.0019921549, -128),  # tfl.quantize4
    "peak": (0.18431373, -128),  # tfl.quantize5 and tfl.quantize6
    "refined": (0.19664897, -128),  # add_6 and add_7
    "output": (0.004096854, -128),  # StatefulPartitionedCall:01 (coordinates and scores)
    "inv_size": (0.00008169935, -128),  # Reshape_13 (1 / 48)
}

register(
    ModelSpec(
        name="movenet-lightning",
        task="pose-topdown",
        family="movenet",
        arch="movenet-singlepose-lightning",
        input_size=(192, 192),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        channel_order="RGB",
        build=build_movenet_lightning,
        weights=(
            WeightSource(
                filename="lite-model_movenet_singlepose_lightning_tflite_int8_4.tflite",
                format="tflite",
                url=None,
                offline_names=(
                    "movenet_singlepose_lightning_int8/lite-model_movenet_singlepose_lightning_tflite_int8_4.tflite",
                ),
            ),
        ),
        extra={
            "codec": "movenet",
            "bbox_padding": 1.25,
            "num_keypoints": NUM_KEYPOINTS,
            "output_names": OUTPUT_NAMES,
            # heatmap cells per side; the centre prior is 1 / (distance to (24, 24) + 1.8)
            "heatmap_size": 48,
            "distance_bias": 1.8,
            "decode_quant": LIGHTNING_INT8_DECODE_QUANT,
        },
        description="Google MoveNet SinglePose Lightning v4 (INT8 TFLite, emulated in PyTorch); "
        "single-person heatmap model on 192x192 crops",
    )
)


def _register_loader() -> None:
    from rtpose.models.factory import register_loader

    register_loader("tflite", load_tflite_weights, family="movenet")


_register_loader()
