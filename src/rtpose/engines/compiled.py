"""Compiled engines: our answer to a TensorRT engine, built with PyTorch's compiler stack.

`build_engine` does what the TensorRT builder does, step by step:

1. fold BatchNorm into convolutions (`engines.fold`); on CUDA, depthwise convolutions and the SiLU after
   them become one Triton kernel each (`engines.depthwise`, where `DEPTHWISE_CUDA` says so); cast to
   fp32/fp16/bf16, channels_last weights;
2. `torch.export` a wrapper that takes the float32 batch, casts it to the engine precision inside the
   graph (Inductor fuses the cast into the first kernel) and returns float32 outputs for the decoders;
   the batch dimension is dynamic (1..largest bucket), so one package serves every batch size;
3. `torch._inductor.aoti_compile_and_package`: Inductor fuses conv epilogues (bias + activation,
   residual adds) and, on CUDA, autotunes conv/GEMM kernels (`max_autotune`) for this very GPU;
4. writes the `.pt2` package to the engine cache atomically under an exclusive lock, with a JSON
   sidecar (`engines.engine_cache`) that ties it to weights, GPU, versions and precision.

`CompiledEngine` loads a package after verifying it; on CUDA it captures one CUDA graph per batch
bucket (1, 2, 4, ... max_batch) around the AOTInductor runner, so a forward costs one graph launch
instead of one launch per kernel: a batch of n is copied into the smallest bucket >= n, the graph is
replayed, and views of the first n rows of the static outputs are returned.

Why one dynamic-batch package rather than one static package per bucket: the build (and, on CUDA,
the autotuning) is paid once instead of once per bucket, and CUDA graphs already remove the launch
overhead that shape-specialised code would otherwise hide. `dynamic_batch=False` builds a single
static-batch package for measuring the difference (see `rtpose.benchmarks.engine_bench`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rtpose.engines import depthwise as depthwise_kernel
from rtpose.engines import engine_cache
from rtpose.engines.base import Engine
from rtpose.engines.fold import fold_batchnorm
from rtpose.engines.onnx_export import output_names_for
from rtpose.errors import EngineError
from rtpose.models.factory import LoadedModel
from rtpose.models.spec import ModelSpec
from rtpose.models.weights import sha256_file

Precision = Literal["fp32", "fp16", "bf16"]
PRECISION_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

#: Inductor options per device type. The default CUDA build fuses and generates Triton kernels for
#: everything but convs and GEMMs, which stay on cuDNN/cuBLAS (their heuristics pick kernels for this GPU).
#: Inductor's `max_autotune` search over Triton templates is opt-in: on the H100 it benchmarked each
#: conv/GEMM shape for about 10 s (many fp32 candidates fail on shared memory), and did not finish
#: RTMPose-m within 9 minutes (2026-11-22), far from a usable build time.
DEFAULT_INDUCTOR_OPTIONS: dict[str, dict[str, Any]] = {
    "cuda": {"epilogue_fusion": True},
    "cpu": {},
}
#: How CUDA engines compute depthwise convolutions: "library" (cuDNN, its bias and activation in a second
#: kernel), "triton" (`engines.depthwise`: one kernel with the bias and SiLU) or "split" (ours up to
#: DEPTHWISE_SPLIT_BATCH crops, cuDNN above, chosen per call inside the engine: RTMPose-m FP16 on the H100
#: 0.47 ms at batch 1 as with ours, 33.6k crops/s at 256 where ours gives 30.7k and cuDNN 31.8k).
#: `RTPOSE_DEPTHWISE` overrides it (A/B measurements); CPU engines always use the library.
DEPTHWISE_CUDA = "split"
DEPTHWISE_CHOICES = ("library", "triton", "split")
#: "split": our kernel up to this many crops, cuDNN above (inside one engine)
DEPTHWISE_SPLIT_BATCH = 16
AUTOTUNE_CUDA: dict[str, Any] = {
    "max_autotune": True,
    "max_autotune_conv_backends": "ATEN,TRITON",
    "max_autotune_gemm_backends": "ATEN,TRITON",
    "epilogue_fusion": True,
}


def depthwise_choice(device: torch.device, variant: str = "float") -> str:
    """How a build for `device` computes depthwise convolutions (see `DEPTHWISE_CUDA`). INT8 emulations
    keep the library: they run their own integer convolutions on the modules' attributes."""
    chosen = os.environ.get("RTPOSE_DEPTHWISE", "").strip() or DEPTHWISE_CUDA
    if chosen not in DEPTHWISE_CHOICES:
        raise EngineError(f"RTPOSE_DEPTHWISE takes one of {', '.join(DEPTHWISE_CHOICES)}, not {chosen!r}")
    ours_can_run = device.type == "cuda" and depthwise_kernel.KERNEL_AVAILABLE and variant == "float"
    return chosen if ours_can_run else "library"


def default_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to `max_batch`, plus `max_batch` itself."""
    if max_batch < 1:
        raise EngineError(f"max_batch must be >= 1, got {max_batch}")
    buckets = [1]
    while buckets[-1] * 2 <= max_batch:
        buckets.append(buckets[-1] * 2)
    if buckets[-1] != max_batch:
        buckets.append(max_batch)
    return tuple(buckets)


def weights_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes, bytes): a weights id for the cache."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{data.dtype};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_output_names(
    spec: ModelSpec, outputs: Any, override: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Names of the network's outputs: the override, dict keys, or the spec's (as ONNX export names them)."""
    if isinstance(outputs, torch.Tensor):
        count = 1
    elif isinstance(outputs, Mapping | tuple | list):
        count = len(outputs)
    else:
        raise EngineError(f"{spec.name}: network returned {type(outputs).__name__}, expected tensors")
    if override is not None:
        names = tuple(override)
    elif isinstance(outputs, Mapping):
        names = tuple(outputs)
    else:
        try:
            names = output_names_for(spec)
        except EngineError:
            names = ("output",) if count == 1 else tuple(f"output{i}" for i in range(count))
    if len(names) != count:
        raise EngineError(f"{spec.name}: the network has {count} outputs but the names are {names}")
    return names


class _EngineWrapper(nn.Module):
    """float32 batch in -> network in `dtype` -> tuple of float32 outputs in `output_names` order."""

    def __init__(self, network: nn.Module, dtype: torch.dtype, output_names: tuple[str, ...]) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype
        self.output_names = output_names

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(batch.to(self.dtype))
        if isinstance(out, torch.Tensor):
            items = [out]
        elif isinstance(out, Mapping):
            items = [out[name] for name in self.output_names]
        else:
            items = list(out)
        return tuple(t.float() for t in items)


class _Stages:
    """Stage lines with elapsed time, and a tqdm bar over the stages."""

    def __init__(self, title: str, names: Sequence[str], enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.title = title
        self.bar = tqdm(total=len(names), desc=title, unit="stage", disable=not enabled, leave=False)
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = round(elapsed, 3)
        self.bar.update(1)
        if self.enabled:
            total = time.perf_counter() - self.started
            self.bar.write(f"[{self.title}] {name}: {elapsed:.1f} s (total {total:.1f} s)")

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class EngineBuild:
    """Where the engine is, and whether this call compiled it (and why)."""

    path: Path
    built: bool
    reason: str
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _check_request(
    spec: ModelSpec, precision: str, max_batch: int, buckets: Sequence[int] | None
) -> tuple[int, ...]:
    if precision not in PRECISION_DTYPES:
        raise EngineError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    if buckets is None:
        return default_buckets(max_batch)
    chosen = tuple(sorted({int(b) for b in buckets}))
    if not chosen or chosen[0] < 1:
        raise EngineError(f"batch buckets must be positive integers, got {tuple(buckets)}")
    if chosen[-1] > max_batch:
        raise EngineError(f"largest batch bucket {chosen[-1]} exceeds max_batch {max_batch}")
    return chosen


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise EngineError(f"compiled engines run on 'cpu' or 'cuda', not {str(dev)!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError("a CUDA engine was requested but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def module_variant(module: nn.Module) -> str:
    """How the network computes, beyond its weights: "int8-emulation" for imported INT8 models whose
    fake-quantised execution is switched on (same weight file, other engine), else "float"."""
    return "int8-emulation" if getattr(module, "int8_emulation", False) else "float"


def build_fields(
    spec: ModelSpec,
    *,
    device: torch.device,
    precision: str,
    buckets: tuple[int, ...],
    weights_id: str,
    dynamic_batch: bool,
    inductor_options: Mapping[str, Any],
    variant: str = "float",
    depthwise: str = "library",
    int8_semantics: str | None = None,
) -> dict[str, Any]:
    """Everything the engine key covers (see `engine_cache`). int8_semantics: which INT8 arithmetic an
    emulating network follows (openpose-lite: "openvino-cpu" or "fake-quantize"); keys of other
    engines leave it out, so they stay what they were."""
    semantics = {"int8_semantics": int8_semantics} if int8_semantics is not None else {}
    return {
        "format_version": engine_cache.ENGINE_FORMAT_VERSION,
        "weights_id": weights_id,
        "variant": variant,
        **semantics,
        "spec": spec.name,
        "input_size": list(spec.input_size),
        **engine_cache.device_fields(device),
        "precision": precision,
        "buckets": list(buckets),
        "dynamic_batch": dynamic_batch,
        "channels_last": True,
        "depthwise": depthwise,
        "inductor_options": dict(sorted(inductor_options.items())),
    }


def _compile_package(
    module: nn.Module,
    spec: ModelSpec,
    *,
    device: torch.device,
    precision: str,
    buckets: tuple[int, ...],
    dynamic_batch: bool,
    inductor_options: Mapping[str, Any],
    output_names: Sequence[str] | None,
    target: Path,
    stages: _Stages,
    depthwise: str,
) -> dict[str, Any]:
    """Fold, export and AOT-compile `module` into the package `target`; returns sidecar facts."""
    height, width = spec.input_size
    largest = buckets[-1]
    # The autotuning hint: a typical crop batch, within the dynamic range.
    example_batch = largest if not dynamic_batch else min(8, largest)
    example = torch.randn(example_batch, 3, height, width, device=device, generator=None)

    with stages.stage("fold conv+bn"):
        work = copy.deepcopy(module).float().eval().to(device)
        for param in work.parameters():
            param.requires_grad_(False)
        folded, report = fold_batchnorm(work, example)
        with torch.no_grad():
            sample = folded(example[:1])
        names = resolve_output_names(spec, sample, output_names)
        library_above = (
            DEPTHWISE_SPLIT_BATCH if depthwise == "split" and largest > DEPTHWISE_SPLIT_BATCH else None
        )
        fused_depthwise = (
            depthwise_kernel.fuse_depthwise_convs(folded, library_above)
            if depthwise in ("triton", "split")
            else 0
        )
        network = folded.to(PRECISION_DTYPES[precision]).to(memory_format=torch.channels_last)
        wrapper = _EngineWrapper(network, PRECISION_DTYPES[precision], names).eval()

    with stages.stage("export"):
        dynamic_shapes = None
        if dynamic_batch and largest > 1:
            batch_dim = torch.export.Dim("batch", min=1, max=largest)
            dynamic_shapes = ({0: batch_dim},)
        try:
            exported = torch.export.export(wrapper, (example,), dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as exc:
            raise EngineError(f"{spec.name}: torch.export failed: {exc}") from exc

    compile_stage = "compile + autotune" if inductor_options.get("max_autotune") else "compile"
    with stages.stage(compile_stage):
        try:
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(target), inductor_configs=dict(inductor_options)
            )
        except Exception as exc:
            raise EngineError(f"{spec.name}: AOTInductor compilation failed: {exc}") from exc

    with torch.no_grad():
        outputs = wrapper(example[:1])
    return {
        "output_names": list(names),
        "output_shapes": [list(t.shape[1:]) for t in outputs],
        "input_shape": [3, height, width],
        "folded_pairs": len(report.pairs),
        "fold_max_abs_diff": report.max_abs_diff,
        "fused_depthwise_convs": fused_depthwise,
        "example_batch": example_batch,
    }


def ensure_engine(
    module: nn.Module,
    spec: ModelSpec,
    *,
    weights_id: str,
    device: str | torch.device = "cuda",
    precision: Precision = "fp16",
    max_batch: int = 64,
    buckets: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    dynamic_batch: bool = True,
    inductor_options: Mapping[str, Any] | None = None,
    output_names: Sequence[str] | None = None,
    force: bool = False,
) -> EngineBuild:
    """The cached engine for this request, building (or rebuilding) it only when needed."""
    chosen = _check_request(spec, precision, max_batch, buckets)
    if not dynamic_batch and len(chosen) != 1:
        raise EngineError(f"a static-batch engine needs exactly one bucket, got {chosen}")
    variant = module_variant(module)
    if variant == "int8-emulation" and precision != "fp32":
        raise EngineError(
            f"{spec.name}: INT8 emulation computes exact integers in float32 and cannot run in {precision}; "
            "switch it off (module.set_int8_emulation(False)) or build fp32"
        )
    dev = _resolve_device(device)
    options = dict(DEFAULT_INDUCTOR_OPTIONS[dev.type] if inductor_options is None else inductor_options)
    depthwise = depthwise_choice(dev, variant)
    fields = build_fields(
        spec, device=dev, precision=precision, buckets=chosen, weights_id=weights_id,
        dynamic_batch=dynamic_batch, inductor_options=options, variant=variant, depthwise=depthwise,
        int8_semantics=getattr(module, "int8_semantics", None) if variant == "int8-emulation" else None,
    )  # fmt: skip
    path = engine_cache.engine_path(
        engine_cache.cache_root(cache_dir), spec.name, precision, engine_cache.engine_key(fields)
    )
    if not force and engine_cache.why_invalid(path, fields) is None:
        return EngineBuild(path, built=False, reason="cached")

    with engine_cache.exclusive_lock(path):
        reason = "forced rebuild" if force else engine_cache.why_invalid(path, fields)
        if reason is None:  # another process finished it while we waited for the lock
            return EngineBuild(path, built=False, reason="built by another process")
        if path.exists() or engine_cache.sidecar_path(path).exists():
            warnings.warn(f"rebuilding compiled engine {path.name}: {reason}", RuntimeWarning, stacklevel=2)
        engine_cache.remove_stale_temps(path)
        target = engine_cache.temp_package_path(path)
        stages = _Stages(f"rtpose build {spec.name} {precision}", _BUILD_STAGES, progress)
        try:
            facts = _compile_package(
                module, spec, device=dev, precision=precision, buckets=chosen, dynamic_batch=dynamic_batch,
                inductor_options=options, output_names=output_names, target=target, stages=stages,
                depthwise=depthwise,
            )  # fmt: skip
            with stages.stage("package"):
                sidecar = {
                    "key": engine_cache.engine_key(fields),
                    "fields": fields,
                    **facts,
                    "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "stage_seconds": dict(stages.seconds),
                }
                engine_cache.publish(target, path, sidecar)
        finally:
            stages.close()
            engine_cache.remove_stale_temps(path)
    return EngineBuild(path, built=True, reason=reason or "", stage_seconds=dict(stages.seconds))


_BUILD_STAGES = ("fold conv+bn", "export", "compile", "package")


def build_engine(
    module: nn.Module,
    spec: ModelSpec,
    *,
    device: str | torch.device = "cuda",
    precision: Precision = "fp16",
    max_batch: int = 64,
    buckets: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    weights_id: str,
    progress: bool = True,
    dynamic_batch: bool = True,
    inductor_options: Mapping[str, Any] | None = None,
    output_names: Sequence[str] | None = None,
) -> Path:
    """Build (or find in the cache) the compiled engine of `module`; returns the `.pt2` path.

    `weights_id` names the weights (e.g. the sha256 of the weight file, or `weights_digest(module)`):
    it is part of the cache key, so engines of different weights never mix.
    """
    return ensure_engine(
        module, spec, weights_id=weights_id, device=device, precision=precision, max_batch=max_batch,
        buckets=buckets, cache_dir=cache_dir, progress=progress, dynamic_batch=dynamic_batch,
        inductor_options=inductor_options, output_names=output_names,
    ).path  # fmt: skip


@dataclass
class _GraphBucket:
    batch: int
    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_outputs: tuple[torch.Tensor, ...]


def _initialise_cuda_libraries(device: torch.device) -> None:
    """Prepare the process before `aoti_load_package` on CUDA (a workaround; see docs/notes.md).

    On the H100 (torch 2.11+cu130) loading a package segfaulted in every process that had not run an
    ONNX Runtime session before: fresh processes, the GPU tests of this module, the precision check,
    with or without eager convs first. Every process that had (`rtpose bench`, the pipeline tests) loaded
    all its engines. So a one-node ONNX Runtime session is run first, and one conv and matmul so that
    cuDNN and cuBLAS are initialised. Why this helps is not understood; it costs ~50 ms once.
    """
    _run_onnxruntime_once()
    x = torch.ones(1, 1, 4, 4, device=device)
    torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3, device=device))
    torch.mm(x[0, 0], x[0, 0])
    torch.cuda.synchronize(device)


@functools.cache
def _run_onnxruntime_once() -> None:
    try:
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return
    value = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "warm-up", value[:1], value[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.zeros(1, np.float32)})
    except Exception:  # a warm-up only: an ONNX Runtime that cannot run it changes nothing here
        return


_load_lock = threading.Lock()


@contextmanager
def _without_cpu_isa_probe() -> Iterator[None]:
    """`aoti_load_package` without its host CPU vector-ISA probe.

    Loading compares the host with the package's build host, for an advisory warning only, and to name
    the host's CPU ISA it compiles and runs test programs with the C++ compiler (pytorch/pytorch#191715):
    40 s in every fresh process on the H100 host, paid again by every worker of a ProcessPipeline.
    Our cache key already ties a package to its GPU, CPU and versions, so while loading, the host is
    described by its platform and machine alone (the fields that cost nothing).
    """
    from torch._inductor import codecache

    original = getattr(codecache, "get_device_information", None)
    if original is None:  # another torch: nothing to leave out
        yield
        return

    def cheap_device_information(device_type: str) -> dict[str, str]:
        return {"AOTI_PLATFORM": sys.platform, "AOTI_MACHINE": platform.machine()}

    with _load_lock:  # the module attribute is swapped for the duration of one load
        codecache.get_device_information = cheap_device_information
        try:
            yield
        finally:
            codecache.get_device_information = original


#: batches from which cuDNN times its convolution algorithms (`torch.backends.cudnn.benchmark`) for a
#: compiled engine; below, its heuristics choose. Measured on the H100 (RTMPose-m FP16, docs/benchmarks.md):
#: timing them made batch 1 slower (0.546-0.566 vs 0.509-0.512 ms), batch 8 equal, batch 64 13% faster.
CUDNN_TIMED_FROM_BATCH = 16


def _cudnn_choice_by_batch(runner: Any) -> Callable[[torch.Tensor], Any]:
    """`runner` with cuDNN's algorithm search on for large batches and off for small ones, whatever the
    process-wide setting. cuDNN keeps one algorithm per convolution shape (batch size included) for the
    whole process, chosen at that shape's first run: an engine's graph warm-up of each bucket."""
    cudnn = torch.backends.cudnn

    def run(x: torch.Tensor) -> Any:
        previous = cudnn.benchmark
        cudnn.benchmark = x.shape[0] >= CUDNN_TIMED_FROM_BATCH
        try:
            return runner(x)
        finally:
            cudnn.benchmark = previous

    return run


def _load_runner(path: Path, single_threaded: bool) -> Any:
    loader = torch._inductor.aoti_load_package
    kwargs: dict[str, Any] = {}
    if "run_single_threaded" in inspect.signature(loader).parameters:
        kwargs["run_single_threaded"] = single_threaded
    elif single_threaded:
        raise EngineError("this torch version cannot run AOTInductor packages inside CUDA graphs")
    with _without_cpu_isa_probe():
        return loader(str(path), **kwargs)


class CompiledEngine(Engine):
    """A verified AOTInductor package on one device; CUDA graphs per batch bucket on CUDA.

    Outputs are float32 torch tensors on the engine's device. With CUDA graphs they are views of the
    graph's static buffers, overwritten by the next call: pass `clone_outputs=True` (or clone them)
    when results must outlive the next call.
    """

    backend = "compiled"

    def __init__(
        self,
        path: str | Path,
        *,
        cuda_graphs: bool = True,
        clone_outputs: bool = False,
        progress: bool = False,
        graph_warmup: int = 2,
        lazy_graphs: bool = True,
    ) -> None:
        self.path = Path(path)
        reason = engine_cache.why_invalid(self.path)
        if reason is not None:
            raise EngineError(f"compiled engine {self.path} cannot be trusted: {reason}")
        self.sidecar: dict[str, Any] = engine_cache.read_sidecar(self.path) or {}
        fields = self.sidecar["fields"]
        self.fields = fields
        self.precision: str = fields["precision"]
        self.buckets: tuple[int, ...] = tuple(fields["buckets"])
        self.dynamic_batch: bool = bool(fields["dynamic_batch"])
        self.output_names = tuple(self.sidecar["output_names"])
        self.output_shapes = tuple(tuple(s) for s in self.sidecar["output_shapes"])
        self.input_shape: tuple[int, int, int] = tuple(self.sidecar["input_shape"])  # type: ignore[assignment]
        self.clone_outputs = clone_outputs
        self._device = self._matching_device(fields)
        self.device = self._device.type
        self.use_cuda_graphs = cuda_graphs and self._device.type == "cuda"
        if self._device.type == "cuda":
            _initialise_cuda_libraries(self._device)
        try:
            self._runner = self._load(single_threaded=self.use_cuda_graphs)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"could not load compiled engine {self.path.name}: {exc}") from exc
        self._graphs: dict[int, _GraphBucket] = {}
        self._graph_warmup = graph_warmup
        self._graph_pool: Any = torch.cuda.graph_pool_handle() if self.use_cuda_graphs else None
        if self.use_cuda_graphs and not lazy_graphs:
            stages = _Stages(f"rtpose load {self.path.stem}", ("capture graphs",), progress)
            try:
                with stages.stage("capture graphs"):
                    for batch in sorted(self.buckets, reverse=True):
                        self._capture(batch)
            finally:
                stages.close()

    def _load(self, single_threaded: bool) -> Any:
        runner = _load_runner(self.path, single_threaded=single_threaded)
        return _cudnn_choice_by_batch(runner) if self._device.type == "cuda" else runner

    @staticmethod
    def _matching_device(fields: Mapping[str, Any]) -> torch.device:
        if fields["device_type"] == "cpu":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise EngineError("this engine was built for CUDA but no CUDA device is available")
        dev = torch.device("cuda", torch.cuda.current_device())
        here = engine_cache.device_fields(dev)
        for name in ("device_name", "compute_capability", "torch", "cuda"):
            if here[name] != fields[name]:
                raise EngineError(
                    f"engine was built for {name}={fields[name]!r}, here it is {here[name]!r}; rebuild it"
                )
        return dev

    def _capture(self, batch: int) -> _GraphBucket | None:
        """Capture the graph of one bucket (None, and no graphs from now on, when capture fails).

        All buckets share one memory pool; captured largest first (at load), the smaller ones reuse the
        largest one's freed intermediate memory."""
        dev = self._device
        current = torch.cuda.current_stream(dev)
        static_input = torch.zeros((batch, *self.input_shape), device=dev, dtype=torch.float32)
        side = torch.cuda.Stream(dev)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(max(1, self._graph_warmup)):
                self._runner(static_input)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: pipeline threads (decoders, uploads) may use CUDA while a bucket is captured
            with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
                static_outputs = tuple(self._runner(static_input))
        except Exception as exc:
            warnings.warn(
                f"CUDA graph capture failed ({exc}); running {self.path.name} without graphs",
                RuntimeWarning,
                stacklevel=3,
            )
            self._graphs.clear()
            self.use_cuda_graphs = False
            self._runner = self._load(single_threaded=False)
            return None
        self._graphs[batch] = _GraphBucket(batch, graph, static_input, static_outputs)
        return self._graphs[batch]

    def graph_input(self, n: int) -> torch.Tensor | None:
        """The static input rows a batch of n is copied into (None without CUDA graphs): callers that
        write their batch here directly save that copy."""
        bucket = self._graph_bucket(n)
        return None if bucket is None else bucket.static_input[:n]

    def _graph_bucket(self, n: int) -> _GraphBucket | None:
        """The CUDA graph that runs a batch of n, captured now on its first use (None without graphs)."""
        if not self.use_cuda_graphs:
            return None
        batch = self.bucket_for(n)
        return self._graphs.get(batch) or self._capture(batch)

    # -- calling ------------------------------------------------------------------------------------

    def _as_input(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, np.ndarray):
            if not np.issubdtype(batch.dtype, np.floating):
                raise EngineError(f"engine input must be a float array, got dtype {batch.dtype}")
            tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        elif isinstance(batch, torch.Tensor):
            if not batch.is_floating_point():
                raise EngineError(f"engine input must be a float tensor, got dtype {batch.dtype}")
            tensor = batch
        else:
            raise EngineError(
                f"engine input must be a NumPy array or torch tensor, got {type(batch).__name__}"
            )
        if tensor.ndim != 4 or tuple(tensor.shape[1:]) != self.input_shape:
            raise EngineError(
                f"engine input must have shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(tensor.shape)}"
            )
        return tensor.to(device=self._device, dtype=torch.float32, non_blocking=True)

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds n rows (the largest bucket when none does)."""
        for bucket in self.buckets:
            if bucket >= n:
                return bucket
        return self.buckets[-1]

    def run_for_capture(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network on a device float32 batch of exactly one bucket's size, bypassing this engine's own
        CUDA graphs: for callers that capture the engine inside a graph of their own, with their pre- and
        post-processing (`pipelines.graphed`). Outputs are fresh tensors (in the caller's graph pool)."""
        if not self.use_cuda_graphs:
            raise EngineError(f"{self.path.name} runs without CUDA graphs; it cannot be captured")
        if x.device != self._device or x.dtype != torch.float32 or tuple(x.shape[1:]) != self.input_shape:
            raise EngineError(
                f"capture input must be float32 (N, {', '.join(map(str, self.input_shape))}) on "
                f"{self._device}; got {tuple(x.shape)} {x.dtype} on {x.device}"
            )
        if x.shape[0] not in self.buckets:
            raise EngineError(f"capture batch {x.shape[0]} is not one of the buckets {self.buckets}")
        return dict(zip(self.output_names, self._runner(x), strict=True))

    def _run_chunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        bucket = self._graph_bucket(n)
        if bucket is not None:
            if bucket.static_input[:n].data_ptr() != x.data_ptr():
                bucket.static_input[:n].copy_(x)
            bucket.graph.replay()
            return tuple(out[:n] for out in bucket.static_outputs)
        if not self.dynamic_batch and n != self.buckets[-1]:
            padded = x.new_zeros((self.buckets[-1], *self.input_shape))
            padded[:n] = x
            return tuple(out[:n] for out in self._runner(padded))
        return tuple(self._runner(x.contiguous()))

    def __call__(self, batch: Any) -> dict[str, torch.Tensor]:
        x = self._as_input(batch)
        n = x.shape[0]
        largest = self.buckets[-1]
        if n == 0:
            return {
                name: torch.empty((0, *shape), device=self._device)
                for name, shape in zip(self.output_names, self.output_shapes, strict=True)
            }
        if n <= largest:
            outs = self._run_chunk(x)
            if self.clone_outputs:
                outs = tuple(o.clone() for o in outs)
            return dict(zip(self.output_names, outs, strict=True))
        results = [
            torch.empty((n, *shape), device=self._device, dtype=torch.float32) for shape in self.output_shapes
        ]
        for start in range(0, n, largest):
            chunk = self._run_chunk(x[start : start + largest])
            for result, part in zip(results, chunk, strict=True):
                result[start : start + part.shape[0]].copy_(part)
        return dict(zip(self.output_names, results, strict=True))


def load_compiled_engine(
    module: nn.Module,
    spec: ModelSpec,
    *,
    weights_id: str,
    device: str | torch.device = "cuda",
    precision: Precision = "fp16",
    max_batch: int = 64,
    buckets: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    cuda_graphs: bool = True,
    clone_outputs: bool = False,
) -> CompiledEngine:
    """Build if needed, then load; a cached package that fails to load is rebuilt once, with a warning."""
    options = dict(
        weights_id=weights_id, device=device, precision=precision, max_batch=max_batch, buckets=buckets,
        cache_dir=cache_dir, progress=progress,
    )  # fmt: skip
    build = ensure_engine(module, spec, **options)  # type: ignore[arg-type]
    try:
        return CompiledEngine(
            build.path, cuda_graphs=cuda_graphs, clone_outputs=clone_outputs, progress=progress
        )
    except EngineError as exc:
        if build.built:
            raise
        warnings.warn(
            f"cached engine {build.path.name} failed to load ({exc}); rebuilding",
            RuntimeWarning,
            stacklevel=2,
        )
    build = ensure_engine(module, spec, force=True, **options)  # type: ignore[arg-type]
    return CompiledEngine(build.path, cuda_graphs=cuda_graphs, clone_outputs=clone_outputs, progress=progress)


def compiled_engine_for(
    loaded: LoadedModel,
    *,
    device: str | torch.device = "cuda",
    precision: Precision = "fp16",
    max_batch: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    cuda_graphs: bool = True,
) -> CompiledEngine:
    """`create_engine(..., backend="compiled")`: the engine of a loaded model, named by its weight file.

    An imported INT8 model with its INT8 emulation on runs as its float (dequantised) network in
    fp16/bf16, with a warning: the emulation needs exact float32 integers.
    """
    weights_id = "sha256:" + sha256_file(loaded.weights.path)
    module = loaded.module
    if precision != "fp32" and module_variant(module) == "int8-emulation":
        warnings.warn(
            f"{loaded.spec.name}: INT8 emulation cannot run in {precision}; building its float network",
            RuntimeWarning,
            stacklevel=2,
        )
        module = copy.deepcopy(module)
        module.set_int8_emulation(False)  # type: ignore[operator]
    return load_compiled_engine(
        module, loaded.spec, weights_id=weights_id, device=device, precision=precision,
        max_batch=max_batch, cache_dir=cache_dir, progress=progress, cuda_graphs=cuda_graphs,
    )  # fmt: skip
