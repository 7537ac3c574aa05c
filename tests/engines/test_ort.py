"""OrtEngine: names from the model, NumPy and torch input, clear errors for bad files and inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_test_models import TINY_POSE, TinyPose, seeded

from rtpose.engines.onnx_export import export_onnx
from rtpose.engines.ort import OrtEngine
from rtpose.errors import EngineError


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    module = seeded(TinyPose())
    path = export_onnx(module, TINY_POSE, tmp_path_factory.mktemp("ort") / "tiny.onnx")
    return path, module


def test_outputs_keyed_by_model_names_for_numpy_and_torch_input(tiny_onnx) -> None:
    path, module = tiny_onnx
    engine = OrtEngine(path, threads=1)
    assert engine.backend == "ort" and engine.device == "cpu"
    assert engine.input_name == "input" and engine.output_names == ("simcc_x", "simcc_y")

    x = torch.randn(2, 3, 32, 24, generator=torch.Generator().manual_seed(3))
    from_torch = engine(x)
    from_numpy = engine(x.numpy().astype(np.float64))  # converted to float32
    with torch.no_grad():
        reference_x, reference_y = module(x)
    for outputs in (from_torch, from_numpy):
        assert isinstance(outputs["simcc_x"], np.ndarray)
        assert outputs["simcc_x"].shape == (2, 3, 48) and outputs["simcc_y"].shape == (2, 3, 64)
        np.testing.assert_allclose(outputs["simcc_x"], reference_x.numpy(), atol=1e-4)
        np.testing.assert_allclose(outputs["simcc_y"], reference_y.numpy(), atol=1e-4)


def test_wrong_input_shapes_and_types_are_clear_errors(tiny_onnx) -> None:
    engine = OrtEngine(tiny_onnx[0], threads=1)
    with pytest.raises(EngineError, match=r"\(N, C, H, W\)"):
        engine(np.zeros((3, 32, 24), np.float32))
    with pytest.raises(EngineError, match="does not fit"):
        engine(np.zeros((1, 3, 64, 24), np.float32))
    with pytest.raises(EngineError, match="NumPy array or a torch tensor"):
        engine([[1.0]])


def test_missing_corrupt_file_and_unknown_provider(tmp_path: Path, tiny_onnx) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        OrtEngine(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(EngineError, match="cannot load"):
        OrtEngine(garbage)
    with pytest.raises(EngineError, match="not available"):
        OrtEngine(tiny_onnx[0], providers=("NoSuchExecutionProvider",))


def test_idle_threads_spin_unless_asked_not_to(tiny_onnx) -> None:
    from rtpose.engines.ort import spinning

    path, _ = tiny_onnx

    def spins(engine: OrtEngine) -> str:
        options = engine.session.get_session_options()
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    assert spins(OrtEngine(path)) == "1"  # ONNX Runtime's default
    assert spins(OrtEngine(path, spin=False)) == "0"
    with spinning(False):
        quiet = OrtEngine(path)
        assert spins(OrtEngine(path, spin=True)) == "1"  # an explicit choice wins
    assert spins(quiet) == "0" and spins(OrtEngine(path)) == "1"  # the block ended
    x = np.zeros((1, 3, 32, 24), np.float32)
    np.testing.assert_array_equal(quiet(x)["simcc_x"], OrtEngine(path)(x)["simcc_x"])
