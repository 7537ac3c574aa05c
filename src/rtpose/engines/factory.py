"""Building an engine from a zoo name or a weight file: `create_engine` and `export_model`.

The ONNX Runtime backend never runs a foreign graph blindly: unless the given file already is an ONNX
graph with our output names (then it is used as it is), the weights are imported into our PyTorch
network and exported by us, once, into `$RTPOSE_CACHE/onnx/<spec>-<weights sha256[:16]>.onnx`. This is
also why the mmdeploy RTMDet file, whose graph contains NMS, always goes through import and export.

Backends: "ort" (ONNX Runtime, CPU), "torch" (PyTorch eager, CPU or CUDA), "compiled" (an AOTInductor
package with CUDA graphs per batch bucket, `engines.compiled`; fp32/fp16/bf16) and "auto": compiled on a
CUDA device, ONNX Runtime on the CPU. Precisions: fp16/bf16 for compiled engines, int8 for ONNX Runtime
(static quantisation of our export, calibrated on real images: `engines.quantize`).

`weights="random"` builds the network with seeded random weights (seed 0, the same weights and engine
cache key as `rtpose.benchmarks.engine_bench`): for speed measurements of models whose trained weights
are not at hand. Its keypoints are meaningless, and a warning says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from rtpose import __version__
from rtpose.engines.base import Engine
from rtpose.engines.onnx_export import SPEC_METADATA_KEY, export_onnx, output_names_for
from rtpose.engines.ort import OrtEngine
from rtpose.engines.torch_engine import TorchEngine
from rtpose.errors import EngineError, ModelNotFoundError
from rtpose.models.factory import LoadedModel, check_device, find_spec_for_file, load_model, looks_like_file
from rtpose.models.spec import ModelSpec, Task, get_spec, list_specs
from rtpose.models.weights import cache_root, sha256_file

if TYPE_CHECKING:
    from rtpose.engines.compiled import EngineBuild

logger = logging.getLogger("rtpose")

Backend = Literal["auto", "ort", "torch", "compiled"]
BACKENDS: tuple[str, ...] = ("auto", "ort", "torch", "compiled")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
#: `weights=` value that asks for seeded random weights (benchmarks only)
RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0


def onnx_cache_path(loaded: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cache file of our export: keyed by the weights and by what else shapes the graph (our version, the
    spec's input size and settings), so that a new release or a changed spec never reuses a stale export."""
    from rtpose.engines.compiled import module_variant

    identity = "|".join(
        (sha256_file(loaded.weights.path), __version__, repr(loaded.spec.input_size),
         repr(sorted((k, repr(v)) for k, v in loaded.spec.extra.items())), module_variant(loaded.module))
    )  # fmt: skip
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "onnx" / f"{loaded.spec.name}-{digest}.onnx"


def _graph_summary(path: Path) -> tuple[tuple[str, ...], dict[str, str], tuple[int | str, ...]]:
    """(output names, metadata, input shape) of an ONNX file, without loading its weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for files that are not ONNX
        raise EngineError(f"{path} is not a readable ONNX file: {e}") from e
    outputs = tuple(o.name for o in model.graph.output)
    metadata = {p.key: p.value for p in model.metadata_props}
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    shape: tuple[int | str, ...] = ()
    if graph_inputs:
        dims = graph_inputs[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)
    return outputs, metadata, shape


def _spec_of_ready_onnx(path: Path, name: str | None, task: Task) -> ModelSpec | None:
    """The spec an ONNX file can be run for as it is (our output names), or None if it needs import."""
    outputs, metadata, shape = _graph_summary(path)
    if name is not None:
        spec = get_spec(name)
        return spec if outputs == output_names_for(spec) else None
    if SPEC_METADATA_KEY in metadata:
        spec = get_spec(metadata[SPEC_METADATA_KEY])
        if spec.task == task and outputs == output_names_for(spec):
            return spec
    fitting = [
        s for s in list_specs(task)
        if outputs == output_names_for(s) and (len(shape) != 4 or _static_hw_fit(shape, s.input_size))
    ]  # fmt: skip
    if not fitting:
        return None
    if len(fitting) == 1:
        return fitting[0]
    # Several specs share these names and sizes (RTMPose t/s/m/l): the weights decide.
    spec, _, _ = find_spec_for_file(path, task=task, candidates=fitting)
    return spec


def _static_hw_fit(shape: tuple[int | str, ...], input_size: tuple[int, int]) -> bool:
    height, width = shape[2], shape[3]
    return all(
        not isinstance(got, int) or got <= 0 or got == want
        for got, want in ((height, input_size[0]), (width, input_size[1]))
    )


def _given_onnx(name_or_file: str | os.PathLike[str], weights: str | os.PathLike[str] | None) -> Path | None:
    for candidate in (weights, name_or_file if looks_like_file(name_or_file) else None):
        if candidate is not None and Path(candidate).suffix.lower() == ".onnx" and Path(candidate).is_file():
            return Path(candidate)
    return None


def _ort_engine_from_cache(loaded: LoadedModel, threads: int | None, precision: str = "fp32") -> OrtEngine:
    if precision == "int8":
        loaded = _float_network(loaded)
    path = onnx_cache_path(loaded)
    if path.is_file() and precision != "int8":
        try:
            engine = OrtEngine(path, threads=threads)
            logger.info("%s: ONNX from cache %s", loaded.spec.name, path)
            return engine
        except EngineError as e:
            logger.warning("%s: cached ONNX %s is unusable (%s); exporting again", loaded.spec.name, path, e)
            path.unlink(missing_ok=True)
    return _ort_engine(_exported(loaded.module, loaded.spec, path), loaded.spec, threads, precision)


def _exported(module: nn.Module, spec: ModelSpec, path: Path) -> Path:
    """`path`, exported from `module` first when it is not there yet."""
    if not path.is_file():
        export_onnx(module, spec, path)
    return path


def _random_onnx_path(spec: ModelSpec, weights_id: str) -> Path:
    return cache_root() / "onnx" / f"{spec.name}-{weights_id}.onnx"


def _ort_engine(path: Path, spec: ModelSpec, threads: int | None, precision: str) -> OrtEngine:
    if precision != "int8":
        return OrtEngine(path, threads=threads)
    from rtpose.engines.quantize import ensure_int8

    return OrtEngine(ensure_int8(path, spec), threads=threads)


def _float_network(loaded: LoadedModel) -> LoadedModel:
    """An imported INT8 model with its float network (INT8 emulation off): what INT8 quantisation takes."""
    import copy
    import dataclasses

    from rtpose.engines.compiled import module_variant

    if module_variant(loaded.module) != "int8-emulation":
        return loaded
    module = copy.deepcopy(loaded.module)
    module.set_int8_emulation(False)  # type: ignore[operator]
    return dataclasses.replace(loaded, module=module)


def resolve_backend(backend: str, device: str) -> str:
    """The concrete backend for a request: "auto" is compiled on CUDA and ONNX Runtime on the CPU."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    chosen = "compiled" if str(device).startswith("cuda") else "ort"
    logger.info(
        "backend auto: %s on %s", "compiled engine" if chosen == "compiled" else "ONNX Runtime", device
    )
    return chosen


def is_random_weights(weights: object) -> bool:
    return isinstance(weights, str) and weights == RANDOM_WEIGHTS


def random_model(name: str | os.PathLike[str], task: Task) -> tuple[nn.Module, ModelSpec, str]:
    """(network with seeded random weights, spec, weights id): for benchmarks, never for results.

    The RNG state of the caller is left as it was. The weights id names exactly these weights, so
    engines built from them are cached like any other.
    """
    from rtpose.engines.compiled import weights_digest

    if looks_like_file(name):
        raise ModelNotFoundError(f"weights='random' needs a zoo model name, not a file ({name})")
    spec = get_spec(os.fspath(name))
    if spec.task != task:
        raise ModelNotFoundError(f"{spec.name} is a {spec.task} model, not a {task} model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        module = spec.build().eval()
    for param in module.parameters():
        param.requires_grad_(False)
    logger.warning(
        "%s: RANDOM weights (seed %d): for speed measurements only, its outputs are meaningless",
        spec.name, RANDOM_SEED,
    )  # fmt: skip
    return module, spec, f"init-seed{RANDOM_SEED}-" + weights_digest(module)[:16]


def _check_request(backend: str, device: str, precision: str, max_batch: int) -> str:
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise EngineError(f"max_batch must be at least 1, not {max_batch}")
    if backend == "ort" and not str(device).startswith("cpu"):
        raise EngineError(
            f"backend 'ort' runs on the CPU only here; use backend 'compiled' or 'torch' "
            f"for device {device!r}"
        )
    check_device(device)  # a CUDA request without a GPU fails here, with a clear message
    chosen = resolve_backend(backend, device)
    if precision == "int8" and chosen != "ort":
        raise EngineError(f"precision int8 runs on ONNX Runtime (backend 'ort', CPU), not {chosen!r}")
    if precision in ("fp16", "bf16") and chosen != "compiled":
        raise EngineError(
            f"precision {precision} needs a compiled engine (backend 'compiled', or 'auto' on CUDA); "
            f"backend {chosen!r} runs fp32"
        )
    return chosen


def create_engine(
    name_or_file: str | os.PathLike[str],
    *,
    task: Task,
    backend: Backend | str = "ort",
    device: str = "cpu",
    weights: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    max_batch: int = 64,
    progress: bool = True,
) -> tuple[Engine, ModelSpec]:
    """An engine for a zoo name or a weight file, and the spec saying how to feed it.

    backend: "ort", "torch", "compiled" or "auto" (compiled on CUDA, ONNX Runtime on the CPU).
    precision: fp32, fp16/bf16 for compiled engines, int8 for ONNX Runtime (quantised once, calibrated on
    $RTPOSE_CALIB_DIR or the sample images; see `engines.quantize`). max_batch: the largest batch a
    compiled engine captures a CUDA graph for (larger batches run in chunks). weights: a file, or "random"
    (benchmarks).
    """
    chosen = _check_request(backend, device, precision, max_batch)
    if is_random_weights(weights):
        return _engine_for_random_weights(name_or_file, task, chosen, device, precision, max_batch, progress)
    if chosen == "compiled":
        from rtpose.engines.compiled import compiled_engine_for

        loaded = load_model(name_or_file, task=task, weights=weights, device="cpu")
        engine = compiled_engine_for(
            loaded,
            device=device,
            precision=precision,
            max_batch=max_batch,
            progress=progress,  # type: ignore[arg-type]
        )
        return engine, loaded.spec
    if chosen == "torch":
        loaded = load_model(name_or_file, task=task, weights=weights, device=device)
        engine = TorchEngine(loaded.module, device=device, output_names=output_names_for(loaded.spec))
        return engine, loaded.spec

    onnx_file = _given_onnx(name_or_file, weights)
    if onnx_file is not None:
        name = None if looks_like_file(name_or_file) else os.fspath(name_or_file)
        spec = _spec_of_ready_onnx(onnx_file, name, task)
        if spec is not None:
            if spec.task != task:
                raise ModelNotFoundError(f"{spec.name} is a {spec.task} model, not a {task} model")
            logger.info("%s: running %s as it is (our output names)", spec.name, onnx_file)
            return _ort_engine(onnx_file, spec, threads, precision), spec
    loaded = load_model(name_or_file, task=task, weights=weights, device="cpu")
    return _ort_engine_from_cache(loaded, threads, precision), loaded.spec


def _engine_for_random_weights(
    name: str | os.PathLike[str],
    task: Task,
    backend: str,
    device: str,
    precision: str,
    max_batch: int,
    progress: bool,
) -> tuple[Engine, ModelSpec]:
    module, spec, weights_id = random_model(name, task)
    if backend == "compiled":
        from rtpose.engines.compiled import load_compiled_engine

        engine = load_compiled_engine(
            module, spec, weights_id=weights_id, device=device, precision=precision,  # type: ignore[arg-type]
            max_batch=max_batch, progress=progress,
        )  # fmt: skip
        return engine, spec
    if backend == "torch":
        return TorchEngine(module, device=device, output_names=output_names_for(spec)), spec
    path = _exported(module, spec, _random_onnx_path(spec, weights_id))
    return _ort_engine(path, spec, None, precision), spec


def build_int8(
    name_or_file: str | os.PathLike[str],
    *,
    task: Task,
    weights: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> tuple[Path, ModelSpec]:
    """`rtpose build --device cpu --precision int8`: the quantised ONNX file `create_engine(...,
    precision="int8")` loads, calibrated on the images of `calibration` (see `engines.quantize`)."""
    from rtpose.engines.quantize import ensure_int8

    if is_random_weights(weights):
        module, spec, weights_id = random_model(name_or_file, task)
        path = _exported(module, spec, _random_onnx_path(spec, weights_id))
    else:
        loaded = _float_network(load_model(name_or_file, task=task, weights=weights, device="cpu"))
        spec, path = loaded.spec, _exported(loaded.module, loaded.spec, onnx_cache_path(loaded))
    return ensure_int8(path, spec, calibration, force=force), spec


def build_compiled(
    name_or_file: str | os.PathLike[str],
    *,
    task: Task,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cuda",
    precision: str = "fp16",
    max_batch: int = 64,
    force: bool = False,
    progress: bool = True,
) -> tuple[EngineBuild, ModelSpec]:
    """`rtpose build`: the compiled engine of a model, built now or found valid in the cache.

    Uses the same weights id as `create_engine(..., backend="compiled")`, so what this builds is what
    the pipelines load.
    """
    from rtpose.engines.compiled import ensure_engine

    _check_request("compiled", device, precision, max_batch)
    if is_random_weights(weights):
        module, spec, weights_id = random_model(name_or_file, task)
    else:
        loaded = load_model(name_or_file, task=task, weights=weights, device="cpu")
        module, spec, weights_id = loaded.module, loaded.spec, "sha256:" + sha256_file(loaded.weights.path)
    build = ensure_engine(
        module, spec, weights_id=weights_id, device=device, precision=precision,  # type: ignore[arg-type]
        max_batch=max_batch, force=force, progress=progress,
    )  # fmt: skip
    return build, spec


def export_model(
    name_or_file: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    task: Task,
    weights: str | os.PathLike[str] | None = None,
    opset: int = 17,
) -> Path:
    """`rtpose export`: load a model (zoo name or weight file) and write our ONNX export of it."""
    loaded = load_model(name_or_file, task=task, weights=weights, device="cpu")
    return export_onnx(loaded.module, loaded.spec, out_path, opset=opset)
