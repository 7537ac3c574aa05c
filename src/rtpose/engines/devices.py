"""Parsing a device string into a `torch.device`, failing clearly when CUDA is asked for but absent."""

from __future__ import annotations

import torch

from rtpose.errors import EngineError


def check_device(device: str) -> torch.device:
    """`torch.device(device)`, or EngineError if the string is not a device or CUDA is unavailable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise EngineError(f"unknown device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev
