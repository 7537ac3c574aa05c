"""rtpose: real-time multi-person 2D human pose estimation.

    from rtpose import TopDown
    people = TopDown("rtmpose-m")(image)          # image: (H, W, 3) uint8 BGR
    for result in TopDown().run(["photos/"]):     # files, folders, globs
        print(result.file, len(result.people))

The pipelines are imported on first use (module `__getattr__`), so `import rtpose` stays light and
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rtpose.types import ImageResult, Person

if TYPE_CHECKING:
    from rtpose.pipelines.bottomup import BottomUp
    from rtpose.pipelines.topdown import Detector, TopDown

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "TopDown": "rtpose.pipelines.topdown",
    "Detector": "rtpose.pipelines.detector",
    "BottomUp": "rtpose.pipelines.bottomup",
    "Pipeline": "rtpose.pipelines.video",
}

__all__ = ["BottomUp", "Detector", "ImageResult", "Person", "Pipeline", "TopDown", "__version__"]


def __getattr__(name: str) -> Any:
    module_path = _LAZY.get(name)
    if module_path is None:
        raise AttributeError(f"module 'rtpose' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name == module_path:  # e.g. BottomUp before its module exists
            raise AttributeError(f"rtpose.{name} is not available: {module_path} is missing") from None
        raise
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
