"""RTMDet (nano/tiny/s/m): CSPNeXt backbone, CSPNeXt-PAFPN neck and the separate-BN head of mmdet.

State-dict names are mmdet's (`backbone.`, `neck.`, `bbox_head.`). Unlike mmdet, the network decodes
its own boxes: point priors (x * stride, y * stride) (mmdet's MlvlPointGenerator, offset 0) are built
from the input's shape inside `forward`, so any H, W divisible by 32 works and the ONNX export keeps a
dynamic batch. Output: `scores (N, A, C)` after sigmoid and `boxes (N, A, 4)` x1y1x2y2 in pixels of the
network input, anchors ordered level by level (strides 8, 16, 32), row-major within a level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rtpose.models.cspnext import CSPNeXt
from rtpose.models.layers import ConvModule, CSPLayer, make_conv
from rtpose.models.spec import ModelSpec, WeightSource, register

STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class RTMDetArch:
    deepen_factor: float
    widen_factor: float
    neck_out_channels: int
    num_csp_blocks: int
    use_depthwise: bool
    share_conv: bool
    exp_on_reg: bool
    input_size: int

    @property
    def neck_in_channels(self) -> list[int]:
        return [int(c * self.widen_factor) for c in (256, 512, 1024)]


#: from mmdet's rtmdet_{tiny,s,m}_8xb32-300e_coco.py and mmpose's rtmdet_nano_320-8xb32_coco-person.py
#: (exp_on_reg is False for all four; only l and x set it)
RTMDET_ARCHS: dict[str, RTMDetArch] = {
    "nano": RTMDetArch(0.33, 0.25, 64, 1, True, False, False, 320),
    "tiny": RTMDetArch(0.167, 0.375, 96, 1, False, True, False, 640),
    "s": RTMDetArch(0.33, 0.5, 128, 1, False, True, False, 640),
    "m": RTMDetArch(0.67, 0.75, 192, 2, False, True, False, 640),
}


class CSPNeXtPAFPN(nn.Module):
    """Top-down then bottom-up path aggregation with CSP layers, then a 3x3 conv per output level."""

    def __init__(
        self, in_channels: Sequence[int], out_channels: int, num_csp_blocks: int, use_depthwise: bool
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        levels = len(self.in_channels)

        def csp(cin: int, cout: int) -> CSPLayer:
            return CSPLayer(
                cin,
                cout,
                num_csp_blocks,
                add_identity=False,
                use_depthwise=use_depthwise,
                channel_attention=False,
            )

        self.reduce_layers = nn.ModuleList()
        self.top_down_blocks = nn.ModuleList()
        for idx in range(levels - 1, 0, -1):
            self.reduce_layers.append(ConvModule(self.in_channels[idx], self.in_channels[idx - 1], 1))
            self.top_down_blocks.append(csp(self.in_channels[idx - 1] * 2, self.in_channels[idx - 1]))
        self.downsamples = nn.ModuleList()
        self.bottom_up_blocks = nn.ModuleList()
        for idx in range(levels - 1):
            self.downsamples.append(
                make_conv(use_depthwise, self.in_channels[idx], self.in_channels[idx], 3, 2)
            )
            self.bottom_up_blocks.append(csp(self.in_channels[idx] * 2, self.in_channels[idx + 1]))
        self.out_convs = nn.ModuleList(make_conv(use_depthwise, c, out_channels, 3) for c in self.in_channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        levels = len(self.in_channels)
        inner_outs = [inputs[-1]]
        for step, idx in enumerate(range(levels - 1, 0, -1)):
            high = self.reduce_layers[step](inner_outs[0])
            inner_outs[0] = high
            upsampled = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner_outs.insert(0, self.top_down_blocks[step](torch.cat([upsampled, inputs[idx - 1]], 1)))
        outs = [inner_outs[0]]
        for idx in range(levels - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self.bottom_up_blocks[idx](torch.cat([down, inner_outs[idx + 1]], 1)))
        return tuple(conv(out) for conv, out in zip(self.out_convs, outs, strict=True))


class RTMDetSepBNHead(nn.Module):
    """Per-level cls/reg conv towers (convs optionally shared across levels, BatchNorms never) + 1x1 preds."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int = 2,
        share_conv: bool = True,
        use_depthwise: bool = False,
        exp_on_reg: bool = False,
        strides: Sequence[int] = STRIDES,
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.exp_on_reg = exp_on_reg
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.rtm_cls = nn.ModuleList()
        self.rtm_reg = nn.ModuleList()
        for _ in self.strides:
            channels = [in_channels] + [feat_channels] * stacked_convs
            self.cls_convs.append(
                nn.ModuleList(
                    make_conv(use_depthwise, channels[i], feat_channels, 3) for i in range(stacked_convs)
                )
            )
            self.reg_convs.append(
                nn.ModuleList(
                    make_conv(use_depthwise, channels[i], feat_channels, 3) for i in range(stacked_convs)
                )
            )
            self.rtm_cls.append(nn.Conv2d(feat_channels, num_classes, 1))
            self.rtm_reg.append(nn.Conv2d(feat_channels, 4, 1))
        if share_conv:
            if use_depthwise:
                raise ValueError("share_conv with depthwise-separable convs is not an mmdet configuration")
            # As mmdet: the level-0 conv modules are reused by every level; each level keeps its own BN.
            for level in range(1, len(self.strides)):
                for i in range(stacked_convs):
                    self.cls_convs[level][i].conv = self.cls_convs[0][i].conv
                    self.reg_convs[level][i].conv = self.reg_convs[0][i].conv

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Raw class logits (N, C, h, w) and box distances in pixels (N, 4, h, w) per level."""
        cls_scores, distances = [], []
        for level, (x, stride) in enumerate(zip(feats, self.strides, strict=True)):
            cls_feat = x
            for layer in self.cls_convs[level]:
                cls_feat = layer(cls_feat)
            cls_scores.append(self.rtm_cls[level](cls_feat))
            reg_feat = x
            for layer in self.reg_convs[level]:
                reg_feat = layer(reg_feat)
            reg = self.rtm_reg[level](reg_feat)
            distances.append((reg.exp() if self.exp_on_reg else reg) * stride)
        return cls_scores, distances


def level_priors(height: int, width: int, stride: int, like: torch.Tensor) -> torch.Tensor:
    """(height * width, 2) x, y of the points of one level, row-major, offset 0 (MlvlPointGenerator)."""
    xs = torch.arange(width, device=like.device, dtype=like.dtype) * stride
    ys = torch.arange(height, device=like.device, dtype=like.dtype) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)


class RTMDet(nn.Module):
    """RTMDet-nano/tiny/s/m with `num_classes` classes (1 = the person detectors)."""

    def __init__(self, arch: str, num_classes: int = 1) -> None:
        super().__init__()
        if arch not in RTMDET_ARCHS:
            raise ValueError(f"unknown RTMDet size {arch!r}; choose one of {sorted(RTMDET_ARCHS)}")
        cfg = RTMDET_ARCHS[arch]
        self.arch = arch
        self.num_classes = num_classes
        self.backbone = CSPNeXt(
            cfg.deepen_factor, cfg.widen_factor, (2, 3, 4), use_depthwise=cfg.use_depthwise
        )
        self.neck = CSPNeXtPAFPN(
            cfg.neck_in_channels, cfg.neck_out_channels, cfg.num_csp_blocks, cfg.use_depthwise
        )
        self.bbox_head = RTMDetSepBNHead(
            num_classes,
            cfg.neck_out_channels,
            cfg.neck_out_channels,
            share_conv=cfg.share_conv,
            use_depthwise=cfg.use_depthwise,
            exp_on_reg=cfg.exp_on_reg,
        )

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"RTMDet expects a (N, 3, H, W) batch, got {tuple(x.shape)}")
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(
                f"RTMDet input height and width must be multiples of 32, got {tuple(x.shape[2:])}"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scores (N, A, C) in [0, 1] and boxes (N, A, 4) x1y1x2y2 in input pixels."""
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self._check_input(x)
        cls_scores, distances = self.bbox_head(self.neck(self.backbone(x)))
        batch = x.shape[0]
        scores, boxes = [], []
        for cls_score, dist, stride in zip(cls_scores, distances, self.bbox_head.strides, strict=True):
            height, width = cls_score.shape[-2:]
            priors = level_priors(height, width, stride, dist)  # (h*w, 2)
            scores.append(cls_score.permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes))
            dist = dist.permute(0, 2, 3, 1).reshape(batch, -1, 4)
            boxes.append(torch.cat((priors - dist[..., :2], priors + dist[..., 2:]), dim=-1))
        return torch.cat(scores, 1).sigmoid(), torch.cat(boxes, 1)


# ---------------------------------------------------------------------------------------------- specs
_RTMPOSE_PROJECT = "https://download.openmmlab.com/mmpose/v1/projects/rtmpose/"
DETECTOR_MEAN_BGR = (103.53, 116.28, 123.675)
DETECTOR_STD_BGR = (57.375, 57.12, 58.395)
#: params (M) of the 1-class person detectors (nano: MMPose zoo; others counted from this code)
RTMDET_PERSON_PARAMS_M = {"nano": 0.99, "tiny": 4.87, "s": 8.86, "m": 24.66}


def _detector_extra() -> dict:
    # score_thr / iou_thr: what MMPose's top-down demo applies to RTMDet person boxes (--bbox-thr 0.3,
    # --nms-thr 0.3, after the config's own NMS at IoU 0.65). mmdeploy's exported graph uses score 0.05,
    # IoU 0.6, pre_top_k 5000, keep_top_k 100 (read them with `mmdeploy_nms_settings`).
    return {
        "pad_value": 114,
        "score_thr": 0.3,
        "iou_thr": 0.3,
        "max_det": 100,
        "pre_top_k": 1000,
        "config_iou_thr": 0.65,
    }


def _detector_spec(arch: str, weights: tuple[WeightSource, ...]) -> ModelSpec:
    size = RTMDET_ARCHS[arch].input_size
    return ModelSpec(
        name=f"rtmdet-{arch}",
        task="detector",
        family="rtmdet",
        arch=arch,
        input_size=(size, size),
        mean=DETECTOR_MEAN_BGR,
        std=DETECTOR_STD_BGR,
        channel_order="BGR",
        build=lambda: RTMDet(arch, num_classes=1),
        weights=weights,
        params_m=RTMDET_PERSON_PARAMS_M[arch],
        extra=_detector_extra(),
        description=f"RTMDet-{arch} person detector, {size}x{size} letterboxed input",
    )


_NANO_PTH = "rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.pth"
_M_PTH = "rtmdet_m_8xb32-100e_coco-obj365-person-235e8209.pth"

register(
    _detector_spec(
        "nano",
        (
            WeightSource(_NANO_PTH, "pth", _RTMPOSE_PROJECT + _NANO_PTH, "05d8511e", (_NANO_PTH,)),
            WeightSource(
                "end2end.onnx", "onnx-mmdeploy", None, None, ("rtmdet_nano_person_mmdeploy/end2end.onnx",)
            ),
        ),
    ),
    _detector_spec("tiny", ()),
    _detector_spec("s", ()),
    _detector_spec("m", (WeightSource(_M_PTH, "pth", _RTMPOSE_PROJECT + _M_PTH, "235e8209", (_M_PTH,)),)),
)
