"""Model configuration as data: what a zoo name means.

Each model family module (rtmpose.py, rtmdet.py, ...) declares its `ModelSpec`s next to the network
code and registers them here, timm style. A spec holds everything needed to build the network, feed it
and find its weights; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Task = Literal["detector", "pose-topdown", "pose-bottomup"]
WeightFormat = Literal["pth", "onnx-mmdeploy", "onnx", "tflite", "openvino-ir"]


@dataclass(frozen=True)
class WeightSource:
    """One file that holds usable weights for a spec.

    url: official download address, or None where the file is only found offline.
    sha256: full hex digest, or its first 8+ hex digits as official file names carry them.
    offline_names: paths (relative to the offline directory) where the same weights, possibly in
        another format, may already lie; tried in order before downloading.
    """

    filename: str
    format: WeightFormat
    url: str | None = None
    sha256: str | None = None
    offline_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: Task
    family: str
    arch: str
    #: (height, width) of the network input
    input_size: tuple[int, int]
    #: per input channel, in the channel order the network expects
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: Literal["RGB", "BGR"]
    #: builds the network with random weights
    build: Callable[[], Any] = field(compare=False, repr=False)
    weights: tuple[WeightSource, ...] = ()
    #: official numbers, for tests and `rtpose models`
    params_m: float | None = None
    #: family-specific settings (codec, padding value, score thresholds, ...)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(*specs: ModelSpec) -> None:
    for spec in specs:
        if spec.name in _REGISTRY:
            raise ValueError(f"model {spec.name!r} registered twice")
        _REGISTRY[spec.name] = spec


def _load_families() -> None:
    # Importing a family module registers its specs.
    from rtpose.models import families  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        from rtpose.errors import ModelNotFoundError

        known = ", ".join(sorted(_REGISTRY))
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {known}") from None


def list_specs(task: Task | None = None) -> list[ModelSpec]:
    _load_families()
    return [s for s in _REGISTRY.values() if task is None or s.task == task]
