"""Which decoder turns a top-down pose network's raw outputs into keypoints: a registry by codec name.

The pipeline knows a pose model only through its `ModelSpec`; `spec.extra["codec"]` names the codec,
and this registry maps the name to a module exposing `decode(outputs: dict, spec) -> (keypoints (N, K, 2)
in network-input pixels, scores (N, K))` for NumPy and torch alike. Modules are imported only when
first used, so adding a codec costs nothing to the others and importing rtpose stays light.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from rtpose.errors import RtposeError

#: codec name -> module path of its decoder
CODEC_MODULES: dict[str, str] = {
    "simcc": "rtpose.postprocess.simcc",
    "movenet": "rtpose.postprocess.movenet",
    "heatmap": "rtpose.postprocess.heatmap",
}


def register_codec(name: str, module_path: str) -> None:
    """Make `spec.extra["codec"] == name` decode with `module_path.decode`."""
    CODEC_MODULES[name] = module_path


def codec_module(name: str) -> ModuleType:
    if name not in CODEC_MODULES:
        known = ", ".join(sorted(CODEC_MODULES))
        raise RtposeError(f"no decoder registered for codec {name!r}; known codecs: {known}")
    try:
        module = importlib.import_module(CODEC_MODULES[name])
    except ModuleNotFoundError as exc:
        raise RtposeError(
            f"the decoder module of codec {name!r} ({CODEC_MODULES[name]}) is missing: {exc}"
        ) from None
    if not callable(getattr(module, "decode", None)):
        raise RtposeError(f"codec module {CODEC_MODULES[name]} has no decode(outputs, spec) function")
    return module


def codec_name(spec: Any) -> str:
    codec = (getattr(spec, "extra", None) or {}).get("codec")
    if not codec:
        raise RtposeError(f"model {getattr(spec, 'name', '?')!r} names no codec (spec.extra['codec'])")
    return str(codec)


def decode_pose(spec: Any, outputs: dict[str, Any]) -> tuple[Any, Any]:
    """Raw outputs -> (keypoints (N, K, 2) in network-input pixels, scores (N, K)), same kind as given."""
    return codec_module(codec_name(spec)).decode(outputs, spec)
