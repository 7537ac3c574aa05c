"""Lightweight OpenPose (bottom-up: keypoint heatmaps + part affinity fields), as Intel ships it.

The network of Open Model Zoo's `human-pose-estimation-0001` (Osokin, "Real-time 2D Multi-Person Pose
Estimation on CPU: Lightweight OpenPose", 2018; Intel's Caffe training, `icv-hpe-0001`), layer for
layer as its IR has it, batch norm folded into the convolutions:

- backbone: MobileNet-v1 to conv5_5 at stride 8 (conv4_2 keeps stride 1; conv5_1's depthwise conv is
  dilated by 2), ReLU;
- CPM: 1x1 align (ELU), a trunk of 1x1 + three depthwise-separable pairs (ELU), a residual add, 3x3 conv;
- initial stage: three 3x3 convs, then 1x1 heads for 38 PAF channels and 19 heatmaps;
- one refinement stage on concat(PAFs, heatmaps, features): five blocks (1x1, 3x3, 3x3 dilated by 2,
  residual add), then the two heads.

Fully convolutional: any input whose height and width are multiples of 8 gives (N, 19, H/8, W/8)
heatmaps (18 OpenPose keypoints + background) and (N, 38, H/8, W/8) PAFs (x, y per limb).

The IR normalises its input inside the graph (x * 1/255 - 128/255, constants stored as f16). That
step lives in the spec here (mean 128, std 255, BGR) so that preprocessing does it, as for every
other model; the network takes the normalised batch. Weights: `rtpose.models.loading.openvino_ir`.
The INT8 IR can be run as plain float or as OpenVINO's INT8 CPU runtime runs it (`set_int8_emulation(...)`,
`rtpose.models.openvino_cpu_int8`); the loader's default is float, zoo loading follows
`extra["int8_emulation"]`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rtpose.errors import EngineError
from rtpose.keypoint_layouts import COCO_FROM_OPENPOSE as COCO17_FROM_OPENPOSE18
from rtpose.keypoint_layouts import OPENPOSE_KEYPOINT_NAMES as OPENPOSE18_KEYPOINT_NAMES
from rtpose.keypoint_layouts import OPENPOSE_LIMBS as OPENPOSE18_LIMBS
from rtpose.keypoint_layouts import OPENPOSE_PAF_CHANNELS as OPENPOSE18_PAF_CHANNELS
from rtpose.models.factory import register_loader
from rtpose.models.fake_quantize import FakeQuantize, Int8Semantics
from rtpose.models.ir_blocks import (
    Concat,
    ConvAct,
    IrUnit,
    ResidualAdd,
    conv_dw,
    fake_quantizers,
    set_int8_semantics,
)
from rtpose.models.spec import ModelSpec, WeightSource, register

STRIDE = 8
NUM_HEATMAPS = 19  # 18 keypoints + background
NUM_PAFS = 38  # 19 limbs, (x, y) each

#: (in, out, stride, dilation of the depthwise conv) of the backbone's separable pairs conv2_1 .. conv5_5
_BACKBONE_PAIRS: tuple[tuple[int, int, int, int], ...] = (
    (32, 64, 1, 1), (64, 128, 2, 1), (128, 128, 1, 1), (128, 256, 2, 1), (256, 256, 1, 1),
    (256, 512, 1, 1), (512, 512, 1, 2), (512, 512, 1, 1), (512, 512, 1, 1), (512, 512, 1, 1),
    (512, 512, 1, 1),
)  # fmt: skip


class Cpm(nn.Module):
    """Convolutional pose machine adapter: 512 backbone channels -> 128 features."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.align = ConvAct(in_channels, channels, 1, act="elu")
        trunk = [ConvAct(channels, channels, 1, act="elu")]
        for _ in range(3):
            trunk += conv_dw(channels, channels, act="elu")
        self.trunk = nn.Sequential(*trunk)
        self.residual = ResidualAdd(("cpm.align", f"cpm.trunk.{len(trunk) - 1}"))
        self.conv = ConvAct(channels, channels, 3, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        aligned = self.align(x)
        return self.conv(self.residual(aligned, self.trunk(aligned)))


def _head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ConvAct(in_channels, hidden, 1), ConvAct(hidden, out_channels, 1, act="none"))


class InitialStage(nn.Module):
    def __init__(self, channels: int, num_heatmaps: int, num_pafs: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*(ConvAct(channels, channels, 3) for _ in range(3)))
        self.pafs = _head(channels, 512, num_pafs)
        self.heatmaps = _head(channels, 512, num_heatmaps)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trunk = self.trunk(features)
        return self.heatmaps(trunk), self.pafs(trunk)


class RefinementBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, name: str) -> None:
        super().__init__()
        self.initial = ConvAct(in_channels, channels, 1)
        self.trunk = nn.Sequential(ConvAct(channels, channels, 3), ConvAct(channels, channels, 3, dilation=2))
        self.residual = ResidualAdd((f"{name}.initial", f"{name}.trunk.1"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        initial = self.initial(x)
        return self.residual(initial, self.trunk(initial))


class RefinementStage(nn.Module):
    def __init__(self, in_channels: int, channels: int, num_heatmaps: int, num_pafs: int, name: str) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                RefinementBlock(in_channels if i == 0 else channels, channels, f"{name}.blocks.{i}")
                for i in range(5)
            )
        )
        self.pafs = _head(channels, channels, num_pafs)
        self.heatmaps = _head(channels, channels, num_heatmaps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trunk = self.blocks(x)
        return self.heatmaps(trunk), self.pafs(trunk)


class OpenPoseLite(nn.Module):
    """(N, 3, H, W) normalised BGR -> (heatmaps (N, 19, H/8, W/8), pafs (N, 38, H/8, W/8))."""

    def __init__(self, num_refinement_stages: int = 1, channels: int = 128) -> None:
        super().__init__()
        if num_refinement_stages < 1:
            raise ValueError("lightweight OpenPose needs at least one refinement stage")
        self.input_quant = FakeQuantize()
        backbone = [ConvAct(3, 32, 3, stride=2)]
        for in_ch, out_ch, stride, dilation in _BACKBONE_PAIRS:
            backbone += conv_dw(in_ch, out_ch, stride=stride, dilation=dilation)
        self.backbone = nn.Sequential(*backbone)
        self.cpm = Cpm(512, channels)
        self.initial_stage = InitialStage(channels, NUM_HEATMAPS, NUM_PAFS)
        stage_in = channels + NUM_HEATMAPS + NUM_PAFS
        self.concats = nn.ModuleList()
        self.refinement_stages = nn.ModuleList()
        previous = "initial_stage"
        for i in range(num_refinement_stages):
            # Concatenation order of the IR: PAFs, heatmaps, features.
            self.concats.append(Concat((f"{previous}.pafs.1", f"{previous}.heatmaps.1", "cpm.conv")))
            previous = f"refinement_stages.{i}"
            self.refinement_stages.append(
                RefinementStage(stage_in, channels, NUM_HEATMAPS, NUM_PAFS, previous)
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % STRIDE or x.shape[3] % STRIDE or x.shape[2] == 0:
            raise EngineError(
                f"openpose-lite takes a (N, 3, H, W) batch with H and W multiples of {STRIDE}, "
                f"got {tuple(x.shape)}"
            )
        features = self.cpm(self.backbone(self.input_quant(x)))
        heatmaps, pafs = self.initial_stage(features)
        for concat, stage in zip(self.concats, self.refinement_stages, strict=True):
            heatmaps, pafs = stage(concat(pafs, heatmaps, features))
        return heatmaps, pafs

    def ir_units(self) -> list[tuple[str, IrUnit]]:
        """Every block in the order of the IR's topological sort (branches: PAFs before heatmaps)."""
        order: list[nn.Module] = [
            *self.backbone,
            self.cpm.align,
            *self.cpm.trunk,
            self.cpm.residual,
            self.cpm.conv,
        ]
        order += [*self.initial_stage.trunk, *self.initial_stage.pafs, *self.initial_stage.heatmaps]
        for concat, stage in zip(self.concats, self.refinement_stages, strict=True):
            order.append(concat)
            for block in stage.blocks:
                order += [block.initial, *block.trunk, block.residual]
            order += [*stage.pafs, *stage.heatmaps]
        names = {module: name for name, module in self.named_modules()}
        return [(names[module], module) for module in order]  # type: ignore[misc]

    def ir_outputs(self) -> tuple[str, str]:
        """Names of the blocks whose outputs the network returns (heatmaps, PAFs)."""
        last = f"refinement_stages.{len(self.refinement_stages) - 1}"
        return f"{last}.heatmaps.1", f"{last}.pafs.1"

    @property
    def int8_emulation(self) -> bool:
        return any(q.enabled for q in fake_quantizers(self))

    @property
    def int8_semantics(self) -> Int8Semantics:
        return next((q.semantics for q in fake_quantizers(self) if q.loaded), "openvino-cpu")

    def set_int8_emulation(self, enabled: bool, semantics: Int8Semantics = "openvino-cpu") -> None:
        """Emulate the INT8 IR (True) or run plain float (False, the default).

        semantics: "openvino-cpu" reproduces OpenVINO's INT8 CPU execution of the IR
        (`rtpose.models.openvino_cpu_int8`); "fake-quantize" runs the IR's FakeQuantize formula as written.
        """
        from rtpose.errors import WeightsError

        if enabled and not any(q.loaded for q in fake_quantizers(self)):
            raise WeightsError(
                "openpose-lite has no INT8 ranges: load an INT8 OpenVINO IR before enabling emulation"
            )
        try:
            set_int8_semantics(self, enabled, semantics)
        except ValueError as exc:
            raise WeightsError(f"openpose-lite: {exc}") from None


def build_openpose_lite() -> OpenPoseLite:
    return OpenPoseLite(num_refinement_stages=1)


OPENPOSE_LITE = ModelSpec(
    name="openpose-lite",
    task="pose-bottomup",
    family="openpose-lite",
    arch="lightweight-openpose-mobilenetv1-1refine",
    input_size=(256, 456),
    # The IR computes x * f16(1/255) + f16(-128/255) = (x - 128) / 255.0039; the 1.5e-5 relative
    # difference to std 255 moves no input across an INT8 rounding boundary (checked in the tests).
    mean=(128.0, 128.0, 128.0),
    std=(255.0, 255.0, 255.0),
    channel_order="BGR",
    build=build_openpose_lite,
    weights=(
        # The .bin must lie beside the .xml (same stem): the loader reads both.
        WeightSource(
            filename="human-pose-estimation-0001.xml",
            format="openvino-ir",
            offline_names=("human-pose-estimation-0001_FP16-INT8/human-pose-estimation-0001.xml",),
        ),
    ),
    params_m=4.10,
    extra={
        "stride": STRIDE,
        "num_keypoints": 18,
        "keypoint_order": "openpose18",
        "keypoint_names": OPENPOSE18_KEYPOINT_NAMES,
        "background_channel": 18,
        "output_names": ("heatmaps", "pafs"),
        # decoders upsample heatmaps and PAFs by this factor (bicubic) before peak finding
        "upsample_ratio": 4,
        "limbs": OPENPOSE18_LIMBS,
        "paf_channels": OPENPOSE18_PAF_CHANNELS,
        "coco17_from_openpose18": COCO17_FROM_OPENPOSE18,
        # resize to the input height keeping the ratio, pad right/bottom with this raw BGR value
        # (the demos pad with the mean, i.e. 0 after normalisation)
        "resize": "keep-ratio-height",
        "pad_value": 128,
        # zoo loading uses plain float weights: on our 60 COCO val images it gives the same AP as OpenVINO's
        # float graph (dAP 0.00; 33.8 against OpenVINO int8's 33.6) at a fraction of the emulation's CPU
        # time. set_int8_emulation(True) reproduces OpenVINO's INT8 CPU runtime (99.3% of keypoints within
        # 1 px, AP -0.09; python -m rtpose.benchmarks.accuracy, docs/benchmarks.md).
        "int8_emulation": False,
    },
    description="Lightweight OpenPose (Open Model Zoo human-pose-estimation-0001, MobileNet-v1, 1 refinement "
    "stage), bottom-up heatmaps + PAFs at stride 8, weights from the INT8 OpenVINO IR",
)

register(OPENPOSE_LITE)


def _load_openvino_ir(model: OpenPoseLite, path: Path) -> OpenPoseLite:
    from rtpose.models.loading.openvino_ir import load_openvino_ir

    load_openvino_ir(model, path, emulate_int8=bool(OPENPOSE_LITE.extra["int8_emulation"]))
    return model


register_loader("openvino-ir", _load_openvino_ir, family=OPENPOSE_LITE.family)
