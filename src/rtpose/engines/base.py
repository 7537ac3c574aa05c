"""The one small interface every inference backend implements.

An engine maps one input batch (N, C, H, W float32, already normalised) to the model's named raw
outputs. Pipelines know nothing else about a backend, so ONNX Runtime, PyTorch eager and compiled
engines (and a TensorRT engine, were one ever runnable here) are interchangeable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Engine(ABC):
    """A loaded model ready to run on one device."""

    #: "ort", "torch", "compiled", ...
    backend: str = ""
    #: "cpu" or "cuda"
    device: str = "cpu"
    output_names: tuple[str, ...] = ()

    @abstractmethod
    def __call__(self, batch: Any) -> dict[str, Any]:
        """Run one batch; returns {output name: array}.

        `batch` is a NumPy array or a torch tensor; outputs are NumPy arrays for host backends and
        torch tensors on the engine's device for torch backends (so GPU pipelines never round-trip).
        """
