"""ONNX export of our PyTorch networks, with the input/output names every backend relies on.

Input `input` (N, 3, H, W) with a dynamic batch axis; outputs named per task (`simcc_x, simcc_y` for
RTMPose, `scores, boxes` for detectors) or per family (`spec.extra["output_names"]`). Opset 17 by
default because TensorRT and ONNX Runtime both accept it. Below opset 18 the TorchScript exporter is
tried first (the dynamo exporter writes opset 18 and its down-conversion to 17 failed for our models on
torch 2.11, costing ~10 s per export); from opset 18 the dynamo exporter goes first. Either falls back to
the other. The file appears
atomically, carries the spec name in its metadata, and passes `onnx.checker`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from rtpose.errors import EngineError
from rtpose.models.spec import ModelSpec

logger = logging.getLogger("rtpose")

INPUT_NAME = "input"
TASK_OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "detector": ("scores", "boxes"),
    "pose-topdown": ("simcc_x", "simcc_y"),
    "pose-bottomup": ("heatmaps", "pafs"),
}
#: metadata key holding the spec name in files we export
SPEC_METADATA_KEY = "rtpose.spec"


def output_names_for(spec: ModelSpec) -> tuple[str, ...]:
    names = spec.extra.get("output_names")
    if names:
        return tuple(names)
    try:
        return TASK_OUTPUT_NAMES[spec.task]
    except KeyError:
        raise EngineError(f"{spec.name}: no output names for task {spec.task!r}") from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporters' progress prints and tracebacks off stdout/stderr (stdout may carry JSON).

    They warn about tracing details that do not matter for our static-graph networks, print progress,
    and onnxscript logs a traceback when it cannot convert to the asked opset (we then fall back).
    What they said goes to our debug log instead.
    """
    captured = io.StringIO()
    noisy = [logging.getLogger(name) for name in ("onnxscript", "torch.onnx", "onnx_ir")]
    levels = [logger_.level for logger_ in noisy]
    try:
        for logger_ in noisy:
            logger_.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger_, level in zip(noisy, levels, strict=True):
            logger_.setLevel(level)
        if captured.getvalue():
            logger.debug("ONNX exporter output:\n%s", captured.getvalue().rstrip())


def _torch_export(
    module: nn.Module,
    dummy: torch.Tensor,
    path: Path,
    names: tuple[str, ...],
    opset: int,
    dynamic: bool,
    dynamo: bool,
) -> None:
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *names)} if dynamic else None
    kwargs: dict = {"dynamo": dynamo}
    if dynamo:
        kwargs.update(external_data=False, optimize=True)
    with _quiet_exporter():
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(names),
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            **kwargs,
        )


def _finish(path: Path, spec: ModelSpec, names: tuple[str, ...], opset: int) -> None:
    """Check the exported graph's names and opset, add metadata, and run onnx.checker."""
    import onnx

    model = onnx.load(str(path))
    inputs = [i.name for i in model.graph.input]
    outputs = tuple(o.name for o in model.graph.output)
    if inputs != [INPUT_NAME] or outputs != names:
        raise EngineError(
            f"exported graph has inputs {inputs} and outputs {outputs}, expected {INPUT_NAME!r}, {names}"
        )
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if opsets.get("ai.onnx") != opset:
        raise EngineError(f"exported graph has opset {opsets.get('ai.onnx')}, asked for {opset}")
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_METADATA_KEY, spec.name
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(
    module: nn.Module,
    spec: ModelSpec,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Export `module` (the network of `spec`) to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = output_names_for(spec)
    module = module.eval()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    height, width = spec.input_size
    # Batch 2, not 1: a batch of one lets tracing fold the batch size into reshapes unnoticed.
    dummy = torch.randn(2, 3, height, width, device=device)

    errors: list[str] = []
    for dynamo in (False, True) if opset < 18 else (True, False):
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _torch_export(module, dummy, tmp, names, opset, dynamic_batch, dynamo)
            _finish(tmp, spec, names, opset)
            os.replace(tmp, path)
        except Exception as e:  # exporter failures come in many types; keep the reason and go on
            exporter = "dynamo" if dynamo else "TorchScript"
            errors.append(
                f"{exporter} exporter: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
            logger.debug("%s: %s ONNX export failed: %s", spec.name, exporter, e)
            continue
        finally:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}.data").unlink(missing_ok=True)
        logger.info(
            "%s: exported ONNX (opset %d, %s exporter) to %s",
            spec.name,
            opset,
            "dynamo" if dynamo else "TorchScript",
            path,
        )
        return path
    raise EngineError(f"{spec.name}: ONNX export failed:\n" + "\n".join(f"  - {e}" for e in errors))
