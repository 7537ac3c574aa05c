"""create_engine / export_model: backends, the ONNX export cache, and ready-made ONNX files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from engine_test_models import TinyPose, needs_families, seeded

from rtpose.engines import factory as engine_factory
from rtpose.engines.factory import create_engine, export_model, onnx_cache_path
from rtpose.engines.onnx_export import export_onnx
from rtpose.engines.ort import OrtEngine
from rtpose.engines.torch_engine import TorchEngine
from rtpose.errors import EngineError, ModelNotFoundError
from rtpose.models.factory import load_model


def batch(height: int = 32, width: int = 24, n: int = 2) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((n, 3, height, width)).astype(np.float32)


def test_torch_backend_runs_the_loaded_weights(tiny_registry, tiny_pose_weights: Path) -> None:
    engine, spec = create_engine("tiny-pose", task="pose-topdown", backend="torch", weights=tiny_pose_weights)
    assert isinstance(engine, TorchEngine) and spec.name == "tiny-pose"
    reference = TinyPose()
    reference.load_state_dict(torch.load(tiny_pose_weights, weights_only=True))
    with torch.no_grad():
        expected_x, _ = reference.eval()(torch.from_numpy(batch()))
    torch.testing.assert_close(engine(batch())["simcc_x"], expected_x)


def test_ort_backend_exports_once_into_the_cache(
    tiny_registry, tiny_pose_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exports: list[Path] = []

    def counting_export(*args, **kwargs):
        exports.append(Path(args[2]))
        return export_onnx(*args, **kwargs)

    monkeypatch.setattr(engine_factory, "export_onnx", counting_export)
    engine, _ = create_engine("tiny-pose", task="pose-topdown", weights=tiny_pose_weights)
    expected_path = onnx_cache_path(load_model("tiny-pose", weights=tiny_pose_weights))
    assert expected_path.parent == tmp_path / "cache" / "onnx"
    assert isinstance(engine, OrtEngine) and engine.path == expected_path and exports == [expected_path]
    assert [p.name for p in expected_path.parent.iterdir()] == [expected_path.name]

    again, _ = create_engine("tiny-pose", task="pose-topdown", weights=tiny_pose_weights)
    assert again.path == expected_path and len(exports) == 1  # reused, not exported again

    torch_engine, _ = create_engine(
        "tiny-pose", task="pose-topdown", backend="torch", weights=tiny_pose_weights
    )
    np.testing.assert_allclose(again(batch())["simcc_y"], torch_engine(batch())["simcc_y"].numpy(), atol=1e-4)


def test_unusable_cached_onnx_is_exported_again(
    tiny_registry, tiny_pose_weights: Path, tmp_path: Path
) -> None:
    cached = onnx_cache_path(load_model("tiny-pose", weights=tiny_pose_weights))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated junk")
    engine, _ = create_engine("tiny-pose", task="pose-topdown", weights=tiny_pose_weights)
    assert engine.path == cached and engine(batch())["simcc_x"].shape == (2, 3, 48)
    onnx.checker.check_model(str(cached))


def test_onnx_cache_key_follows_weights_version_and_spec(
    tiny_registry, tiny_pose_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model("tiny-pose", weights=tiny_pose_weights)
    path = onnx_cache_path(loaded)
    assert path.name.startswith("tiny-pose-") and path == onnx_cache_path(loaded)
    other_weights = tmp_path / "other.pth"
    other_weights.write_bytes(tiny_pose_weights.read_bytes() + b"\0")
    assert onnx_cache_path(dataclasses.replace(loaded, weights=dataclasses.replace(
        loaded.weights, path=other_weights))) != path  # fmt: skip
    changed_spec = dataclasses.replace(loaded.spec, extra={**loaded.spec.extra, "int8_emulation": True})
    assert onnx_cache_path(dataclasses.replace(loaded, spec=changed_spec)) != path
    monkeypatch.setattr(engine_factory, "__version__", "9.9.9")
    assert onnx_cache_path(loaded) != path


def test_onnx_with_our_output_names_is_used_directly(tiny_registry, tmp_path: Path) -> None:
    ours = export_onnx(seeded(TinyPose()), tiny_registry["tiny-pose"], tmp_path / "mine.onnx")
    engine, spec = create_engine(ours, task="pose-topdown")
    assert spec.name == "tiny-pose" and engine.path == ours
    assert not (tmp_path / "cache" / "onnx").exists()
    engine, spec = create_engine("tiny-pose", task="pose-topdown", weights=ours)
    assert spec.name == "tiny-pose" and engine.path == ours


def test_onnx_found_by_names_and_size_without_our_metadata(tiny_registry, tmp_path: Path) -> None:
    ours = export_onnx(seeded(TinyPose()), tiny_registry["tiny-pose"], tmp_path / "plain.onnx")
    model = onnx.load(str(ours))
    del model.metadata_props[:]
    onnx.save(model, str(ours))
    engine, spec = create_engine(ours, task="pose-topdown")
    assert spec.name == "tiny-pose" and engine.path == ours


def test_backend_and_device_errors(tiny_registry, tiny_pose_weights: Path) -> None:
    with pytest.raises(EngineError, match="unknown backend"):
        create_engine("tiny-pose", task="pose-topdown", backend="tensorrt", weights=tiny_pose_weights)
    with pytest.raises(EngineError, match="CPU only"):
        create_engine(
            "tiny-pose", task="pose-topdown", backend="ort", device="cuda", weights=tiny_pose_weights
        )
    with pytest.raises(ModelNotFoundError, match="not a detector model"):
        create_engine("tiny-pose", task="detector", backend="torch", weights=tiny_pose_weights)
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        create_engine("no-such-model", task="detector")


def test_export_model_writes_a_checked_onnx(tiny_registry, tiny_det_weights: Path, tmp_path: Path) -> None:
    out = export_model("tiny-det", tmp_path / "det.onnx", task="detector", weights=tiny_det_weights)
    onnx.checker.check_model(str(out))
    engine = OrtEngine(out)
    assert engine.output_names == ("scores", "boxes")
    scores = engine(batch(32, 32, n=3))["scores"]
    assert scores.shape == (3, 64, 1) and np.all((scores >= 0) & (scores <= 1))


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_cpu(tiny_registry, tiny_pose_weights: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu, _ = create_engine("tiny-pose", task="pose-topdown", backend="torch", weights=tiny_pose_weights)
    gpu, _ = create_engine(
        "tiny-pose", task="pose-topdown", backend="torch", device="cuda", weights=tiny_pose_weights
    )
    x = batch(n=4)
    for name, value in gpu(x).items():
        assert value.device.type == "cuda"
        np.testing.assert_allclose(value.cpu().numpy(), cpu(x)[name].numpy(), atol=1e-4, rtol=1e-4)


@needs_families
def test_mmdeploy_rtmdet_goes_through_import_and_export(models_dir: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RTPOSE_CACHE", str(tmp_path / "cache"))
    mmdeploy_file = models_dir / "rtmdet_nano_person_mmdeploy" / "end2end.onnx"
    engine, spec = create_engine(mmdeploy_file, task="detector")
    assert spec.name == "rtmdet-nano"
    assert engine.path.parent == tmp_path / "cache" / "onnx"
    assert engine.output_names == ("scores", "boxes")
    height, width = spec.input_size
    x = np.random.default_rng(0).standard_normal((2, 3, height, width)).astype(np.float32)
    torch_engine, _ = create_engine(mmdeploy_file, task="detector", backend="torch")
    for name, reference in torch_engine(x).items():
        reference = reference.numpy()
        assert float(np.abs(engine(x)[name] - reference).max()) < 1e-4 * float(np.abs(reference).max())


@needs_families
def test_official_onnx_with_our_names_runs_directly(models_dir: Path, tmp_path, monkeypatch) -> None:
    """rtmpose-t.onnx (official export: input/simcc_x/simcc_y) is run as it is, and its spec found."""
    monkeypatch.setenv("RTPOSE_CACHE", str(tmp_path / "cache"))
    folder = models_dir / "rtmpose_official_arch"
    for name_or_file, weights in (
        (folder / "rtmpose-t.onnx", None),
        ("rtmpose-t", folder / "rtmpose-t.onnx"),
    ):
        engine, spec = create_engine(name_or_file, task="pose-topdown", weights=weights)
        assert spec.name == "rtmpose-t" and engine.path == folder / "rtmpose-t.onnx"
        outputs = engine(np.load(folder / "rtmpose-t_input.npy"))
        for output in ("simcc_x", "simcc_y"):
            official = np.load(folder / f"rtmpose-t_{output}.npy")
            assert float(np.abs(outputs[output] - official).max()) <= 1e-3
    assert not (tmp_path / "cache" / "onnx").exists()
