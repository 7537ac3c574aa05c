"""CSPNeXt P5 backbone (RTMDet / RTMPose), module names as in mmdet's `CSPNeXt`.

Layout: `stem` (three 3x3 ConvModules, stride 2 first) then `stage1`..`stage4`, each a Sequential of a
stride-2 conv, an SPP block (stage4 only) and a CSPLayer. The returned feature maps are those of
`out_indices` (0 = stem, 1..4 = stages), i.e. strides 2, 4, 8, 16, 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rtpose.models.layers import ConvModule, CSPLayer, SPPBottleneck, make_conv

# (in channels, out channels, CSP blocks, residual in blocks, SPP) per stage, before widen/deepen.
P5_STAGES: tuple[tuple[int, int, int, bool, bool], ...] = (
    (64, 128, 3, True, False),
    (128, 256, 6, True, False),
    (256, 512, 6, True, False),
    (512, 1024, 3, False, True),
)


def stage_channels(widen_factor: float) -> list[int]:
    """Output channels of stem and stages 1..4 for a widen factor (as mmdet computes them)."""
    return [int(P5_STAGES[0][0] * widen_factor)] + [int(s[1] * widen_factor) for s in P5_STAGES]


class CSPNeXt(nn.Module):
    def __init__(
        self,
        deepen_factor: float,
        widen_factor: float,
        out_indices: Sequence[int] = (2, 3, 4),
        use_depthwise: bool = False,
        channel_attention: bool = True,
        expand_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        if not out_indices or any(i < 0 or i > len(P5_STAGES) for i in out_indices):
            raise ValueError(f"out_indices must lie in 0..{len(P5_STAGES)}, got {tuple(out_indices)}")
        self.out_indices = tuple(out_indices)
        stem_out = int(P5_STAGES[0][0] * widen_factor)
        stem_mid = int(P5_STAGES[0][0] * widen_factor // 2)
        self.stem = nn.Sequential(
            ConvModule(3, stem_mid, 3, stride=2),
            ConvModule(stem_mid, stem_mid, 3),
            ConvModule(stem_mid, stem_out, 3),
        )
        self.stage_names = ["stem"]
        for index, (in_ch, out_ch, blocks, add_identity, use_spp) in enumerate(P5_STAGES, start=1):
            in_ch, out_ch = int(in_ch * widen_factor), int(out_ch * widen_factor)
            num_blocks = max(round(blocks * deepen_factor), 1)
            layers: list[nn.Module] = [make_conv(use_depthwise, in_ch, out_ch, 3, stride=2)]
            if use_spp:
                layers.append(SPPBottleneck(out_ch, out_ch))
            layers.append(
                CSPLayer(
                    out_ch,
                    out_ch,
                    num_blocks=num_blocks,
                    add_identity=add_identity,
                    use_depthwise=use_depthwise,
                    channel_attention=channel_attention,
                    expand_ratio=expand_ratio,
                )
            )
            self.add_module(f"stage{index}", nn.Sequential(*layers))
            self.stage_names.append(f"stage{index}")
        self.out_channels = [stage_channels(widen_factor)[i] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        last = max(self.out_indices)
        for index, name in enumerate(self.stage_names[: last + 1]):
            x = getattr(self, name)(x)
            if index in self.out_indices:
                outs.append(x)
        return tuple(outs)
