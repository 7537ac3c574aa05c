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


def engine_input_rows(engine: Any, n: int, shape: tuple[int, int, int], device: Any) -> Any:
    """Where to write an (n, *shape) float32 batch for `engine` so that it is not copied again.

    A compiled engine with CUDA graphs copies its input into the static input of the graph bucket for
    n; writing the batch straight into those rows makes that copy a no-op (torch skips a copy of a
    tensor onto the very same memory). Other engines get a fresh tensor.
    """
    import torch

    graph_input = getattr(engine, "graph_input", None)  # CompiledEngine with CUDA graphs (engines.compiled)
    if callable(graph_input):
        rows = graph_input(n)
        if rows is not None and tuple(rows.shape) == (n, *shape):
            return rows
    return torch.empty((n, *shape), dtype=torch.float32, device=device)


def engine_batch_limit(engine: Any) -> int | None:
    """The fixed batch size of an engine with a static batch axis (an ONNX file exported so), else None."""
    shape = getattr(engine, "input_shape", None)
    if engine is None or getattr(engine, "backend", "") != "ort" or not shape:
        return None
    first = shape[0]
    return first if isinstance(first, int) and first > 0 else None


def run_engine(engine: Any, batch: Any) -> dict[str, Any]:
    """`engine(batch)`, in pieces when the engine only takes a fixed batch size (outputs concatenated)."""
    limit = engine_batch_limit(engine)
    if limit is None or batch.shape[0] == limit:
        return engine(batch)
    if limit != 1:
        raise RtposeError(
            f"this ONNX model takes batches of exactly {limit}; export it with a dynamic batch axis "
            "(rtpose export) to run other batch sizes"
        )
    parts = [engine(batch[i : i + 1]) for i in range(batch.shape[0])]
    return {name: np.concatenate([to_numpy(p[name]) for p in parts]) for name in parts[0]}
