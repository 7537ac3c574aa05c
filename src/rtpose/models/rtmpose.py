"""RTMPose: CSPNeXt backbone + RTMCC head (SimCC with a gated attention unit), as MMPose builds it.

State-dict names are MMPose's own (`backbone.stem.0.conv.weight` ... `head.cls_y.weight`), so an
official checkpoint loads strictly. The network returns raw SimCC logits `(simcc_x, simcc_y)` of shapes
`(N, K, W * split)` and `(N, K, H * split)`; decoding lives in `rtpose.postprocess`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rtpose.models.cspnext import CSPNeXt
from rtpose.models.layers import Scale, ScaleNorm
from rtpose.models.spec import ModelSpec, WeightSource, register

#: size -> (deepen_factor, widen_factor), from the official rtmpose-{t,s,m,l} configs
RTMPOSE_ARCHS: dict[str, tuple[float, float]] = {
    "t": (0.167, 0.375),
    "s": (0.33, 0.5),
    "m": (0.67, 0.75),
    "l": (1.0, 1.0),
}
SIMCC_SPLIT_RATIO = 2.0


class RTMCCBlock(nn.Module):
    """Gated attention unit (self-attention, single head, SiLU, no relative bias) with a scaled residual."""

    def __init__(self, dims: int, expansion_factor: int = 2, s: int = 128, eps: float = 1e-5) -> None:
        super().__init__()
        self.s = s
        self.e = int(dims * expansion_factor)
        self.sqrt_s = math.sqrt(s)
        self.ln = ScaleNorm(dims, eps=eps)
        self.uv = nn.Linear(dims, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.ones(2, s))
        self.beta = nn.Parameter(torch.zeros(2, s))
        self.o = nn.Linear(self.e, dims, bias=False)
        self.res_scale = Scale(dims)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        uv = F.silu(self.uv(self.ln(x)))
        u, v, base = torch.split(uv, [self.e, self.e, self.s], dim=2)
        base = base.unsqueeze(2) * self.gamma + self.beta  # (N, K, 2, s)
        q, k = base.unbind(dim=2)
        kernel = torch.square(F.relu(torch.bmm(q, k.transpose(1, 2)) / self.sqrt_s))
        return self.o(u * torch.bmm(kernel, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self._attention(x)
        return self.res_scale(x) + main


class RTMCCHead(nn.Module):
    """final conv (K channels) -> flatten -> ScaleNorm + Linear -> GAU -> two linear classifiers."""

    def __init__(
        self,
        in_channels: int,
        num_keypoints: int,
        input_size: tuple[int, int],
        hidden_dims: int = 256,
        final_layer_kernel_size: int = 7,
        split_ratio: float = SIMCC_SPLIT_RATIO,
    ) -> None:
        super().__init__()
        height, width = input_size
        flatten_dims = (height // 32) * (width // 32)
        self.final_layer = nn.Conv2d(
            in_channels, num_keypoints, final_layer_kernel_size, padding=final_layer_kernel_size // 2
        )
        self.mlp = nn.Sequential(ScaleNorm(flatten_dims), nn.Linear(flatten_dims, hidden_dims, bias=False))
        self.gau = RTMCCBlock(hidden_dims)
        self.cls_x = nn.Linear(hidden_dims, int(width * split_ratio), bias=False)
        self.cls_y = nn.Linear(hidden_dims, int(height * split_ratio), bias=False)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.mlp(torch.flatten(self.final_layer(feature), 2))
        tokens = self.gau(tokens)
        return self.cls_x(tokens), self.cls_y(tokens)


class RTMPose(nn.Module):
    """RTMPose-t/s/m/l for `input_size` (H, W) with both sides multiples of 32."""

    def __init__(self, arch: str, input_size: tuple[int, int] = (256, 192), num_keypoints: int = 17) -> None:
        super().__init__()
        if arch not in RTMPOSE_ARCHS:
            raise ValueError(f"unknown RTMPose size {arch!r}; choose one of {sorted(RTMPOSE_ARCHS)}")
        height, width = input_size
        if height % 32 or width % 32 or height <= 0 or width <= 0:
            raise ValueError(f"RTMPose input size must be positive multiples of 32, got {input_size}")
        deepen, widen = RTMPOSE_ARCHS[arch]
        self.arch = arch
        self.input_size = (height, width)
        self.num_keypoints = num_keypoints
        self.backbone = CSPNeXt(deepen, widen, out_indices=(4,), channel_attention=True)
        self.head = RTMCCHead(int(1024 * widen), num_keypoints, self.input_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-2:] != self.input_size:
            raise ValueError(
                f"RTMPose-{self.arch} expects (N, 3, {self.input_size[0]}, {self.input_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        return self.head(self.backbone(x)[-1])


# ---------------------------------------------------------------------------------------------- specs
_BODY7_URL = "https://download.openmmlab.com/mmpose/v1/projects/rtmposev1/"
_BODY7_HASHES = {"t": "026a1439", "s": "acd4a1ef", "m": "e48f03d0", "l": "4dba18fc"}
#: published parameter counts (MMPose model zoo), millions
RTMPOSE_PARAMS_M = {"t": 3.34, "s": 5.47, "m": 13.59, "l": 27.66}
RTMPOSE_MEAN = (123.675, 116.28, 103.53)
RTMPOSE_STD = (58.395, 57.12, 57.375)


def _extra() -> dict:
    return {
        "codec": "simcc",
        "simcc_split_ratio": SIMCC_SPLIT_RATIO,
        "num_keypoints": 17,
        "bbox_padding": 1.25,
    }


def _body7_source(arch: str) -> WeightSource:
    filename = f"rtmpose-{arch}_simcc-body7_pt-body7_420e-256x192-{_BODY7_HASHES[arch]}_20230504.pth"
    return WeightSource(
        filename=filename,
        format="pth",
        url=_BODY7_URL + filename,
        sha256=_BODY7_HASHES[arch],
        offline_names=(filename,),
    )


def _spec(
    arch: str, input_size: tuple[int, int], name: str, weights: tuple[WeightSource, ...], params_m: float
) -> ModelSpec:
    return ModelSpec(
        name=name,
        task="pose-topdown",
        family="rtmpose",
        arch=arch,
        input_size=input_size,
        mean=RTMPOSE_MEAN,
        std=RTMPOSE_STD,
        channel_order="RGB",
        build=lambda: RTMPose(arch, input_size=input_size),
        weights=weights,
        params_m=params_m,
        extra=_extra(),
        description=f"RTMPose-{arch} {input_size[0]}x{input_size[1]}, COCO-17 body keypoints, SimCC head",
    )


register(
    *(
        _spec(arch, (256, 192), f"rtmpose-{arch}", (_body7_source(arch),), RTMPOSE_PARAMS_M[arch])
        for arch in RTMPOSE_ARCHS
    ),
    # Official 384x288 body7 weights exist, but their file hash could not be confirmed here: no url.
    # Its larger head input (12 x 9 tokens) and SimCC bins make it 27.79 M parameters.
    _spec("l", (384, 288), "rtmpose-l-384x288", (), 27.79),
)
