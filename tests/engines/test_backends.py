"""create_engine's backends (ort, torch, compiled, auto), precisions, and benchmark-only random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_test_models import TinyPose

from rtpose.engines.factory import create_engine, random_model, resolve_backend
from rtpose.engines.ort import OrtEngine
from rtpose.engines.torch_engine import TorchEngine
from rtpose.errors import EngineError, ModelNotFoundError


def batch(n: int = 2) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, 3, 32, 24)).astype(np.float32)


def test_auto_is_onnx_runtime_on_the_cpu(tiny_registry, tiny_pose_weights: Path) -> None:
    engine, _ = create_engine("tiny-pose", task="pose-topdown", backend="auto", weights=tiny_pose_weights)
    assert isinstance(engine, OrtEngine)
    assert resolve_backend("auto", "cuda") == "compiled" and resolve_backend("auto", "cpu") == "ort"


def test_bad_requests_are_engine_errors(tiny_registry, tiny_pose_weights: Path) -> None:
    options = {"task": "pose-topdown", "weights": tiny_pose_weights}
    with pytest.raises(EngineError, match="unknown backend 'tensorrt'"):
        create_engine("tiny-pose", backend="tensorrt", **options)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="unknown precision 'int4'"):
        create_engine("tiny-pose", precision="int4", **options)  # type: ignore[arg-type]
    for backend in ("ort", "torch", "auto"):
        with pytest.raises(EngineError, match="precision fp16 needs a compiled engine"):
            create_engine("tiny-pose", backend=backend, precision="fp16", **options)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="max_batch must be at least 1"):
        create_engine("tiny-pose", backend="compiled", max_batch=0, **options)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        for backend in ("compiled", "auto", "torch"):
            with pytest.raises(EngineError, match="CUDA is not available"):
                create_engine("tiny-pose", backend=backend, device="cuda", **options)  # type: ignore[arg-type]


def test_random_weights_are_seeded_and_leave_the_callers_rng_alone(tiny_registry) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first, spec, weights_id = random_model("tiny-pose", "pose-topdown")
    assert spec.name == "tiny-pose"
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    second, _, second_id = random_model("tiny-pose", "pose-topdown")
    assert weights_id == second_id and weights_id.startswith("init-seed0-")
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ModelNotFoundError, match="not a detector"):
        random_model("tiny-pose", "detector")
    with pytest.raises(ModelNotFoundError, match="zoo model name"):
        random_model("weights/some.pth", "pose-topdown")


def test_random_weights_through_ort_and_torch_agree(tiny_registry) -> None:
    ort_engine, spec = create_engine("tiny-pose", task="pose-topdown", backend="ort", weights="random")
    torch_engine, _ = create_engine("tiny-pose", task="pose-topdown", backend="torch", weights="random")
    assert isinstance(ort_engine, OrtEngine) and isinstance(torch_engine, TorchEngine)
    assert spec.name == "tiny-pose"
    np.testing.assert_allclose(
        ort_engine(batch())["simcc_x"], torch_engine(batch())["simcc_x"].numpy(), rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_compiled_backend_on_the_cpu_matches_eager(tiny_registry, tiny_pose_weights: Path) -> None:
    """AOTInductor on the CPU (gcc, ~40 s here): the same engine the pipelines get with backend compiled."""
    from rtpose.engines.compiled import CompiledEngine

    engine, spec = create_engine(
        "tiny-pose", task="pose-topdown", backend="compiled", weights=tiny_pose_weights, max_batch=4,
        progress=False,
    )  # fmt: skip
    assert spec.name == "tiny-pose"
    assert isinstance(engine, CompiledEngine) and engine.device == "cpu" and engine.precision == "fp32"
    reference = TinyPose()
    reference.load_state_dict(torch.load(tiny_pose_weights, weights_only=True))
    with torch.no_grad():
        expected_x, expected_y = reference.eval()(torch.from_numpy(batch(3)))
    outputs = engine(batch(3))
    torch.testing.assert_close(outputs["simcc_x"], expected_x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["simcc_y"], expected_y, rtol=1e-4, atol=1e-4)
    again, _ = create_engine(
        "tiny-pose", task="pose-topdown", backend="compiled", weights=tiny_pose_weights, max_batch=4,
        progress=False,
    )  # fmt: skip
    assert again.path == engine.path  # found in the cache, not built again  # type: ignore[attr-defined]
