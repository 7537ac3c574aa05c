"""RTMPose: our network reproduces the logits the official MMPose code computed from the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.models import get_spec
from rtpose.models.loading import load_mmdeploy_onnx, load_pth
from rtpose.models.rtmpose import RTMPose

TOLERANCE = 1e-2  # float32 noise is ~1e-4; every architecture mistake moves the logits by > 1 (README)


@pytest.fixture(scope="module")
def official(models_dir: Path) -> dict[str, Path]:
    root = models_dir / "rtmpose_official_arch"
    return {
        "pth": root / "rtmpose-t_random_official_format.pth",
        "onnx": root / "rtmpose-t.onnx",
        "input": root / "rtmpose-t_input.npy",
        "x": root / "rtmpose-t_simcc_x.npy",
        "y": root / "rtmpose-t_simcc_y.npy",
    }


def _max_diffs(model: torch.nn.Module, official: dict[str, Path], device: str = "cpu") -> tuple[float, float]:
    x = torch.from_numpy(np.load(official["input"])).to(device)
    with torch.no_grad():
        simcc_x, simcc_y = model.to(device).eval()(x)
    return (
        float(np.abs(simcc_x.cpu().numpy() - np.load(official["x"])).max()),
        float(np.abs(simcc_y.cpu().numpy() - np.load(official["y"])).max()),
    )


def test_official_checkpoint_reproduces_official_logits(official: dict[str, Path]) -> None:
    model = RTMPose("t")
    load_pth(model, official["pth"])
    diff_x, diff_y = _max_diffs(model, official)
    print(f"rtmpose-t .pth: max abs diff simcc_x {diff_x:.3g}, simcc_y {diff_y:.3g}")
    assert diff_x <= TOLERANCE and diff_y <= TOLERANCE


def test_onnx_export_weights_reproduce_official_logits(official: dict[str, Path]) -> None:
    model = load_mmdeploy_onnx(RTMPose("t"), official["onnx"])
    diff_x, diff_y = _max_diffs(model, official)
    print(f"rtmpose-t .onnx -> fused torch: max abs diff simcc_x {diff_x:.3g}, simcc_y {diff_y:.3g}")
    assert diff_x <= TOLERANCE and diff_y <= TOLERANCE


def test_random_weights_are_far_from_official_logits(official: dict[str, Path]) -> None:
    # the comparison has teeth: an unloaded network of the right shape does not pass
    torch.manual_seed(0)
    diff_x, diff_y = _max_diffs(RTMPose("t"), official)
    assert max(diff_x, diff_y) > 1.0


@pytest.mark.parametrize(("arch", "size"), [("t", (256, 192)), ("t", (384, 288))])
def test_output_shapes_follow_input_size(arch: str, size: tuple[int, int]) -> None:
    model = RTMPose(arch, input_size=size, num_keypoints=17).eval()
    with torch.no_grad():
        simcc_x, simcc_y = model(torch.zeros(2, 3, *size))
    assert simcc_x.shape == (2, 17, size[1] * 2)
    assert simcc_y.shape == (2, 17, size[0] * 2)


def test_wrong_input_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expects"):
        RTMPose("t")(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match="multiples of 32"):
        RTMPose("t", input_size=(250, 192))
    with pytest.raises(ValueError, match="unknown RTMPose size"):
        RTMPose("xl")


@pytest.mark.parametrize("name", ["rtmpose-t", "rtmpose-s", "rtmpose-m", "rtmpose-l", "rtmpose-l-384x288"])
def test_specs_are_registered(name: str) -> None:
    spec = get_spec(name)
    assert spec.task == "pose-topdown" and spec.channel_order == "RGB"
    assert spec.mean == (123.675, 116.28, 103.53) and spec.std == (58.395, 57.12, 57.375)
    assert spec.extra["codec"] == "simcc" and spec.extra["simcc_split_ratio"] == 2.0
    if name != "rtmpose-l-384x288":
        (source,) = spec.weights
        assert source.url is not None and source.url.endswith(source.filename)
        assert source.sha256 is not None and source.sha256 in source.filename
        assert source.offline_names == (source.filename,)


@pytest.mark.gpu
def test_cuda_matches_official_logits(official: dict[str, Path]) -> None:
    model = RTMPose("t")
    load_pth(model, official["pth"])
    diff_x, diff_y = _max_diffs(model, official, device="cuda")
    print(f"rtmpose-t CUDA: max abs diff simcc_x {diff_x:.3g}, simcc_y {diff_y:.3g}")
    assert diff_x <= TOLERANCE and diff_y <= TOLERANCE


@pytest.mark.gpu
def test_cuda_matches_cpu_without_data() -> None:
    torch.manual_seed(0)
    model = RTMPose("t").eval()
    x = torch.randn(4, 3, 256, 192)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda())
    for c, g in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(g.cpu(), c, atol=1e-3, rtol=1e-3)
