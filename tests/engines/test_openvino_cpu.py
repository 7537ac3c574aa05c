"""Our ONNX files on OpenVINO's CPU plugin (`engines.openvino_cpu`): ONNX Runtime's outputs in f32, any
batch size, our output names, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtpose.errors import EngineError

pytest.importorskip("openvino")


def _conv_relu_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["heatmaps"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 6])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["n", 4, 8, 6])], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_f32_gives_onnx_runtime_outputs_at_every_batch_size(tmp_path: Path) -> None:
    from rtpose.engines.openvino_cpu import OpenVinoCpuEngine
    from rtpose.engines.ort import OrtEngine

    path = _conv_relu_onnx(tmp_path / "tiny.onnx")
    engine, reference = OpenVinoCpuEngine(path, precision="fp32", threads=1), OrtEngine(path, threads=1)
    assert engine.output_names == ("heatmaps",) and engine.backend == "openvino"
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 3, 8, 6)).astype(np.float32)
        got, want = engine(x), reference(x)
        assert set(got) == {"heatmaps"} and got["heatmaps"].dtype == np.float32
        np.testing.assert_allclose(got["heatmaps"], want["heatmaps"], rtol=1e-5, atol=1e-5)
    assert not engine.runs_bf16
    bf16 = OpenVinoCpuEngine(path, precision="bf16", threads=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 6)).astype(np.float32)
    np.testing.assert_allclose(bf16(x)["heatmaps"], reference(x)["heatmaps"], rtol=0.05, atol=0.05)
    # bf16 kernels where the processor has them, f32 elsewhere: the engine says which ran
    assert bf16.runs_bf16 == ("BF16" in bf16.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    from rtpose.engines.openvino_cpu import OpenVinoCpuEngine

    with pytest.raises(EngineError, match="not found"):
        OpenVinoCpuEngine(tmp_path / "missing.onnx")
    with pytest.raises(EngineError, match="precision"):
        OpenVinoCpuEngine(_conv_relu_onnx(tmp_path / "tiny.onnx"), precision="fp16")
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match="cannot read"):
        OpenVinoCpuEngine(tmp_path / "broken.onnx")
