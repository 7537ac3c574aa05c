"""Models and engines for the benchmarks: real weights where this machine has them, random otherwise.

Speed does not depend on the weight values, so a pose model without weights here (RTMPose s/m/l) is
benchmarked with seeded random weights and every report labels it so. Weights are looked up without
downloading: the cache, `$RTPOSE_OFFLINE_DIR`, then `<data dir>/models` (the shared test data), so
`rtpose bench` finds the real RTMDet-nano on a fresh checkout of this project.

One `BenchModel` feeds every backend: PyTorch eager runs a copy of the module, ONNX Runtime an ONNX
export of it (made once per run), compiled engines an AOTInductor package of it (cached by weights).
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rtpose.engines.base import Engine
from rtpose.errors import EngineError, ModelNotFoundError, RtposeError
from rtpose.models.spec import ModelSpec, Task, get_spec

#: every backend name `rtpose bench` knows, in report order
BACKENDS: tuple[str, ...] = ("eager", "ort", "compiled-fp32", "compiled-fp16", "compiled-bf16")
RANDOM_SEED = 0


@dataclass
class BenchModel:
    """A network on the CPU in fp32 eval mode, what its weights are, and an id for engine caches."""

    spec: ModelSpec
    module: nn.Module
    #: "real: <file>" or "random init (seed 0)"
    weights_label: str
    weights_id: str

    @property
    def real_weights(self) -> bool:
        return self.weights_label.startswith("real")


def default_data_dir() -> Path:
    """`$RTPOSE_DATA`, else `../shared/data` next to the repository."""
    env = os.environ.get("RTPOSE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def load_bench_model(
    name: str, task: Task, *, data_dir: Path | None = None, allow_random: bool = True
) -> BenchModel:
    """The model `name` with real weights if any can be found locally, else seeded random weights."""
    from rtpose.engines.compiled import weights_digest
    from rtpose.models.factory import build_with_weights
    from rtpose.models.weights import resolve_weights, sha256_file

    spec = get_spec(name)
    if spec.task != task:
        raise ModelNotFoundError(f"{name} is a {spec.task} model, not a {task} model")
    data_models = (data_dir or default_data_dir()) / "models"
    offline_dirs: list[str | None] = [None]  # None: $RTPOSE_OFFLINE_DIR as configured
    if data_models.is_dir():
        offline_dirs.append(str(data_models))
    for offline_dir in offline_dirs:
        try:
            resolved = resolve_weights(spec, offline_dir=offline_dir, download=False, progress=False)
        except ModelNotFoundError:
            continue
        module = build_with_weights(spec, resolved).float().eval().cpu()
        _freeze(module)
        return BenchModel(spec, module, f"real: {resolved.path.name}", "sha256:" + sha256_file(resolved.path))
    if not allow_random:
        raise ModelNotFoundError(f"{name}: no real weights on this machine (set RTPOSE_OFFLINE_DIR)")
    torch.manual_seed(RANDOM_SEED)
    module = spec.build().float().eval()
    _freeze(module)
    digest = weights_digest(module)[:16]
    return BenchModel(spec, module, f"random init (seed {RANDOM_SEED})", f"init-seed{RANDOM_SEED}-{digest}")


def _freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def parse_backend(backend: str) -> tuple[str, str]:
    """'compiled-fp16' -> ('compiled', 'fp16'); 'eager' -> ('eager', 'fp32'); 'ort' -> ('ort', 'fp32')."""
    if backend not in BACKENDS:
        raise RtposeError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    kind, _, precision = backend.partition("-")
    return kind, precision or "fp32"


def unavailable_reason(backend: str, device: str) -> str | None:
    """Why `backend` cannot run for `device` on this machine, or None when it can."""
    kind, precision = parse_backend(backend)
    is_cuda = device.startswith("cuda")
    if is_cuda and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if kind == "ort":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed"
        return None
    if kind == "compiled":
        if not is_cuda and precision == "fp16":
            return "fp16 convolutions on the CPU are unsupported or emulated (slow) in PyTorch"
        if not is_cuda and shutil.which("c++") is None and shutil.which("g++") is None:
            return "compiled CPU engines need a C++ compiler (none on PATH)"
    return None


def engine_device(backend: str, device: str) -> str:
    """Where the backend really runs: ONNX Runtime is the CPU backend here, whatever `device` says."""
    return "cpu" if parse_backend(backend)[0] == "ort" else device


class EngineFactory:
    """Builds each (model, backend) engine once; ONNX exports go to `workdir`."""

    def __init__(
        self,
        *,
        device: str,
        workdir: Path,
        threads: int | None = None,
        max_batch: int = 256,
        cache_dir: Path | None = None,
        progress: bool = True,
    ) -> None:
        self.device, self.workdir, self.threads = device, workdir, threads
        self.max_batch, self.cache_dir, self.progress = max_batch, cache_dir, progress
        self._engines: dict[tuple[str, str], Engine] = {}  # (model, backend [+ ' shared'])
        self._onnx: dict[str, Path] = {}

    def onnx_path(self, model: BenchModel) -> Path:
        """Our ONNX export of the model (made once per factory)."""
        from rtpose.engines.onnx_export import export_onnx

        if model.spec.name not in self._onnx:
            target = self.workdir / f"{model.spec.name}.onnx"
            self._onnx[model.spec.name] = export_onnx(copy.deepcopy(model.module).cpu(), model.spec, target)
        return self._onnx[model.spec.name]

    def get(self, model: BenchModel, backend: str, *, shared: bool = False) -> Engine:
        """The engine of (model, backend). shared=True: one that takes turns with another model's engine
        (a pipeline's detector and pose model): for ONNX Runtime a separate session whose idle threads
        do not spin, as `TopDown` makes them (`engines.ort.spinning`)."""
        shared = shared and parse_backend(backend)[0] == "ort"
        key = (model.spec.name, backend + (" shared" if shared else ""))
        if key not in self._engines:
            from rtpose.engines.ort import spinning

            with spinning(not shared):
                self._engines[key] = self._create(model, backend)
        return self._engines[key]

    def _create(self, model: BenchModel, backend: str) -> Engine:
        from rtpose.engines.onnx_export import output_names_for

        kind, precision = parse_backend(backend)
        if kind == "eager":
            from rtpose.engines.torch_engine import TorchEngine

            return TorchEngine(
                copy.deepcopy(model.module), device=self.device, output_names=output_names_for(model.spec)
            )
        if kind == "ort":
            from rtpose.engines.ort import OrtEngine

            return OrtEngine(self.onnx_path(model), threads=self.threads)
        from rtpose.engines.compiled import load_compiled_engine

        try:
            return load_compiled_engine(
                model.module, model.spec, weights_id=model.weights_id, device=self.device,
                precision=precision, max_batch=self.max_batch, cache_dir=self.cache_dir,
                progress=self.progress,
            )  # type: ignore[arg-type]  # fmt: skip
        except EngineError:
            raise
        except Exception as exc:  # compiler stacks fail in many ways; the report names the reason
            raise EngineError(f"{model.spec.name} {backend}: {type(exc).__name__}: {exc}") from exc
