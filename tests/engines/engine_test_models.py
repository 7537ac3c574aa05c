"""Tiny test networks and specs for the engine tests (registered only by the `tiny_registry` fixture)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

from rtpose.models.spec import ModelSpec, WeightSource

NUM_KEYPOINTS = 3
INPUT_SIZE = (32, 24)  # (H, W)


class TinyPose(nn.Module):
    """SimCC-shaped outputs (N, K, 2W) and (N, K, 2H) from a conv + BN + two linear heads."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        height, input_width = INPUT_SIZE
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.SiLU()
        )
        features = width * (height // 2) * (input_width // 2)
        self.head_x = nn.Linear(features, NUM_KEYPOINTS * input_width * 2)
        self.head_y = nn.Linear(features, NUM_KEYPOINTS * height * 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.stem(x).flatten(1)
        return (
            self.head_x(features).unflatten(1, (NUM_KEYPOINTS, -1)),
            self.head_y(features).unflatten(1, (NUM_KEYPOINTS, -1)),
        )


class TinyDetector(nn.Module):
    """Detector-shaped outputs: scores (N, A, 1) after sigmoid and boxes (N, A, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=4, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.conv(x).flatten(2).transpose(1, 2)
        return raw[..., :1].sigmoid(), raw[..., 1:] * 8.0


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic random weights, with non-trivial BatchNorm affine terms and statistics.

    Default-style initialisation keeps activations of deep networks in range; random BN statistics
    make a wrong BN folding or a train-mode export visible.
    """
    generator = torch.Generator().manual_seed(seed)

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(1.0 + 0.1 * randn(module.weight.shape))
                module.bias.copy_(0.1 * randn(module.bias.shape))
                module.running_mean.copy_(0.1 * randn(module.running_mean.shape))
                variance = torch.rand(module.running_var.shape, generator=generator)
                module.running_var.copy_(0.75 + 0.5 * variance)
            elif isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(randn(module.weight.shape) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * randn(module.bias.shape))
    return model.eval()


def load_state_dict_file(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


TINY_POSE = ModelSpec(
    name="tiny-pose", task="pose-topdown", family="tiny", arch="tiny-pose", input_size=INPUT_SIZE,
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="RGB", build=TinyPose,
    weights=(WeightSource(filename="tiny-pose.pth", format="pth"),),
)  # fmt: skip
TINY_DETECTOR = ModelSpec(
    name="tiny-det", task="detector", family="tiny", arch="tiny-det", input_size=(32, 32),
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="BGR", build=TinyDetector,
    weights=(WeightSource(filename="tiny-det.pth", format="pth"),),
)  # fmt: skip


def families_available() -> bool:
    """Whether the real RTMPose/RTMDet modules and their loaders (written in parallel) exist yet."""
    try:
        for module in ("rtpose.models.rtmpose", "rtpose.models.rtmdet"):
            importlib.import_module(module)
        loading = importlib.import_module("rtpose.models.loading")
    except ImportError:
        return False
    return all(hasattr(loading, name) for name in ("load_pth", "load_mmdeploy_onnx"))


needs_families = pytest.mark.skipif(
    not families_available(), reason="rtpose.models.rtmpose/rtmdet/loading do not exist yet"
)
