"""Building a ready model: a zoo name or a weight file -> an nn.Module in eval mode with its spec.

Loading is dispatched through one table `(family, format) -> loader` so that a model family adds its
own formats (TFLite, OpenVINO IR, ...) by calling `register_loader` from its module, without any
if-chain here. A loader takes the freshly built network and the weight file and returns the module to
use (the same one with weights loaded, or a new one, e.g. with BatchNorm already folded).

A bare weight file names no model, so its spec is found by trying the registered specs of the task
in turn and keeping the first whose loader accepts the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtpose.engines.devices import check_device
from rtpose.errors import ModelNotFoundError, RtposeError, WeightsError
from rtpose.models.spec import ModelSpec, Task, get_spec, list_specs
from rtpose.models.weights import (
    SUFFIX_FORMATS,
    ResolvedWeights,
    explicit_format,
    find_local_weights,
    resolve_weights,
)

logger = logging.getLogger("rtpose")

Loader = Callable[[nn.Module, Path], "nn.Module | None"]

# (family or None for any family, format) -> loader
_LOADERS: dict[tuple[str | None, str], Loader] = {}


def register_loader(format: str, loader: Loader, *, family: str | None = None) -> None:
    """Register how to load weights of `format` (for one `family`, or for every family)."""
    _LOADERS[(family, format)] = loader


def _load_pth(model: nn.Module, path: Path) -> nn.Module | None:
    from rtpose.models.loading import load_pth

    return load_pth(model, path)


def _load_mmdeploy_onnx(model: nn.Module, path: Path) -> nn.Module | None:
    from rtpose.models.loading import load_mmdeploy_onnx

    return load_mmdeploy_onnx(model, path)


register_loader("pth", _load_pth)
register_loader("onnx-mmdeploy", _load_mmdeploy_onnx)
register_loader("onnx", _load_mmdeploy_onnx)


def get_loader(spec: ModelSpec, format: str) -> Loader:
    loader = _LOADERS.get((spec.family, format)) or _LOADERS.get((None, format))
    if loader is None:
        raise WeightsError(f"{spec.name}: no loader for weights in {format!r} format")
    return loader


@dataclass
class LoadedModel:
    """A network in eval mode with its weights loaded, its spec, and where the weights came from."""

    module: nn.Module
    spec: ModelSpec
    weights: ResolvedWeights


def build_with_weights(
    spec: ModelSpec, resolved: ResolvedWeights, model: nn.Module | None = None
) -> nn.Module:
    """Build `spec`'s network (unless given) and load `resolved` into it; failures become WeightsError."""
    loader = get_loader(spec, resolved.format)
    model = spec.build() if model is None else model
    try:
        result = loader(model, resolved.path)
    except RtposeError:
        raise
    except ImportError as e:
        raise WeightsError(f"the {resolved.format} loader for {spec.name} is not available: {e}") from e
    except Exception as e:  # loaders raise torch/onnx errors of many kinds; name the file and model
        raise WeightsError(f"{resolved.path} does not fit {spec.name}: {type(e).__name__}: {e}") from e
    module = result if isinstance(result, nn.Module) else model
    return module.eval()


def looks_like_file(name_or_file: str | os.PathLike[str]) -> bool:
    text = os.fspath(name_or_file)
    return Path(text).suffix.lower() in SUFFIX_FORMATS or os.sep in text or Path(text).is_file()


def _checkpoint_shapes(path: Path) -> list[tuple[int, ...]] | None:
    """Shapes of every tensor in a .pth checkpoint, for a cheap pre-filter; None if unreadable."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        return None
    return [tuple(v.shape) for v in checkpoint.values() if isinstance(v, torch.Tensor)]


def _shapes_fit(model: nn.Module, checkpoint_shapes: list[tuple[int, ...]]) -> bool:
    """Whether every parameter shape of `model` occurs (as often) among the checkpoint's shapes.

    Independent of key names, which the loader maps; it only rules out specs that cannot fit.
    """
    available: dict[tuple[int, ...], int] = {}
    for shape in checkpoint_shapes:
        available[shape] = available.get(shape, 0) + 1
    for param in model.parameters():
        shape = tuple(param.shape)
        if available.get(shape, 0) == 0:
            return False
        available[shape] -= 1
    return True


def find_spec_for_file(
    path: Path, *, task: Task | None = None, candidates: Iterable[ModelSpec] | None = None
) -> tuple[ModelSpec, nn.Module, ResolvedWeights]:
    """The first spec whose loader accepts the weight file, with the loaded module."""
    fmt = explicit_format(path)
    specs = list(candidates) if candidates is not None else list_specs(task)
    checkpoint_shapes = _checkpoint_shapes(path) if fmt == "pth" else None
    tried: list[str] = []
    for spec in specs:
        resolved = ResolvedWeights(path=path, format=fmt, origin="explicit", source=None)
        try:
            get_loader(spec, fmt)
        except WeightsError:
            tried.append(f"{spec.name}: no {fmt} loader")
            continue
        model = spec.build()
        if checkpoint_shapes is not None and not _shapes_fit(model, checkpoint_shapes):
            tried.append(f"{spec.name}: parameter shapes differ")
            continue
        try:
            module = build_with_weights(spec, resolved, model)
        except RtposeError as e:
            tried.append(f"{spec.name}: {e}")
            continue
        logger.info("%s: weights from file %s", spec.name, resolved.describe())
        return spec, module, resolved
    scope = f"{task} models" if task else "models"
    detail = "\n".join(f"  - {t}" for t in tried) if tried else "  (no registered models to try)"
    raise ModelNotFoundError(f"{path}: no registered {scope} accept this file. Tried:\n{detail}")


def load_model(
    name_or_file: str | os.PathLike[str],
    *,
    task: Task | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    download: bool = True,
) -> LoadedModel:
    """A zoo name (weights resolved: file -> cache -> offline -> download) or a weight file -> model."""
    dev = check_device(device)
    if looks_like_file(name_or_file):
        path = Path(name_or_file).expanduser()
        if weights is not None:
            raise ModelNotFoundError(
                f"{path} is a weight file already; give a model name with weights={weights}"
            )
        if not path.is_file():
            raise ModelNotFoundError(f"weight file {path} does not exist")
        spec, module, resolved = find_spec_for_file(path, task=task)
    else:
        spec = get_spec(os.fspath(name_or_file))
        if task is not None and spec.task != task:
            raise ModelNotFoundError(f"{spec.name} is a {spec.task} model, not a {task} model")
        resolved = resolve_weights(spec, weights, download=download)
        module = build_with_weights(spec, resolved)
    return LoadedModel(module=module.to(dev).eval(), spec=spec, weights=resolved)


def describe_zoo(task: Task | None = None) -> list[dict[str, Any]]:
    """One row per registered model for `rtpose models`: what it is and where its weights are."""
    rows: list[dict[str, Any]] = []
    for spec in list_specs(task):
        local = find_local_weights(spec)
        urls = [s.url for s in spec.weights if s.url]
        rows.append({
            "name": spec.name,
            "task": spec.task,
            "input_size": spec.input_size,
            "params_m": spec.params_m,
            "url": urls[0] if urls else None,
            "available": local.origin if local else None,
            "path": str(local.path) if local else None,
            "description": spec.description,
        })  # fmt: skip
    return rows
