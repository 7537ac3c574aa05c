"""Official MMPose / MMDet `.pth` checkpoints -> our networks (same state-dict names, strict).

Checkpoints are read with `torch.load(weights_only=True)`: no pickled code runs. Released files are a
dict with `state_dict` (plus `meta`, sometimes `optimizer`, `message_hub`), or a bare state dict.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rtpose.errors import WeightsError

#: buffers that exist only in the training wrappers (mean/std of the data preprocessor)
_DROPPED_PREFIXES = ("data_preprocessor.",)
_SHOWN = 5


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The float32 state dict of a checkpoint file, with training-only entries removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {exc}"
        ) from exc
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()
    ):
        raise WeightsError(
            f"{path} holds no state dict (expected a dict of tensors or a dict with 'state_dict')"
        )
    return {
        key: (value.float() if value.is_floating_point() else value)
        for key, value in checkpoint.items()
        if not key.startswith(_DROPPED_PREFIXES)
    }


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise WeightsError naming missing/unexpected keys and shape clashes; silent when all fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    clashes = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if clashes:
        problems.append(f"{len(clashes)} shape clashes: {_listing(clashes)}")
    if problems:
        name = type(model).__name__
        raise WeightsError(f"{source} does not fit {name}: " + "; ".join(problems))


def load_pth(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load an official checkpoint into `model` strictly (in place)."""
    state_dict = read_state_dict(path)
    check_state_dict(model, state_dict, str(path))
    model.load_state_dict(state_dict, strict=True)
