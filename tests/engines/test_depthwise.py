"""Depthwise convolution + bias + SiLU in one Triton kernel (`engines.depthwise`): the kernel against
`nn.Conv2d` (in Triton's CPU interpreter, and on the GPU), the module swap, and compiled CUDA engines
built with it against the eager network."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.triton_interpreter import needs_triton, run_in_interpreter
from torch import nn

from rtpose.engines import compiled, depthwise
from rtpose.engines.compiled import load_compiled_engine, weights_digest
from rtpose.engines.depthwise import FusedDepthwiseConv2d, fuse_depthwise_convs, is_fusable_depthwise
from rtpose.engines.engine_cache import sidecar_path
from rtpose.engines.fold import fold_batchnorm
from rtpose.errors import EngineError
from rtpose.models.layers import ConvModule
from rtpose.models.spec import ModelSpec, get_spec

#: kernel, stride, padding, dilation, bias, silu, channels, height, width, batch
CASES = [
    (5, 1, 2, 1, True, True, 48, 13, 10, 2), (3, 2, 1, 1, True, False, 24, 9, 7, 3),
    (3, 1, 1, 1, False, True, 96, 8, 6, 1), (5, 2, 2, 1, True, True, 40, 11, 11, 2),
    (3, 1, 2, 2, True, False, 16, 6, 5, 1), ((3, 5), (1, 2), (1, 2), 1, True, True, 64, 7, 9, 2),
    (3, 1, 1, 1, True, True, 768, 8, 6, 3),
]  # fmt: skip


def compare_kernel_with_conv(device: str, dtype: torch.dtype, tolerance: float) -> None:
    """Our kernel against the library convolution (+ SiLU) on every case, channels_last and NCHW inputs."""
    torch.manual_seed(0)
    for kernel, stride, padding, dilation, bias, silu, channels, height, width, batch in CASES:
        conv = nn.Conv2d(channels, channels, kernel, stride, padding, dilation, groups=channels, bias=bias)
        x = torch.randn(batch, channels, height, width)
        want = conv(x)
        want = F.silu(want) if silu else want
        fused = FusedDepthwiseConv2d(conv, silu).to(device, dtype)
        for layout in (torch.channels_last, torch.contiguous_format):
            got = fused(x.to(device, dtype).contiguous(memory_format=layout))
            diff = float((got.float().cpu() - want).abs().max())
            assert got.shape == want.shape and diff <= tolerance, (kernel, stride, channels, layout, diff)


def test_the_torch_path_equals_the_library_convolution() -> None:
    compare_kernel_with_conv("cpu", torch.float32, 1e-6)


@needs_triton
def test_the_kernel_equals_the_library_convolution_in_the_interpreter() -> None:
    run_in_interpreter(
        "import torch\n"
        "from rtpose.engines import depthwise\n"
        "from tests.engines.test_depthwise import compare_kernel_with_conv\n"
        "depthwise.FusedDepthwiseConv2d.forward = lambda self, x: depthwise.depthwise_conv2d(\n"
        "    x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.silu)\n"
        "compare_kernel_with_conv('cpu', torch.float32, 2e-6)\n"
    )


@pytest.mark.gpu
def test_the_kernel_equals_the_library_convolution_on_the_gpu() -> None:
    compare_kernel_with_conv("cuda", torch.float32, 2e-5)
    compare_kernel_with_conv("cuda", torch.float16, 2e-2)


def test_only_depthwise_zero_padded_convolutions_are_fusable() -> None:
    assert is_fusable_depthwise(nn.Conv2d(8, 8, 3, padding=1, groups=8))
    assert not is_fusable_depthwise(nn.Conv2d(8, 8, 3, padding=1))  # dense
    assert not is_fusable_depthwise(nn.Conv2d(8, 16, 3, padding=1, groups=8))  # channel multiplier 2
    assert not is_fusable_depthwise(nn.Conv2d(8, 8, 3, padding=1, groups=4))  # grouped
    assert not is_fusable_depthwise(nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"))
    assert not is_fusable_depthwise(nn.Conv2d(8, 8, 3, padding="same", groups=8))
    assert not is_fusable_depthwise(nn.Conv2d(8, 8, 9, padding=4, groups=8))  # 81 taps
    assert not is_fusable_depthwise(nn.Conv1d(8, 8, 3, padding=1, groups=8))
    with pytest.raises(ValueError, match="depthwise"):
        FusedDepthwiseConv2d(nn.Conv2d(8, 8, 3))


def test_folded_conv_modules_are_fused_with_their_silu_and_keep_outputs() -> None:
    spec = get_spec("rtmpose-t")
    torch.manual_seed(0)
    network = spec.build().eval()
    x = torch.randn(2, 3, *spec.input_size)
    folded, _ = fold_batchnorm(network, x[:1])
    unfolded_copy = copy.deepcopy(network)
    assert fuse_depthwise_convs(unfolded_copy) == 4  # BN not folded: only the bare convolutions
    assert sum(isinstance(m, FusedDepthwiseConv2d) and not m.silu for m in unfolded_copy.modules()) == 4
    with torch.no_grad():
        want = folded(x)
        assert fuse_depthwise_convs(folded) == 4  # CSPNeXt-t: one 5x5 depthwise per block
        got = folded(x)
    assert sum(isinstance(m, FusedDepthwiseConv2d) and m.silu for m in folded.modules()) == 4
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


class DepthwiseNet(nn.Module):
    """Dense and depthwise convolutions, strided and not, bare and in a `ConvModule` (with BatchNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.blocks = nn.Sequential(
            ConvModule(16, 16, 3, groups=16),
            nn.Conv2d(16, 16, 5, 1, 2, groups=16), nn.SiLU(), nn.Conv2d(16, 32, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), nn.SiLU(),
        )  # fmt: skip
        self.head_x = nn.Linear(32 * 4 * 3, 24)
        self.head_y = nn.Linear(32 * 4 * 3, 32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.blocks(self.stem(x)).flatten(1)
        return self.head_x(y), self.head_y(y)


INPUT_SIZE = (16, 12)
SPEC = ModelSpec(
    name="tiny-depthwise", task="pose-topdown", family="tiny", arch="tiny", input_size=INPUT_SIZE,
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="RGB", build=DepthwiseNet,
    extra={"codec": "simcc"},
)  # fmt: skip


def test_bare_depthwise_convolutions_are_fused_and_keep_outputs() -> None:
    torch.manual_seed(0)
    net = DepthwiseNet().eval()
    x = torch.randn(3, 3, *INPUT_SIZE)
    with torch.no_grad():
        want = net(x)
        assert fuse_depthwise_convs(net) == 3
        got = net(x)
    assert sum(isinstance(m, FusedDepthwiseConv2d) for m in net.modules()) == 3
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_the_depthwise_choice_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTPOSE_DEPTHWISE", raising=False)
    assert compiled.depthwise_choice(torch.device("cpu")) == "library"
    monkeypatch.setenv("RTPOSE_DEPTHWISE", "triton")
    assert compiled.depthwise_choice(torch.device("cpu")) == "library"  # CPU engines keep the library
    monkeypatch.setenv("RTPOSE_DEPTHWISE", "winograd")
    with pytest.raises(EngineError, match="RTPOSE_DEPTHWISE"):
        compiled.depthwise_choice(torch.device("cpu"))


def test_cuda_builds_use_our_kernel_except_for_int8_emulations(monkeypatch: pytest.MonkeyPatch) -> None:
    """MoveNet's INT8 emulation runs its own integer convolution on `conv.groups` and the integer weights:
    its convolutions must stay `nn.Conv2d`."""
    monkeypatch.setattr(depthwise, "KERNEL_AVAILABLE", True)  # as where Triton is installed
    monkeypatch.delenv("RTPOSE_DEPTHWISE", raising=False)
    cuda = torch.device("cuda", 0)
    assert compiled.depthwise_choice(cuda) == compiled.DEPTHWISE_CUDA == "split"
    assert compiled.depthwise_choice(cuda, "int8-emulation") == "library"
    monkeypatch.setenv("RTPOSE_DEPTHWISE", "library")
    assert compiled.depthwise_choice(cuda) == "library"
    monkeypatch.setattr(depthwise, "KERNEL_AVAILABLE", False)
    monkeypatch.delenv("RTPOSE_DEPTHWISE")
    assert compiled.depthwise_choice(cuda) == "library"  # no Triton, no kernel


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("choice", "precision", "batches"),
    [("triton", "fp32", (1, 3, 4)), ("triton", "fp16", (1, 3, 4)), ("split", "fp16", (1, 16, 17, 32))],
)
def test_gpu_engine_with_our_depthwise_kernel_matches_eager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: str, precision: str, batches: tuple[int, ...]
) -> None:
    """Our kernel in an engine; "split": ours up to 16 crops and cuDNN above, in one engine."""
    monkeypatch.setenv("RTPOSE_DEPTHWISE", choice)
    torch.manual_seed(0)
    net = DepthwiseNet().eval()
    bn = net.blocks[0].bn
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    engine = load_compiled_engine(
        net, SPEC, weights_id=weights_digest(net), device="cuda", precision=precision,  # type: ignore[arg-type]
        max_batch=batches[-1], cache_dir=tmp_path, progress=False,
    )  # fmt: skip
    sidecar = json.loads(sidecar_path(engine.path).read_text())
    assert sidecar["fields"]["depthwise"] == choice and sidecar["fused_depthwise_convs"] == 3
    eager = net.cuda()
    for n in batches:
        batch = torch.randn(n, 3, *INPUT_SIZE, device="cuda")
        with torch.no_grad():
            want = eager(batch)
        got = engine(batch)
        for name, w in zip(engine.output_names, want, strict=True):
            scale = float(w.abs().max().clamp_min(1.0))
            diff = float((got[name] - w).abs().max())
            assert diff <= (1e-3 if precision == "fp32" else 1e-2) * scale, (n, name, diff)


def test_split_modules_keep_the_library_path_off_the_gpu() -> None:
    """`library_above` (our kernel for small batches, cuDNN above) reaches every replaced module, and off
    CUDA the module is the plain depthwise convolution whatever the batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.Conv2d(8, 8, 1))
    x = torch.randn(20, 8, 6, 5)
    expected = net(x)
    assert depthwise.fuse_depthwise_convs(net, library_above=16) == 1
    assert net[0].library_above == 16 and "cuDNN above batch 16" in repr(net[0])
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
