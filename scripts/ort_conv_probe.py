"""How close do ONNX Runtime's CPU convolutions run to the cores' peak, and would Winograd pay there?

    python scripts/ort_conv_probe.py profile MODEL.onnx --batch 10 --threads 2
    python scripts/ort_conv_probe.py winograd --threads 2

`profile` runs the model under ONNX Runtime's profiler and prints, per kind of convolution (dense or
depthwise, kernel size, stride; and per layer shape for the 3x3 stride-1 ones), the time per call and
the multiply-accumulates per second. It is how the rtmlib comparison's ceiling was found (docs/notes.md:
FP32 RTMPose-m on our 2 cores is compute-bound, every kind of convolution at ~100 GMAC/s).

`winograd` builds, for the 3x3 stride-1 layer shapes of RTMPose-m at batch 10, one ONNX graph with the
plain Conv and two with Winograd F(2x2,3x3) / F(4x4,3x3) written in ONNX operators (strided slices for
the tiles, MatMul for the input and output transforms, a batched MatMul per tile position), and times
them in the same ONNX Runtime session setup, with the largest difference from the plain Conv. ONNX
Runtime has no Winograd kernel of its own; these graphs are the only way to get one without a custom op.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np


def _session(model: bytes | str, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _median_ms(session, feeds: dict, runs: int) -> float:
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def profile(path: Path, batch: int, threads: int, runs: int) -> None:
    session = _session(str(path), threads, profile_prefix="/tmp/ort_conv_probe")
    feed = session.get_inputs()[0]
    height, width = feed.shape[2], feed.shape[3]
    feeds = {feed.name: np.random.default_rng(0).random((batch, 3, height, width), np.float32)}
    per_image = _median_ms(session, feeds, runs) / batch
    print(f"{path.name}, batch {batch}, {threads} threads: {per_image:.2f} ms per image")
    events = json.loads(Path(session.end_profiling()).read_text())
    micros: collections.Counter[str] = collections.Counter()
    macs: collections.Counter[str] = collections.Counter()
    for event in events:
        args = event.get("args", {})
        if (
            event.get("cat") != "Node"
            or args.get("op_name") != "Conv"
            or not event["name"].endswith("_kernel_time")
        ):
            continue
        x, w = (next(iter(d.values())) for d in args["input_type_shape"][:2])
        out = next(iter(args["output_type_shape"][0].values()))
        kind = f"{'depthwise' if w[1] == 1 and w[0] > 1 else 'dense'} {w[2]}x{w[3]} stride {x[2] // out[2]}"
        if w[2] == 3 and x[2] == out[2]:
            kind += f"  {w[1]}->{w[0]} at {out[2]}x{out[3]}"
        micros[kind] += event["dur"]
        macs[kind] += int(np.prod(w)) * out[0] * out[2] * out[3]
    total = sum(micros.values())
    print(f"{'convolution':44s} {'share':>6s} {'GMAC/s':>7s}")
    for kind, spent in micros.most_common():
        print(f"{kind:44s} {spent / total:6.1%} {macs[kind] / spent / 1e3:7.1f}")


_WINOGRAD = {  # (B^T, G, A^T) of Lavin & Gray, for F(m x m, 3 x 3)
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}  # fmt: skip


def _conv_graph(shape: tuple[int, ...], weight: np.ndarray, bias: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    n, _, h, w = shape
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, len(weight), h, w])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _winograd_graph(shape: tuple[int, ...], weight: np.ndarray, bias: np.ndarray, m: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    b_t, g, a_t = (np.array(v, np.float64) for v in _WINOGRAD[m])
    n, c, h, w = shape
    k, alpha = len(weight), m + 2
    tiles_h, tiles_w = -(-h // m), -(-w // m)
    tiles = n * tiles_h * tiles_w
    weights = np.einsum("xi,kcij,yj->xykc", g, weight.astype(np.float64), g).reshape(alpha**2, k, c)
    constants = {
        "U": weights.transpose(0, 2, 1),  # (alpha^2, C, K): each tile position's weights
        "BB": np.einsum("xi,yj->xyij", b_t, b_t).reshape(alpha**2, alpha**2),
        "AA": np.einsum("pi,qj->pqij", a_t, a_t).reshape(m * m, alpha**2),
        "bias": bias.reshape(1, k, 1, 1),
    }
    ints = {
        "pads": [0, 1, 1, 0, 0, 1 + tiles_h * m - h, 1 + tiles_w * m - w, 0],  # NHWC
        "flat_d": [alpha**2, tiles * c], "by_tile": [alpha**2, tiles, c], "flat_m": [alpha**2, tiles * k],
        "blocks": [m, m, n, tiles_h, tiles_w, k], "image": [n, k, tiles_h * m, tiles_w * m],
        "zero2": [0, 0], "hw": [h, w], "axes23": [2, 3], "axes12": [1, 2], "step": [m, m], "axis0": [0],
    }  # fmt: skip
    initializers = [numpy_helper.from_array(v.astype(np.float32), name) for name, v in constants.items()]
    initializers += [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in ints.items()]
    nodes = [helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Pad", ["nhwc", "pads"], ["padded"])]  # fmt: skip
    parts = []
    for i in range(alpha):
        for j in range(alpha):
            start, end = f"start{i}_{j}", f"end{i}_{j}"
            last = [i + m * (tiles_h - 1) + 1, j + m * (tiles_w - 1) + 1]
            initializers += [
                numpy_helper.from_array(np.array([i, j], np.int64), start),
                numpy_helper.from_array(np.array(last, np.int64), end),
            ]
            nodes += [helper.make_node("Slice", ["padded", start, end, "axes12", "step"], [f"d{i}_{j}"]),
                      helper.make_node("Unsqueeze", [f"d{i}_{j}", "axis0"], [f"u{i}_{j}"])]  # fmt: skip
            parts.append(f"u{i}_{j}")
    nodes += [
        helper.make_node("Concat", parts, ["tiles"], axis=0),  # (alpha^2, N, tiles_h, tiles_w, C)
        helper.make_node("Reshape", ["tiles", "flat_d"], ["flat_tiles"]),
        helper.make_node("MatMul", ["BB", "flat_tiles"], ["v"]),  # input transform B^T d B
        helper.make_node("Reshape", ["v", "by_tile"], ["v_tiles"]),
        helper.make_node("MatMul", ["v_tiles", "U"], ["products"]),  # (alpha^2, tiles, K)
        helper.make_node("Reshape", ["products", "flat_m"], ["flat_products"]),
        helper.make_node("MatMul", ["AA", "flat_products"], ["y_tiles"]),  # output transform A^T M A
        helper.make_node("Reshape", ["y_tiles", "blocks"], ["y_blocks"]),
        helper.make_node("Transpose", ["y_blocks"], ["y_image"], perm=[2, 5, 3, 0, 4, 1]),
        helper.make_node("Reshape", ["y_image", "image"], ["y_padded"]),
        helper.make_node("Slice", ["y_padded", "zero2", "hw", "axes23"], ["y_crop"]),
        helper.make_node("Add", ["y_crop", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "winograd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, k, h, w])], initializers,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


#: RTMPose-m's 3x3 stride-1 convolutions at batch 10: (N, C_in, H, W), C_out, calls per image
RTMPOSE_M_3X3 = [
    ((10, 192, 16, 12), 192, 4), ((10, 96, 32, 24), 96, 4), ((10, 32, 128, 96), 48, 1),
    ((10, 384, 8, 6), 384, 2), ((10, 48, 64, 48), 48, 2), ((10, 32, 128, 96), 32, 1),
]  # fmt: skip


def winograd(threads: int, runs: int) -> None:
    header = ("layer (N, C, H, W) -> K", "Conv ms", "F(2) ms", "F(4) ms", "F(4) max diff")
    print(f"{header[0]:34s} {header[1]:>8s} {header[2]:>8s} {header[3]:>8s} {header[4]:>14s}")
    for shape, out_channels, _ in RTMPOSE_M_3X3:
        rng = np.random.default_rng(0)
        weight = (rng.standard_normal((out_channels, shape[1], 3, 3)) / np.sqrt(9 * shape[1])).astype(
            np.float32
        )
        bias = rng.standard_normal(out_channels).astype(np.float32)
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        plain = _session(_conv_graph(shape, weight, bias), threads)
        reference = plain.run(None, feeds)[0]
        row = [_median_ms(plain, feeds, runs)]
        for m in (2, 4):
            session = _session(_winograd_graph(shape, weight, bias, m), threads)
            difference = float(np.abs(session.run(None, feeds)[0] - reference).max())
            row.append(_median_ms(session, feeds, runs))
        print(
            f"{f'{shape} -> {out_channels}':34s} {row[0]:8.2f} {row[1]:8.2f} {row[2]:8.2f} {difference:14.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("profile", help="per-kind convolution time and GMAC/s of one ONNX model")
    one.add_argument("model", type=Path)
    one.add_argument("--batch", type=int, default=10)
    two = sub.add_parser("winograd", help="plain Conv against Winograd graphs, RTMPose-m's 3x3 layers")
    for command in (one, two):
        command.add_argument("--threads", type=int, default=2)
        command.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if args.command == "profile":
        profile(args.model, args.batch, args.threads, args.runs)
    else:
        winograd(args.threads, args.runs)


if __name__ == "__main__":
    main()
