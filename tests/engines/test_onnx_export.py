"""ONNX export: names, dynamic batch, checker, and ONNX Runtime == PyTorch on the same input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from engine_test_models import TINY_DETECTOR, TINY_POSE, TinyDetector, TinyPose, needs_families, seeded

from rtpose.engines.onnx_export import SPEC_METADATA_KEY, export_onnx, output_names_for
from rtpose.engines.ort import OrtEngine
from rtpose.engines.torch_engine import TorchEngine
from rtpose.errors import EngineError

torch.set_num_threads(1)


def assert_engines_agree(module: torch.nn.Module, spec, onnx_path: Path, batch_sizes=(1, 3)) -> None:
    """OrtEngine and TorchEngine give the same outputs (max abs diff < 1e-4 x output scale)."""
    ort_engine = OrtEngine(onnx_path, threads=1)
    torch_engine = TorchEngine(module, output_names=output_names_for(spec))
    height, width = spec.input_size
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        x = rng.standard_normal((batch, 3, height, width)).astype(np.float32)
        ort_out = ort_engine(x)
        torch_out = torch_engine(x)
        assert tuple(ort_out) == tuple(torch_out) == output_names_for(spec)
        for name, reference in torch_out.items():
            reference = reference.numpy()
            assert ort_out[name].shape == reference.shape and reference.shape[0] == batch
            scale = max(float(np.abs(reference).max()), 1e-6)
            diff = float(np.abs(ort_out[name] - reference).max())
            assert diff < 1e-4 * scale, f"{spec.name} {name} batch {batch}: max diff {diff} (scale {scale})"


@pytest.mark.parametrize(("spec", "net"), [(TINY_POSE, TinyPose), (TINY_DETECTOR, TinyDetector)])
def test_export_names_metadata_and_parity(tmp_path: Path, spec, net, capsys) -> None:
    module = seeded(net())
    path = export_onnx(module, spec, tmp_path / "out" / "model.onnx")
    assert capsys.readouterr().out == ""  # exporter progress prints must not reach stdout (JSON goes there)

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert tuple(o.name for o in model.graph.output) == output_names_for(spec)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert {p.key: p.value for p in model.metadata_props}[SPEC_METADATA_KEY] == spec.name
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temporary left

    assert_engines_agree(module, spec, path)


def test_static_batch_export(tmp_path: Path) -> None:
    path = export_onnx(seeded(TinyPose()), TINY_POSE, tmp_path / "static.onnx", dynamic_batch=False)
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 2
    with pytest.raises(EngineError, match="does not fit"):
        OrtEngine(path)(np.zeros((1, 3, 32, 24), np.float32))


def test_output_names_come_from_the_family_when_given() -> None:
    from dataclasses import replace

    spec = replace(TINY_DETECTOR, extra={"output_names": ("heat", "offsets")})
    assert output_names_for(spec) == ("heat", "offsets")
    assert output_names_for(TINY_DETECTOR) == ("scores", "boxes")
    assert output_names_for(TINY_POSE) == ("simcc_x", "simcc_y")


def test_export_failure_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("cannot trace me")

    with pytest.raises(EngineError, match="ONNX export failed"):
        export_onnx(Broken(), TINY_POSE, tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []


def test_wrong_number_of_outputs_is_rejected(tmp_path: Path) -> None:
    class OneOutput(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    with pytest.raises(EngineError, match="outputs"):
        export_onnx(OneOutput(), TINY_POSE, tmp_path / "one.onnx")
    assert list(tmp_path.iterdir()) == []


@needs_families
@pytest.mark.parametrize("name", ["rtmpose-t", "rtmdet-nano"])
def test_real_networks_export_and_agree(tmp_path: Path, name: str) -> None:
    from rtpose.models.spec import get_spec

    spec = get_spec(name)
    module = seeded(spec.build())
    path = export_onnx(module, spec, tmp_path / f"{name}.onnx")
    onnx.checker.check_model(str(path))
    assert_engines_agree(module, spec, path)
