"""`rtpose build` and the new runtime options (--backend compiled|auto, --precision)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rtpose.cli import main
from rtpose.engines import compiled
from rtpose.engines.compiled import EngineBuild
from rtpose.models import factory as model_factory
from rtpose.models import spec as spec_module
from rtpose.models.spec import ModelSpec, WeightSource


@pytest.fixture(autouse=True)
def offline_env(monkeypatch: pytest.MonkeyPatch, models_dir: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("RTPOSE_OFFLINE_DIR", str(models_dir))
    monkeypatch.setenv("RTPOSE_CACHE", str(tmp_path / "cache"))


def test_help_lists_build_and_the_new_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--weights", "--task", "--device", "--precision", "--max-batch", "--force"):
        assert option in out
    assert main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    assert "compiled" in out and "--precision" in out


def test_build_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"x")
    assert main(["build", str(weights), "--device", "cpu"]) == 2
    assert "--task is needed" in capsys.readouterr().err
    assert main(["build", "rtmdet-nano", "--max-batch", "0", "--device", "cpu"]) == 2
    assert main(["build", "rtmdet-nano", "--precision", "int8"]) == 2
    assert main(["build", "no-such-model", "--device", "cpu"]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_build_for_cuda_without_a_gpu_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "rtmdet-nano"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_build_passes_the_request_and_prints_path_state_and_stages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The compiler is replaced by a recorder: this checks what the command asks for and prints."""
    calls: list[dict] = []

    def recording_ensure_engine(module: nn.Module, spec: ModelSpec, **options) -> EngineBuild:
        calls.append({"spec": spec.name, "module": type(module).__name__, **options})
        built = options["force"] or len(calls) == 1
        stages = {"fold conv+bn": 0.5, "compile": 12.25} if built else {}
        return EngineBuild(tmp_path / "engine.pt2", built=built, reason="forced" if built else "cached",
                           stage_seconds=stages)  # fmt: skip

    monkeypatch.setattr(compiled, "ensure_engine", recording_ensure_engine)
    args = ["build", "rtmdet-nano", "--device", "cpu", "--precision", "bf16", "--max-batch", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"engine: {tmp_path / 'engine.pt2'}" in out and "state: built" in out
    assert "compile: 12.2 s" in out or "compile: 12.3 s" in out
    assert main(args) == 0
    assert "state: reused (cached)" in capsys.readouterr().out
    assert main([*args, "--force"]) == 0
    assert "state: built (forced)" in capsys.readouterr().out
    first = calls[0]
    assert first["spec"] == "rtmdet-nano" and first["module"] == "RTMDet"
    assert (first["device"], first["precision"], first["max_batch"], first["force"]) == (
        "cpu",
        "bf16",
        8,
        False,
    )
    assert first["weights_id"].startswith("sha256:")  # the same id `create_engine(backend="compiled")` uses
    assert calls[2]["force"] is True


def test_reduced_precision_without_a_compiled_engine_is_refused(
    coco_val: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    image = coco_val[1] / "000000196141.jpg"
    code = main(["detect", str(image), "--device", "cpu", "--backend", "ort", "--precision", "fp16"])
    assert code == 1
    assert "precision fp16 needs a compiled engine" in capsys.readouterr().err


# -- a real CPU build ----------------------------------------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head_x = nn.Linear(4 * 8 * 6, 2 * 12 * 2)
        self.head_y = nn.Linear(4 * 8 * 6, 2 * 16 * 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.head_x(features).unflatten(1, (2, -1)), self.head_y(features).unflatten(1, (2, -1))


TINY = ModelSpec(
    name="tiny-cli-pose", task="pose-topdown", family="tinycli", arch="tiny", input_size=(16, 12),
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="RGB", build=TinyNet,
    weights=(WeightSource(filename="tiny.pth", format="pth"),), extra={"codec": "simcc"},
)  # fmt: skip


def _load(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


@pytest.mark.slow
def test_real_cpu_build_then_reuse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AOTInductor on the CPU (~40 s here): built once, then found in the cache."""
    monkeypatch.setattr(spec_module, "_REGISTRY", {TINY.name: TINY})
    monkeypatch.setattr(spec_module, "_load_families", lambda: None)
    monkeypatch.setitem(model_factory._LOADERS, ("tinycli", "pth"), _load)
    weights = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    torch.save(TinyNet().state_dict(), weights)
    args = ["build", TINY.name, "--weights", str(weights), "--device", "cpu", "--precision", "fp32",
            "--max-batch", "2"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    path = Path(out.split("engine: ", 1)[1].splitlines()[0])
    assert path.is_file() and path.suffix == ".pt2" and "state: built" in out and "compile:" in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"engine: {path}" in out and "state: reused" in out


def test_build_int8_quantises_the_export_for_onnx_runtime(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", "rtmdet-nano", "--precision", "int8", "--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err
    calib = data_dir / "coco" / "train2017"
    build = ["build", "rtmdet-nano", "--precision", "int8", "--device", "cpu", "--calib", str(calib)]
    assert main(build) == 0
    out = capsys.readouterr().out
    engine = Path(out.split("engine: ")[1].split(" ")[0])
    assert engine.name.endswith(".int8.onnx") and engine.is_file()
    assert "000000" in engine.with_suffix(".json").read_text()  # the calibration images are recorded
    built = engine.stat().st_mtime_ns
    image = sorted((data_dir / "coco" / "val2017").glob("*.jpg"))[0]
    assert main(["detect", str(image), "--precision", "int8", "--device", "cpu"]) == 0
    assert engine.stat().st_mtime_ns == built  # detect ran the engine that was built, no new quantisation
