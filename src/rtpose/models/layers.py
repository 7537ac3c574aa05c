"""Building blocks shared by CSPNeXt, the RTMDet neck/head and the RTMPose head.

Module and attribute names follow mmcv/mmdet/mmpose exactly (`conv`, `bn`, `depthwise_conv`,
`main_conv`, `attention.fc`, ...), so official checkpoints load with `load_state_dict(strict=True)`
and nothing needs renaming. Every BatchNorm uses eps 1e-5, the default of the SyncBN the official
configs ask for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5


class ConvModule(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU, as mmcv's ConvModule with a norm and an activation.

    After `fuse_conv_bn` the conv carries the folded BatchNorm and `bn` is an Identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.activate: nn.Module = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise k x k ConvModule then pointwise 1 x 1 ConvModule (mmcv's DepthwiseSeparableConvModule)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(
            in_channels, in_channels, kernel_size, stride, padding, groups=in_channels
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def make_conv(
    use_depthwise: bool, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> nn.Module:
    """A ConvModule, or its depthwise-separable twin where the config asks for `use_depthwise`."""
    if use_depthwise:
        return DepthwiseSeparableConvModule(in_channels, out_channels, kernel_size, stride)
    return ConvModule(in_channels, out_channels, kernel_size, stride)


class ChannelAttention(nn.Module):
    """Squeeze-excite without reduction: global average pool -> 1x1 conv (bias) -> Hardsigmoid -> scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))
        return x * weights


class CSPNeXtBlock(nn.Module):
    """3x3 conv (depthwise-separable if asked) then a depthwise-separable 5x5 conv, with a residual."""

    def __init__(self, channels: int, add_identity: bool, use_depthwise: bool, kernel_size: int = 5) -> None:
        super().__init__()
        self.conv1 = make_conv(use_depthwise, channels, channels, 3)
        self.conv2 = DepthwiseSeparableConvModule(channels, channels, kernel_size)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayer(nn.Module):
    """Cross-stage-partial layer with CSPNeXt blocks and optional channel attention (mmdet's CSPLayer)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        add_identity: bool,
        use_depthwise: bool,
        channel_attention: bool,
        expand_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        mid_channels = int(out_channels * expand_ratio)
        self.main_conv = ConvModule(in_channels, mid_channels, 1)
        self.short_conv = ConvModule(in_channels, mid_channels, 1)
        self.final_conv = ConvModule(2 * mid_channels, out_channels, 1)
        self.blocks = nn.Sequential(
            *(CSPNeXtBlock(mid_channels, add_identity, use_depthwise) for _ in range(num_blocks))
        )
        self.attention: nn.Module | None = ChannelAttention(2 * mid_channels) if channel_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The short branch runs first, as in mmdet: ONNX exports list their weights in this order.
        x_short = self.short_conv(x)
        x_main = self.blocks(self.main_conv(x))
        x_final = torch.cat((x_main, x_short), dim=1)
        if self.attention is not None:
            x_final = self.attention(x_final)
        return self.final_conv(x_final)


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling with max pools 5, 9 and 13 (stride 1), as mmdet's SPPBottleneck.

    The 9 and 13 pools are computed as two and three chained 5x5 pools (the SPPF trick): with -inf
    padding, max pooling composes exactly, so the result is identical and cheaper.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid_channels = in_channels // 2
        self.conv1 = ConvModule(in_channels, mid_channels, 1)
        self.conv2 = ConvModule(mid_channels * 4, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        pool5 = F.max_pool2d(x, 5, 1, 2)
        pool9 = F.max_pool2d(pool5, 5, 1, 2)
        pool13 = F.max_pool2d(pool9, 5, 1, 2)
        return self.conv2(torch.cat((x, pool5, pool9, pool13), dim=1))


class ScaleNorm(nn.Module):
    """x / max(||x|| / sqrt(dim), eps) * g over the last axis (mmpose's ScaleNorm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class Scale(nn.Module):
    """Per-channel learnable scale (mmpose's Scale, used on the GAU residual)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d (with bias) equal to bn(conv(x)) in eval mode."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=True,
    ).to(conv.weight.device, conv.weight.dtype)
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
        factor = gamma / std
        fused.weight.copy_(conv.weight.double() * factor.reshape(-1, 1, 1, 1))
        conv_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
        fused.bias.copy_((conv_bias - bn.running_mean.double()) * factor + beta)  # type: ignore[union-attr]
    return fused


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every ConvModule's BatchNorm into its conv, in place; returns the model in eval mode.

    Each ConvModule gets its own new conv, so convs shared between head levels (mmdet's
    `share_conv=True`) become separate per-level convs, as they are in exported graphs.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvModule) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = _folded_conv(module.conv, module.bn)
            module.bn = nn.Identity()
    return model
