"""load_model / describe_zoo: names and files -> ready networks, loader dispatch, spec detection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rtpose.errors import EngineError, ModelNotFoundError, WeightsError
from rtpose.models import factory
from rtpose.models import spec as spec_module
from rtpose.models.factory import describe_zoo, load_model, register_loader
from rtpose.models.spec import ModelSpec, WeightSource

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Two outputs like a detector; `width` changes every parameter shape."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 5, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.head(self.bn(self.conv(x)).relu()).flatten(2).transpose(1, 2)
        return raw[..., :1].sigmoid(), raw[..., 1:]


def tiny_spec(name: str, width: int, task: str = "detector", **kwargs) -> ModelSpec:
    return ModelSpec(
        name=name, task=task, family="tiny", arch=name, input_size=(16, 16), mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), channel_order="BGR", build=lambda: TinyNet(width), params_m=0.001, **kwargs,
    )  # fmt: skip


def load_state_dict_file(model: nn.Module, path: Path) -> None:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, ModelSpec]]:
    """A private registry (wide model first) and loader table, cache and no offline dir."""
    specs = {
        "tiny-wide": tiny_spec("tiny-wide", 8, weights=(WeightSource("tiny-wide.pth", "pth", sha256=None),)),
        "tiny-narrow": tiny_spec("tiny-narrow", 4, weights=(WeightSource("tiny-narrow.pth", "pth"),)),
        "tiny-pose": tiny_spec("tiny-pose", 4, task="pose-topdown"),
    }
    monkeypatch.setattr(spec_module, "_REGISTRY", specs)
    monkeypatch.setattr(spec_module, "_load_families", lambda: None)
    monkeypatch.setattr(factory, "_LOADERS", dict(factory._LOADERS))
    register_loader("pth", load_state_dict_file, family="tiny")
    monkeypatch.setenv("RTPOSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RTPOSE_OFFLINE_DIR", raising=False)
    yield specs


def save_weights(path: Path, width: int, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(width)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), path)
    return net.eval()


def outputs(net: nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return net(x)[1]


def test_name_with_explicit_weights(registry, tmp_path: Path) -> None:
    original = save_weights(tmp_path / "w.pth", width=8)
    loaded = load_model("tiny-wide", weights=tmp_path / "w.pth")
    assert loaded.spec.name == "tiny-wide" and loaded.weights.origin == "explicit"
    assert not loaded.module.training
    torch.testing.assert_close(outputs(loaded.module), outputs(original))


def test_name_resolved_from_the_offline_dir(registry, tmp_path: Path, monkeypatch) -> None:
    offline = tmp_path / "offline"
    offline.mkdir()
    original = save_weights(offline / "tiny-narrow.pth", width=4, seed=3)
    monkeypatch.setenv("RTPOSE_OFFLINE_DIR", str(offline))
    loaded = load_model("tiny-narrow", task="detector")
    assert loaded.weights.origin == "offline" and loaded.weights.path == offline / "tiny-narrow.pth"
    torch.testing.assert_close(outputs(loaded.module), outputs(original))


def test_weight_file_finds_its_spec_by_shapes(registry, tmp_path: Path, caplog) -> None:
    narrow = save_weights(tmp_path / "narrow.pth", width=4)
    wide = save_weights(tmp_path / "wide.pth", width=8)
    loaded = load_model(tmp_path / "narrow.pth", task="detector")
    assert loaded.spec.name == "tiny-narrow" and loaded.weights.format == "pth"
    torch.testing.assert_close(outputs(loaded.module), outputs(narrow))
    loaded = load_model(str(tmp_path / "wide.pth"))
    assert loaded.spec.name == "tiny-wide"
    torch.testing.assert_close(outputs(loaded.module), outputs(wide))


def test_file_no_spec_accepts_lists_what_was_tried(registry, tmp_path: Path) -> None:
    save_weights(tmp_path / "odd.pth", width=6)
    with pytest.raises(ModelNotFoundError) as info:
        load_model(tmp_path / "odd.pth", task="detector")
    message = str(info.value)
    assert (
        "tiny-wide: parameter shapes differ" in message and "tiny-narrow: parameter shapes differ" in message
    )
    assert "tiny-pose" not in message  # another task
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pth")
    with pytest.raises(ModelNotFoundError, match="weight file already"):
        load_model(tmp_path / "odd.pth", weights=tmp_path / "odd.pth")


def test_family_loader_dispatch_for_other_formats(registry, tmp_path: Path) -> None:
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\x00tflite")
    calls: list[tuple[str, Path]] = []

    def tflite_loader(model: nn.Module, path: Path) -> nn.Module:
        calls.append((type(model).__name__, path))
        replacement = TinyNet(2)  # a loader may return a different module
        replacement.train()
        return replacement

    with pytest.raises(ModelNotFoundError, match="no tflite loader"):
        load_model(tflite, task="pose-topdown")
    register_loader("tflite", tflite_loader, family="tiny")
    loaded = load_model(tflite, task="pose-topdown")
    assert calls == [("TinyNet", tflite)] and loaded.spec.name == "tiny-pose"
    assert loaded.weights.format == "tflite" and not loaded.module.training
    assert loaded.module.conv.out_channels == 2


def test_unfit_or_corrupt_weights_by_name_are_weights_errors(registry, tmp_path: Path) -> None:
    save_weights(tmp_path / "narrow.pth", width=4)
    with pytest.raises(WeightsError, match="does not fit tiny-wide"):
        load_model("tiny-wide", weights=tmp_path / "narrow.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth does not fit tiny-wide"):
        load_model("tiny-wide", weights=tmp_path / "junk.pth")


def test_name_errors(registry, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'; known models: tiny-narrow"):
        load_model("nope")
    with pytest.raises(ModelNotFoundError, match="tiny-pose is a pose-topdown model, not a detector model"):
        load_model("tiny-pose", task="detector")
    with pytest.raises(ModelNotFoundError, match="RTPOSE_OFFLINE_DIR not set"):
        load_model("tiny-narrow")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            load_model("tiny-narrow", device="cuda")


def test_describe_zoo(registry, tmp_path: Path, monkeypatch) -> None:
    cached = tmp_path / "cache" / "weights" / "tiny-wide.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    rows = {row["name"]: row for row in describe_zoo()}
    assert set(rows) == {"tiny-wide", "tiny-narrow", "tiny-pose"}
    # tiny-wide has no URL, so its cache file is not looked for: only downloads fill the cache
    assert rows["tiny-wide"]["available"] is None
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "tiny-narrow.pth").write_bytes(b"x")
    monkeypatch.setenv("RTPOSE_OFFLINE_DIR", str(offline))
    rows = {row["name"]: row for row in describe_zoo(task="detector")}
    assert rows["tiny-narrow"]["available"] == "offline"
    assert rows["tiny-narrow"]["path"] == str(offline / "tiny-narrow.pth")
    assert rows["tiny-narrow"]["input_size"] == (16, 16) and rows["tiny-narrow"]["params_m"] == 0.001
    assert "tiny-pose" not in rows


# --- the real networks (written in parallel; skipped until they exist) ----------------------------


def _real_families() -> bool:
    try:
        from rtpose.models.loading import load_mmdeploy_onnx, load_pth  # noqa: F401
        from rtpose.models.spec import get_spec

        get_spec("rtmpose-t")
        get_spec("rtmdet-nano")
    except (ImportError, ModelNotFoundError):
        return False
    return True


needs_real = pytest.mark.skipif(not _real_families(), reason="rtmpose/rtmdet families not available yet")


@needs_real
def test_official_checkpoint_file_is_recognised_as_rtmpose_t(models_dir: Path) -> None:
    folder = models_dir / "rtmpose_official_arch"
    loaded = load_model(folder / "rtmpose-t_random_official_format.pth", task="pose-topdown")
    assert loaded.spec.name == "rtmpose-t"
    x = torch.from_numpy(np.load(folder / "rtmpose-t_input.npy"))
    with torch.no_grad():
        simcc_x, simcc_y = loaded.module(x)
    assert float(np.abs(simcc_x.numpy() - np.load(folder / "rtmpose-t_simcc_x.npy")).max()) <= 1e-2
    assert float(np.abs(simcc_y.numpy() - np.load(folder / "rtmpose-t_simcc_y.npy")).max()) <= 1e-2


@needs_real
def test_rtmdet_nano_from_the_offline_dir(models_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RTPOSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RTPOSE_OFFLINE_DIR", str(models_dir))
    loaded = load_model("rtmdet-nano", task="detector", download=False)
    assert loaded.weights.origin == "offline" and loaded.weights.format == "onnx-mmdeploy"
    assert loaded.weights.path == models_dir / "rtmdet_nano_person_mmdeploy" / "end2end.onnx"
    scores, boxes = loaded.module(torch.zeros(1, 3, *loaded.spec.input_size))
    assert scores.shape[:2] == boxes.shape[:2] and boxes.shape[-1] == 4
