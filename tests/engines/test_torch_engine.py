"""TorchEngine: inference mode, tensors on the device, NumPy and torch input, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_test_models import TinyDetector, TinyPose, seeded

from rtpose.engines.torch_engine import TorchEngine
from rtpose.errors import EngineError


def test_numpy_and_torch_input_give_the_module_outputs() -> None:
    module = seeded(TinyPose())
    engine = TorchEngine(module, output_names=("simcc_x", "simcc_y"))
    assert engine.backend == "torch" and engine.device == "cpu"
    x = torch.randn(3, 3, 32, 24, generator=torch.Generator().manual_seed(1))
    out_torch = engine(x)
    out_numpy = engine(x.numpy())
    with torch.no_grad():
        expected = module(x)
    for outputs in (out_torch, out_numpy):
        assert list(outputs) == ["simcc_x", "simcc_y"]
        for got, want in zip(outputs.values(), expected, strict=True):
            assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
            assert torch.is_inference(got)
            torch.testing.assert_close(got, want)


def test_module_is_put_in_eval_mode() -> None:
    module = TinyPose().train()
    TorchEngine(module, output_names=("simcc_x", "simcc_y"))
    assert not module.training


def test_errors_are_clear() -> None:
    engine = TorchEngine(seeded(TinyDetector()), output_names=("scores",))
    with pytest.raises(EngineError, match="gave 2 outputs, expected 1"):
        engine(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(EngineError, match=r"\(N, C, H, W\)"):
        engine(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(EngineError, match="NumPy array or a torch tensor"):
        engine("image.jpg")
    with pytest.raises(EngineError, match="output"):
        TorchEngine(TinyDetector(), output_names=())
    with pytest.raises(EngineError, match="unknown device"):
        TorchEngine(TinyDetector(), device="tpu:7", output_names=("scores", "boxes"))
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            TorchEngine(TinyDetector(), device="cuda", output_names=("scores", "boxes"))


@pytest.mark.gpu
def test_cuda_engine_matches_cpu_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # TF32 convolutions would differ from the CPU by ~1e-3 by design; compare true FP32 here.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    module = seeded(TinyPose())
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 24)).astype(np.float32)
    cpu = TorchEngine(seeded(TinyPose()), output_names=("simcc_x", "simcc_y"))(x)
    gpu = TorchEngine(module, device="cuda", output_names=("simcc_x", "simcc_y"))(torch.from_numpy(x))
    for name in ("simcc_x", "simcc_y"):
        assert gpu[name].device.type == "cuda"
        np.testing.assert_allclose(gpu[name].cpu().numpy(), cpu[name].numpy(), atol=1e-4, rtol=1e-4)
