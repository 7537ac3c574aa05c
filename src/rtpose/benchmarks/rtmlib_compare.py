"""Per-person pose cost on the CPU with ONNX Runtime: rtpose against rtmlib, on the SAME ONNX file.

    python -m rtpose.benchmarks.rtmlib_compare [--threads 2] [--runs 30] [--out runs/rtmlib_compare.json]

Our RTMPose-m (seeded random weights: speed does not depend on them) is exported to ONNX once; rtmlib's
`RTMPose` class and our `TopDown.predict_on_boxes` both run that file on the same image and the same
person boxes (rtmdet-nano detections on a 1280x720 street frame with about ten people, or `--image`).
rtmlib crops, normalises, runs and decodes one person at a time; we crop all persons, run them as one
batch in one ONNX Runtime call and decode them together. A third row runs our code one person per call,
which separates the gain of batching from the rest. A fourth row runs our INT8 engine: the same ONNX
file quantised by `rtpose.engines.quantize` (calibrated on the sample COCO images; INT8 changes the
numbers, its accuracy is measured by `precision_check`, not here). Where OpenVINO is installed, two
more rows run that file on OpenVINO's CPU plugin (`engines.openvino_cpu`) in f32 and with its bf16
inference-precision hint (bf16 kernels on processors with BF16 units; accuracy again in
`precision_check`). Calls are interleaved (ours, rtmlib, ours one by one, ...) so that load from other
processes hits every contender alike.

Same keypoints: rtmlib normalises the crop in the channel order it is given, with RGB mean/std, and
its callers pass OpenCV's BGR images; MMPose-trained RTMPose expects RGB. We hand rtmlib the RGB image
so that both feed the network identical inputs, and report the largest keypoint difference (rtmlib
sets keypoints whose score is <= 0 to -1 before mapping them back, so only those with score > 0 are
compared). rtmlib is an optional, benchmark-only dependency: `pip install rtpose[bench]`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtpose.errors import EngineError, RtposeError

TARGET_RATIO = 1.5
INT8_ROW = "rtpose INT8 (that file quantised; all persons in one call)"
OPENVINO_ROW = "rtpose on OpenVINO {} (that file; all persons in one call)"

logger = logging.getLogger("rtpose.bench")


def _load_image_and_boxes(args: argparse.Namespace, factory: Any) -> tuple[np.ndarray, np.ndarray, str]:
    from rtpose.benchmarks.bench import BenchConfig, pipeline_image_bytes
    from rtpose.benchmarks.bench_models import load_bench_model
    from rtpose.decode.image import decode_image
    from rtpose.pipelines.detector import Detector

    config = BenchConfig(pipeline_image=args.image, data_dir=args.data_dir)
    encoded, label = pipeline_image_bytes(config)
    image = decode_image(encoded)
    det = load_bench_model("rtmdet-nano", "detector", data_dir=args.data_dir)
    detector = Detector.from_engine(factory.get(det, "ort"), det.spec)
    boxes, _ = detector.detect(image)
    if len(boxes) == 0:
        raise RtposeError(f"rtmdet-nano finds nobody in {label}; pass an --image with people")
    return image, np.asarray(boxes, dtype=np.float32), label


def _rtmlib_pose(onnx_path: Path, spec: Any) -> Any:
    try:
        from rtmlib import RTMPose
    except ImportError:
        raise RtposeError(
            "rtmlib is not installed: pip install --no-deps rtmlib (or rtpose[bench])"
        ) from None
    height, width = spec.input_size
    return RTMPose(
        str(onnx_path), model_input_size=(width, height), mean=spec.mean, std=spec.std,
        backend="onnxruntime", device="cpu",
    )  # fmt: skip


def keypoint_difference(
    ours: np.ndarray, theirs: np.ndarray, their_scores: np.ndarray
) -> dict[str, float | int]:
    """Largest and mean distance (px) over keypoints rtmlib kept (score > 0), and how many were compared."""
    valid = their_scores > 0
    distance = np.linalg.norm(ours - theirs, axis=-1)[valid]
    if distance.size == 0:
        return {"compared": 0, "max_px": float("nan"), "mean_px": float("nan"), "within_1px": float("nan")}
    return {
        "compared": int(distance.size),
        "of": int(valid.size),
        "max_px": round(float(distance.max()), 4),
        "mean_px": round(float(distance.mean()), 4),
        "within_1px": round(float((distance <= 1.0).mean()), 4),
    }


def _interleaved(calls: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def compare(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    import torch

    from rtpose.benchmarks.bench_models import EngineFactory, load_bench_model
    from rtpose.engines.openvino_cpu import OpenVinoCpuEngine
    from rtpose.engines.ort import OrtEngine
    from rtpose.engines.quantize import calibration_images, quantize_onnx
    from rtpose.pipelines.topdown import TopDown

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rtpose-rtmlib-") as tmp:
        factory = EngineFactory(device="cpu", workdir=Path(tmp), threads=args.threads)
        pose = load_bench_model(args.pose, "pose-topdown", data_dir=args.data_dir)
        onnx_path = factory.onnx_path(pose)
        image, boxes, label = _load_image_and_boxes(args, factory)
        ours = TopDown.from_engines(factory.get(pose, "ort"), pose.spec, None, processing="numpy")
        int8_file = quantize_onnx(onnx_path, pose.spec, calibration_images(args.calib))
        ours_int8 = TopDown.from_engines(
            OrtEngine(int8_file, threads=args.threads), pose.spec, None, processing="numpy"
        )
        openvino = {}
        for precision in ("fp32", "bf16"):  # a second CPU runtime on the same file, where installed
            try:
                engine = OpenVinoCpuEngine(onnx_path, precision=precision, threads=args.threads)
            except EngineError as exc:
                logger.warning("no OpenVINO rows: %s", exc)
                break
            openvino[precision] = TopDown.from_engines(engine, pose.spec, None, processing="numpy")
        theirs = _rtmlib_pose(onnx_path, pose.spec)
        rgb = np.ascontiguousarray(image[..., ::-1])  # see the module docstring
        box_list = [list(map(float, b)) for b in boxes]

        our_people = ours.predict_on_boxes(image, boxes)
        their_points, their_scores = theirs(rgb, box_list)
        agreement = keypoint_difference(
            np.stack([p.keypoints for p in our_people]), their_points, their_scores
        )

        calls = {
            "rtpose (all persons in one ORT call)": lambda: ours.predict_on_boxes(image, boxes),
            "rtmlib (one ORT call per person)": lambda: theirs(rgb, box_list),
            "rtpose (one person per call)": lambda: [ours.predict_on_boxes(image, b[None]) for b in boxes],
            INT8_ROW: lambda: ours_int8.predict_on_boxes(image, boxes),
        }
        for precision, pipeline in openvino.items():
            calls[OPENVINO_ROW.format(precision)] = functools.partial(pipeline.predict_on_boxes, image, boxes)
        times = _interleaved(calls, args.runs, args.warmup)
        bf16_used = "bf16" in openvino and openvino["bf16"].pose_engine.runs_bf16

    persons = len(boxes)
    rows = []
    for name, values in times.items():
        p50 = float(np.median(values))
        rows.append({
            "contender": name,
            "image_p50_ms": round(p50, 3),
            "image_p99_ms": round(float(np.percentile(values, 99)), 3),
            "ms_per_person": round(p50 / persons, 3),
        })  # fmt: skip
    per_person = {row["contender"]: row["ms_per_person"] for row in rows}
    ours_pp, rtmlib_pp, int8_pp = rows[0]["ms_per_person"], rows[1]["ms_per_person"], per_person[INT8_ROW]
    others = {
        f"ratio_rtmlib_over_ours_openvino_{precision}_per_person": round(
            rtmlib_pp / per_person[OPENVINO_ROW.format(precision)], 3
        )
        for precision in openvino
    }
    return {
        "image": label,
        "persons": persons,
        "pose": f"{pose.spec.name} ({pose.weights_label})",
        "onnx": "our export of that model (opset 17), the same file for both",
        "threads": {"torch": args.threads, "ours_ort_intra_op": args.threads, "rtmlib_ort": "ORT default"},
        "onnxruntime": onnxruntime.__version__,
        "rtmlib": _rtmlib_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "runs": args.runs,
        "rows": rows,
        "keypoint_agreement": agreement,
        "ratio_rtmlib_over_ours_per_person": round(rtmlib_pp / ours_pp, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": rtmlib_pp / ours_pp >= TARGET_RATIO,
        "ratio_rtmlib_over_ours_int8_per_person": round(rtmlib_pp / int8_pp, 3),
        **others,
        "openvino_bf16_really_bf16": bf16_used,
    }


def _rtmlib_version() -> str:
    try:
        from importlib.metadata import version

        return version("rtmlib")
    except Exception:
        return "unknown"


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['pose']}, {result['persons']} persons, {result['image']}; ORT {result['onnxruntime']}, "
        f"rtmlib {result['rtmlib']}; load average {result['load_average']}",
        "",
        "| contender | image p50 ms | image p99 ms | ms per person |",
        "|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['contender']} | {row['image_p50_ms']:.2f} | {row['image_p99_ms']:.2f} | "
            f"{row['ms_per_person']:.2f} |"
        )
    agree = result["keypoint_agreement"]
    lines += [
        "",
        f"per-person cost, rtmlib / rtpose: {result['ratio_rtmlib_over_ours_per_person']:.2f}x "
        f"(target >= {result['target_ratio']}x: {'met' if result['target_met'] else 'NOT met'}); with our "
        f"INT8 engine: {result['ratio_rtmlib_over_ours_int8_per_person']:.2f}x"
        + "".join(
            f"; OpenVINO {p}: {result[f'ratio_rtmlib_over_ours_openvino_{p}_per_person']:.2f}x"
            for p in ("fp32", "bf16")
            if f"ratio_rtmlib_over_ours_openvino_{p}_per_person" in result
        ),
        f"keypoints (rtmlib score > 0: {agree['compared']} of {agree.get('of', 0)}): max difference "
        f"{agree['max_px']} px, mean {agree['mean_px']} px, within 1 px {agree['within_1px']}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pose", default="rtmpose-m")
    parser.add_argument("--image", type=Path, default=None, help="default: the street frame of rtpose bench")
    parser.add_argument("--threads", type=int, default=2, help="torch and our ORT intra-op threads")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=None, help="default $RTPOSE_DATA")
    parser.add_argument("--calib", type=Path, default=None, help="INT8 calibration images (default: samples)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = compare(args)
    except RtposeError as exc:
        print(f"rtmlib_compare: {exc}", file=sys.stderr)
        return 1
    print(table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
