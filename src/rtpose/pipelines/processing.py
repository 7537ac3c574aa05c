"""Where a pipeline's pre/post-processing runs: NumPy + OpenCV on the host, or torch on the engine's device.

"auto" picks torch when the engine itself is a torch engine on a CUDA device (the image is uploaded
once and only final keypoints come back), NumPy + OpenCV otherwise (the reference path, and the faster
one on a CPU). "torch" on the CPU is allowed, so the two paths can be compared anywhere.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from rtpose.decode.image import to_bgr8
from rtpose.errors import ImageDecodeError, RtposeError
from rtpose.preprocess.affine import is_torch

Processing = Literal["auto", "numpy", "torch"]


def choose_processing(processing: str, backend: str, device: str) -> Literal["numpy", "torch"]:
    if processing == "auto":
        return "torch" if backend != "ort" and str(device).startswith("cuda") else "numpy"
    if processing not in ("numpy", "torch"):
        raise RtposeError(f"processing must be 'auto', 'numpy' or 'torch', not {processing!r}")
    return processing  # type: ignore[return-value]


def to_numpy(value: Any) -> np.ndarray:
    if is_torch(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def outputs_as(kind: str, outputs: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """Engine outputs as NumPy arrays (kind "numpy") or as torch tensors on `device` (kind "torch")."""
    if kind == "numpy":
        return {name: to_numpy(value) for name, value in outputs.items()}
    import torch

    return {name: torch.as_tensor(value, device=device) for name, value in outputs.items()}


def check_image(image: Any) -> Any:
    """A pipeline's image argument as `(H, W, 3) uint8` BGR: NumPy arrays are normalised (gray, BGRA,
    16-bit accepted), torch tensors must already be in that form."""
    if is_torch(image):
        import torch

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
            raise ImageDecodeError(
                f"image tensor must be (H, W, 3) uint8 BGR; got {tuple(image.shape)} {image.dtype}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ImageDecodeError(f"zero-size image ({image.shape[1]}x{image.shape[0]})")
        return image
    if not isinstance(image, np.ndarray):
        raise ImageDecodeError(f"image must be a NumPy array (H, W, 3) uint8 BGR, not {type(image).__name__}")
    return to_bgr8(image, "image")
