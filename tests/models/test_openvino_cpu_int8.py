"""The arithmetic of OpenVINO's INT8 CPU execution (`rtpose.models.openvino_cpu_int8`), piece by piece.

The whole network against OpenVINO itself is in test_openpose_lite.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rtpose.models import openvino_cpu_int8 as cpu_int8
from rtpose.models.fake_quantize import FakeQuantize
from rtpose.models.ir_blocks import ConvAct, set_int8_semantics


def _tensors(plan: cpu_int8.QuantPlan) -> list[torch.Tensor]:
    fields = cpu_int8.QuantPlan.__dataclass_fields__
    return [torch.from_numpy(np.asarray(getattr(plan, name), np.float32)) for name in fields]


def test_signed_ranges_get_an_integer_zero_point() -> None:
    low, high = np.float32(-0.505859375), np.float32(0.501953125)  # the IR's input range: zero point 127.994
    plan = cpu_int8.quant_plan(256, low, high, low, high)
    assert plan.offset == -128  # code - 128, not code - 127.994
    exact_scale = 255 / (np.float64(high) - low)
    assert plan.scale == np.float32(exact_scale) and plan.shift == np.float32(-np.float64(low) * exact_scale)
    values = cpu_int8.quantise(torch.tensor([-1.0, 0.0, 0.2, 1.0]), *_tensors(plan))
    codes = values / torch.from_numpy(plan.step)
    torch.testing.assert_close(codes, torch.round(codes), rtol=0, atol=1e-4)
    assert codes[0] == -128 and codes[-1] == 127  # clamped to the range
    assert values[1] == 0.0  # zero stays exactly zero


def test_requantisation_constants_follow_the_plugin() -> None:
    """Rule 5: unsigned per-tensor -> float32(1 / step); run as a node of its own -> float32 throughout.
    The variants differ in the last bit (which decides ties)."""
    low, high = np.float32(0), np.float32(8.984375)
    fused = cpu_int8.quant_plan(256, low, high, low, high)
    alone = cpu_int8.quant_plan(256, low, high, low, high, fused_into_convolution=False)
    assert fused.scale == np.float32(1) / fused.step == np.float32(28.38261)
    assert alone.scale == np.float32(255) / high == np.float32(28.382608)
    codes = [
        cpu_int8.quantise(torch.tensor([2.519148]), *_tensors(plan)) / float(plan.step)
        for plan in (fused, alone)
    ]
    assert [round(float(c)) for c in codes] == [72, 71]  # 71.5 rounds to even, 71.49999 down


def test_per_channel_ranges_keep_their_own_scale() -> None:
    low = np.zeros((1, 3, 1, 1), np.float32)
    high = np.array([5.48828125, 3.9296875, 2.23046875], np.float32).reshape(1, 3, 1, 1)
    plan = cpu_int8.quant_plan(256, low, high, low, high)
    np.testing.assert_array_equal(plan.scale, (255 / (high.astype(np.float64) - low)).astype(np.float32))
    np.testing.assert_array_equal(plan.offset, 0)


def test_a_concat_quantises_its_inputs_on_one_grid() -> None:
    ranges = [(256, np.float32(-0.935), np.float32(0.928)), (256, np.float32(0.0), np.float32(4.59375))]
    plans = cpu_int8.concat_plans(ranges)
    step = plans[0].step
    assert all(p.step == step for p in plans)
    assert step == np.float32((np.float32(4.59375) - np.float32(-0.935)) / np.float32(255))
    for (_, low, high), plan in zip(ranges, plans, strict=True):
        levels = round(float((high - low) / step))
        assert plan.scale == pytest.approx(levels / (high - low), rel=1e-6)
        ends = cpu_int8.quantise(torch.tensor([float(low), float(high)]), *_tensors(plan)) / float(step)
        assert ends[1] - ends[0] == pytest.approx(levels, abs=1e-3)  # levels + 1 codes, on the common grid
    zero = cpu_int8.quantise(torch.zeros(1), *_tensors(plans[1]))
    assert zero.item() == 0.0
    with pytest.raises(ValueError, match="level counts"):
        cpu_int8.concat_plans([(256, np.float32(0), np.float32(1)), (16, np.float32(0), np.float32(1))])


def test_convolution_accumulates_integers_exactly_then_rounds_twice_in_float32() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 8, 3, padding=1)
    weight_codes = torch.randint(-127, 128, conv.weight.shape).float()
    step_in, step_w = torch.tensor(0.0123), torch.rand(8) * 1e-3 + 1e-4
    x = torch.randint(0, 256, (1, 64, 6, 6)).float() * step_in
    x[:, :, 2:5, 2:5] = 255 * step_in  # with channel 0's weights all 127: sums beyond 2**24
    weight_codes[0] = 127
    scale = step_in * step_w
    y = cpu_int8.convolve(conv, x, step_in, weight_codes, scale)
    exact = nn.functional.conv2d(torch.round(x / step_in).double(), weight_codes.double(), padding=1)
    assert exact.abs().max() > 2**24  # beyond float32's integers, where a float32 accumulation rounds
    expected = exact.float() * scale.view(1, -1, 1, 1) + conv.bias.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_onednn_exp_is_a_faithful_float32_exp() -> None:
    x = torch.linspace(-20, 0, 200_001)
    ours = cpu_int8.onednn_exp(x).double()
    exact = torch.exp(x.double())
    assert ((ours - exact).abs() / exact).max() < 4e-7  # within ~3 float32 ulp
    assert cpu_int8.onednn_exp(torch.tensor([-200.0])).item() == 0.0  # below ln(FLT_MIN): exactly zero
    torch.testing.assert_close(cpu_int8.elu(torch.tensor([1.5, -1.0]), 1.0)[0], torch.tensor(1.5))


def test_onednn_exp_equals_openvinos_elu_bit_for_bit() -> None:
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    x = (-np.random.default_rng(0).random(100_000) * 6).astype(np.float32)
    parameter = ops.parameter([x.size], ov.Type.f32, name="x")
    compiled = ov.Core().compile_model(
        ov.Model([ops.elu(parameter, 1.0)], [parameter]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    theirs = compiled({"x": x})[compiled.outputs[0]]
    np.testing.assert_array_equal(cpu_int8.elu(torch.from_numpy(x), 1.0).numpy(), theirs)


def test_fused_add_rounds_once() -> None:
    step = torch.tensor(0.021997)
    other = torch.tensor([37.0, -5.0]) * step
    conv_output = torch.tensor([1.0411075, 0.3])
    expected = (torch.round(other / step).double() * step.double() + conv_output.double()).float()
    torch.testing.assert_close(cpu_int8.fused_add(conv_output, other, step), expected, rtol=0, atol=0)


def test_semantics_switch_needs_a_plan() -> None:
    block = ConvAct(4, 4, 1)
    with torch.no_grad():
        block.conv.weight.copy_(torch.randint(-127, 128, block.conv.weight.shape).float())
    block.out_quant.load(256, *(torch.tensor(v) for v in (0.0, 1.0, 0.0, 1.0)))
    with pytest.raises(ValueError, match="no OpenVINO CPU INT8 plan"):
        set_int8_semantics(block, True, "openvino-cpu")
    with pytest.raises(ValueError, match="unknown INT8 semantics"):
        set_int8_semantics(block, True, "tensorrt")  # type: ignore[arg-type]
    set_int8_semantics(block, True, "fake-quantize")
    assert block.out_quant.enabled and not block.cpu_int8
    plan = cpu_int8.quant_plan(256, np.float32(0), np.float32(1), np.float32(0), np.float32(1))
    block.out_quant.load_plan(plan)
    block.load_cpu_plan(torch.tensor(1 / 255), torch.ones(4), raw_output=False)
    set_int8_semantics(block, True, "openvino-cpu")
    assert block.cpu_int8 and block.out_quant.semantics == "openvino-cpu"
    set_int8_semantics(block, False, "openvino-cpu")
    assert not block.cpu_int8 and not block.out_quant.enabled
    assert isinstance(block.out_quant, FakeQuantize)
