"""PyTorch eager engine: the reference backend, on CPU or CUDA; outputs stay on the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rtpose.engines.base import Engine
from rtpose.engines.devices import check_device
from rtpose.errors import EngineError


class TorchEngine(Engine):
    """Runs an nn.Module under `torch.inference_mode`; returns {name: tensor on the device}."""

    backend = "torch"

    def __init__(self, module: nn.Module, *, device: str = "cpu", output_names: Sequence[str]) -> None:
        dev = check_device(device)
        if not output_names:
            raise EngineError("TorchEngine needs the names of the model's outputs")
        self.module = module.eval().to(dev)
        self.torch_device = dev
        self.device = dev.type
        self.output_names = tuple(output_names)

    def _to_input(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, np.ndarray):
            tensor = torch.from_numpy(np.ascontiguousarray(batch))
        elif isinstance(batch, torch.Tensor):
            tensor = batch
        else:
            raise EngineError(
                f"engine input must be a NumPy array or a torch tensor, got {type(batch).__name__}"
            )
        if tensor.ndim != 4:
            raise EngineError(f"engine input must be a batch (N, C, H, W), got shape {tuple(tensor.shape)}")
        return tensor.to(self.torch_device, torch.float32, non_blocking=True)

    def __call__(self, batch: Any) -> dict[str, torch.Tensor]:
        tensor = self._to_input(batch)
        with torch.inference_mode():
            outputs = self.module(tensor)
        if isinstance(outputs, dict):
            return {name: outputs[name] for name in self.output_names}
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if len(outputs) != len(self.output_names):
            expected = len(self.output_names)
            raise EngineError(f"model gave {len(outputs)} outputs, expected {expected}: {self.output_names}")
        return dict(zip(self.output_names, outputs, strict=True))
