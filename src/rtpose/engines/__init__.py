"""Inference backends behind one interface (`Engine`).

The backends import torch or onnxruntime, so they are imported from their modules
(`rtpose.engines.ort`, `.torch_engine`, `.factory`) or lazily through this package's attributes.
"""

from __future__ import annotations

from typing import Any

from rtpose.engines.base import Engine

_LAZY = {
    "OrtEngine": "rtpose.engines.ort",
    "TorchEngine": "rtpose.engines.torch_engine",
    "export_onnx": "rtpose.engines.onnx_export",
    "create_engine": "rtpose.engines.factory",
    "export_model": "rtpose.engines.factory",
}

__all__ = ["Engine", "OrtEngine", "TorchEngine", "create_engine", "export_model", "export_onnx"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rtpose.engines' has no attribute {name!r}")
