"""ONNX Runtime engine: the CPU backend, and the reference runtime for our ONNX exports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from rtpose.engines.base import Engine
from rtpose.errors import EngineError


def to_numpy_batch(batch: Any) -> np.ndarray:
    """A float32, C-contiguous NCHW array from a NumPy array or a torch tensor (any device)."""
    if isinstance(batch, np.ndarray):
        array = batch
    elif hasattr(batch, "detach") and hasattr(batch, "cpu"):
        array = batch.detach().cpu().numpy()
    else:
        raise EngineError(f"engine input must be a NumPy array or a torch tensor, got {type(batch).__name__}")
    if array.ndim != 4:
        raise EngineError(f"engine input must be a batch (N, C, H, W), got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.float32)


_SPIN: ContextVar[bool] = ContextVar("rtpose_ort_spin", default=True)


@contextmanager
def spinning(enabled: bool) -> Iterator[None]:
    """Whether the `OrtEngine`s made inside the block let their idle threads busy-wait for the next
    parallel section (ONNX Runtime's default, and ours outside such a block).

    Spinning makes isolated calls of one engine faster (on our 2 cores RTMDet-nano 6 vs 9 ms, RTMPose-m
    batch 1 21.5 vs 25 ms) but takes the cores from whatever runs between the calls: `TopDown` with a
    detector (two sessions taking turns; the video pipeline's decoder threads too) makes its engines
    with spinning off (docs/benchmarks.md)."""
    token = _SPIN.set(enabled)
    try:
        yield
    finally:
        _SPIN.reset(token)


class OrtEngine(Engine):
    """Runs an ONNX file with ONNX Runtime and full graph optimisation; returns NumPy outputs.

    spin: let idle threads busy-wait between parallel sections (None: as `spinning` says, by default on).
    """

    backend = "ort"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spin: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise EngineError(f"ONNX file {path} does not exist")
        available = set(ort.get_available_providers())
        missing = [p for p in providers if p not in available]
        if missing:
            raise EngineError(
                f"ONNX Runtime providers {missing} are not available here; have {sorted(available)}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        allow = _SPIN.get() if spin is None else spin
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as e:  # ORT raises its own exception types for bad graphs and files
            raise EngineError(f"ONNX Runtime cannot load {path}: {e}") from e
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EngineError(f"{path}: expected one input, the model has {[i.name for i in inputs]}")
        self.path = path
        self.input_name: str = inputs[0].name
        #: static dims are ints, dynamic ones strings or None
        self.input_shape: tuple[Any, ...] = tuple(inputs[0].shape)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.device = "cpu"

    def _check_shape(self, array: np.ndarray) -> None:
        expected = self.input_shape
        if len(expected) != array.ndim:
            raise EngineError(f"{self.path.name}: input must have {len(expected)} dims, got {array.shape}")
        for axis, (want, got) in enumerate(zip(expected, array.shape, strict=True)):
            if isinstance(want, int) and want > 0 and want != got:
                raise EngineError(
                    f"{self.path.name}: input shape {tuple(array.shape)} does not fit the model's "
                    f"{expected} (axis {axis})"
                )

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        array = to_numpy_batch(batch)
        self._check_shape(array)
        outputs = self.session.run(list(self.output_names), {self.input_name: array})
        return dict(zip(self.output_names, outputs, strict=True))
