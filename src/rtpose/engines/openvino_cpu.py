"""Our ONNX exports on OpenVINO's CPU plugin, with an inference-precision hint (f32 or bf16).

Why a second CPU runtime: on processors with BF16 units (AVX512-BF16, AMX) OpenVINO runs convolutions in
bfloat16, which ONNX Runtime's CPU kernels do not; on our 2-core machine that halved RTMPose-m's cost per
crop (docs/notes.md). Whether bf16 keeps accuracy is measured by `benchmarks.precision_check`
(candidates `openvino-fp32`, `openvino-bf16` on the CPU). OpenVINO is an optional package (the
`reference` and `test` extras), imported when an engine is created.

The file is read once and compiled once per input shape (batch sizes vary in pipelines); outputs come
back as float32 NumPy arrays under the ONNX file's output names, which for our exports are the names our
networks use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rtpose.engines.base import Engine
from rtpose.engines.ort import to_numpy_batch
from rtpose.errors import EngineError

OpenVinoPrecision = Literal["fp32", "bf16"]
_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoCpuEngine(Engine):
    """An ONNX file on OpenVINO's CPU plugin; `precision` "fp32" or "bf16" (OpenVINO's inference precision
    hint: bf16 runs in float32 on processors without BF16 units, see `runs_bf16`)."""

    backend = "openvino"
    device = "cpu"

    def __init__(
        self, onnx_path: str | os.PathLike[str], *, precision: OpenVinoPrecision | str = "fp32",
        threads: int | None = None,
    ) -> None:  # fmt: skip
        try:
            import openvino as ov
        except ImportError as exc:
            raise EngineError("the OpenVINO backend needs OpenVINO: pip install openvino") from exc
        if precision not in _HINTS:
            raise EngineError(f"OpenVINO precision must be one of {', '.join(_HINTS)}, not {precision!r}")
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise EngineError(f"ONNX file {self.path} not found")
        self.precision, self.threads = precision, threads
        self.core = ov.Core()
        self._bf16 = ov.Type.bf16
        try:
            self._model = self.core.read_model(str(self.path))
        except RuntimeError as exc:
            raise EngineError(f"OpenVINO cannot read {self.path}: {exc}") from None
        if len(self._model.inputs) != 1:
            count = len(self._model.inputs)
            raise EngineError(f"{self.path.name}: expected one input, the model has {count}")
        self.input_name = self._model.inputs[0].get_any_name()
        self.output_names = tuple(output.get_any_name() for output in self._model.outputs)
        self._compiled: dict[tuple[int, ...], Any] = {}

    @property
    def runs_bf16(self) -> bool:
        """Whether the compiled model really infers in bf16 (False before a first call)."""
        compiled = next(iter(self._compiled.values()), None)
        return compiled is not None and compiled.get_property("INFERENCE_PRECISION_HINT") == self._bf16

    def _compile(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._compiled:
            model = self._model.clone()
            model.reshape({self.input_name: list(shape)})
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[self.precision]}
            if self.threads is not None:
                config["INFERENCE_NUM_THREADS"] = int(self.threads)
            try:
                self._compiled[shape] = self.core.compile_model(model, "CPU", config)
            except RuntimeError as exc:
                raise EngineError(f"OpenVINO cannot compile {self.path.name} for {shape}: {exc}") from None
        return self._compiled[shape]

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        array = to_numpy_batch(batch)
        compiled = self._compile(tuple(int(v) for v in array.shape))
        outputs = compiled({self.input_name: array})
        return {port.get_any_name(): np.asarray(value, np.float32) for port, value in outputs.items()}
