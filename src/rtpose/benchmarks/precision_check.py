"""Does reduced precision keep accuracy with the real models? FP16/BF16 against FP32 on 60 COCO val images.

    python -m rtpose.benchmarks.precision_check --device cuda [--out runs/precision_check.json]
    python -m rtpose.benchmarks.precision_check --device cpu      # smoke mode: eager fp32 vs eager bf16

Reference: PyTorch eager FP32 (TF32 off: PyTorch's CUDA default lets convolutions use TF32, which would
blur what "fp32" means here). Candidates on CUDA: eager FP16 and BF16 (the network cast), compiled FP32,
FP16 and BF16 engines; on the CPU eager BF16, ONNX Runtime INT8 (our export quantised by
`engines.quantize`, calibrated on COCO train2017 images, evaluated on val2017) and our export on
OpenVINO's CPU plugin in f32 and bf16 (`engines.openvino_cpu`); compiled fp16 is skipped,
fp16 convolutions being unsupported or emulated there. Models with real weights only:

- the detector (rtmdet-nano): boxes of every image matched greedily by IoU: how many images find the
  same number of people, the smallest and mean IoU of matched boxes, the largest score change;
- every registered pose model with real weights (`list_specs()`: movenet-lightning, openpose-lite):
  keypoints of the same person compared in pixels of the network input (image distance x the crop's
  scale; bottom-up people are paired by keypoint distance), the share within 0.5 px (criterion: 99%),
  and COCO keypoint AP (`rtpose.evaluation.evaluate`, GT boxes for top-down) against FP32 (criterion:
  within 0.3 AP points). Imported INT8 models run their float (dequantised) network in every precision:
  the INT8 emulation computes exact integers that fp16/bf16 cannot hold.

Writes JSON and prints a table; `passed` says whether every criterion held.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtpose.engines.base import Engine
from rtpose.errors import RtposeError
from rtpose.types import Person

KEYPOINT_PX = 0.5
KEYPOINT_SHARE = 0.99
AP_POINTS = 0.3


class CastEngine(Engine):
    """Eager PyTorch in a reduced precision: float32 batch in, network in `dtype`, float32 outputs."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, device: str, output_names: Sequence[str]):
        import copy

        self.module = copy.deepcopy(module).to(device=device, dtype=dtype).eval()
        self.dtype, self.device, self.output_names = dtype, torch.device(device).type, tuple(output_names)
        self._device = torch.device(device)

    def __call__(self, batch: Any) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(batch).to(self._device, self.dtype)
        with torch.inference_mode():
            out = self.module(x)
        items = list(out.values()) if isinstance(out, dict) else [out] if torch.is_tensor(out) else list(out)
        return {name: t.float() for name, t in zip(self.output_names, items, strict=True)}


class Recorder:
    """Forwards a pipeline and keeps what it returned, in call order, for the keypoint comparison."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.calls: list[tuple[np.ndarray, list[Person]]] = []
        self.bbox_padding = getattr(pipeline, "bbox_padding", 1.25)
        self.pose_spec = getattr(pipeline, "pose_spec", None)

    def predict_on_boxes(self, image: Any, boxes: Any, scores: Any = None) -> list[Person]:
        people = self.pipeline.predict_on_boxes(image, boxes, scores)
        self.calls.append((np.asarray(boxes, dtype=np.float64).reshape(-1, 4), people))
        return people

    def __call__(self, image: Any) -> list[Person]:
        people = self.pipeline(image)
        self.calls.append((np.asarray(image.shape[:2]), people))
        return people


# -- comparisons --------------------------------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of x1y1x2y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def compare_detections(reference: list[tuple], candidate: list[tuple]) -> dict[str, Any]:
    """Per image (boxes, scores) lists: same counts, IoU of greedily matched boxes, score changes."""
    same_count, ious, score_diffs, unmatched = 0, [], [], 0
    for (ref_boxes, ref_scores), (boxes, scores) in zip(reference, candidate, strict=True):
        same_count += len(ref_boxes) == len(boxes)
        if len(ref_boxes) == 0 or len(boxes) == 0:
            unmatched += abs(len(ref_boxes) - len(boxes))
            continue
        iou = box_iou(ref_boxes, boxes)
        used: set[int] = set()
        for i in np.argsort(-ref_scores):
            order = [j for j in np.argsort(-iou[i]) if j not in used]
            if order and iou[i, order[0]] > 0.5:
                used.add(order[0])
                ious.append(iou[i, order[0]])
                score_diffs.append(abs(float(ref_scores[i]) - float(scores[order[0]])))
            else:
                unmatched += 1
        unmatched += len(boxes) - len(used)
    return {
        "images": len(reference),
        "images_same_count": same_count,
        "boxes_reference": int(sum(len(b) for b, _ in reference)),
        "boxes_unmatched": unmatched,
        "matched_iou_min": round(float(min(ious)), 4) if ious else None,
        "matched_iou_mean": round(float(np.mean(ious)), 5) if ious else None,
        "score_abs_diff_max": round(float(max(score_diffs)), 5) if score_diffs else None,
    }


def topdown_distances(reference: Recorder, candidate: Recorder, spec: Any) -> np.ndarray:
    """Keypoint distances in network-input pixels, person by person (same boxes, same order)."""
    from rtpose.preprocess.affine import boxes_to_affine_matrices

    distances = []
    for (boxes, ref_people), (_, people) in zip(reference.calls, candidate.calls, strict=True):
        if len(boxes) == 0:
            continue
        scale = boxes_to_affine_matrices(boxes, spec.input_size, reference.bbox_padding)[:, 0, 0]
        for s, ref, cand in zip(scale, ref_people, people, strict=True):
            distances.append(np.linalg.norm(ref.keypoints - cand.keypoints, axis=-1) * s)
    return np.concatenate(distances) if distances else np.zeros(0)


def bottomup_distances(reference: Recorder, candidate: Recorder, input_height: int) -> np.ndarray:
    """Keypoint distances in network-input pixels; people paired greedily by mean keypoint distance.

    Keypoints the reference found (score > 0) count; one the candidate lost, or a person it lost,
    counts as infinitely far.
    """
    distances: list[np.ndarray] = []
    for (shape, ref_people), (_, people) in zip(reference.calls, candidate.calls, strict=True):
        scale = input_height / float(shape[0])
        free = list(range(len(people)))
        for ref in ref_people:
            found = ref.keypoint_scores > 0
            best, best_cost = None, np.inf
            for j in free:
                both = found & (people[j].keypoint_scores > 0)
                if both.any():
                    cost = float(
                        np.linalg.norm(ref.keypoints[both] - people[j].keypoints[both], axis=-1).mean()
                    )
                    if cost < best_cost:
                        best, best_cost = j, cost
            d = np.full(int(found.sum()), np.inf)
            if best is not None:
                free.remove(best)
                cand = people[best]
                d = np.where(
                    cand.keypoint_scores[found] > 0,
                    np.linalg.norm(ref.keypoints[found] - cand.keypoints[found], axis=-1) * scale,
                    np.inf,
                )
            distances.append(d)
    return np.concatenate(distances) if distances else np.zeros(0)


# -- running ------------------------------------------------------------------------------------------
def candidates(device: str, wanted: Sequence[str] | None = None) -> dict[str, str | None]:
    """Candidate label -> None (runs) or the reason it is skipped; only `wanted` ones when given."""
    every = _candidates(device)
    return every if wanted is None else {k: v for k, v in every.items() if k in wanted}


def _candidates(device: str) -> dict[str, str | None]:
    if device.startswith("cuda"):
        # the eager casts first: the dtype's own effect, measured even where a compiled engine fails
        return {"eager-fp16": None, "eager-bf16": None, "compiled-fp32": None, "compiled-fp16": None,
                "compiled-bf16": None}  # fmt: skip
    return {
        "eager-bf16": None,
        "ort-int8": None,
        "openvino-fp32": None,
        "openvino-bf16": None,
        "compiled-fp16": "fp16 convolutions on the CPU are unsupported or emulated (slow) in PyTorch",
    }


def make_engine(label: str, model: Any, factory: Any, device: str, calibration: Path | None = None) -> Engine:
    from rtpose.engines.onnx_export import output_names_for

    if label == "ort-int8":
        from rtpose.engines.ort import OrtEngine
        from rtpose.engines.quantize import calibration_images, quantize_onnx

        int8 = quantize_onnx(factory.onnx_path(model), model.spec, calibration_images(calibration))
        return OrtEngine(int8, threads=factory.threads)
    if label in ("openvino-fp32", "openvino-bf16"):
        from rtpose.engines.openvino_cpu import OpenVinoCpuEngine

        precision = label.split("-")[1]
        return OpenVinoCpuEngine(factory.onnx_path(model), precision=precision, threads=factory.threads)
    if label in ("eager-fp16", "eager-bf16"):
        dtype = torch.float16 if label == "eager-fp16" else torch.bfloat16
        return CastEngine(model.module, dtype, device, output_names_for(model.spec))
    return factory.get(model, label)


def check_detector(args: argparse.Namespace, factory: Any, images: list[np.ndarray]) -> list[dict[str, Any]]:
    from rtpose.benchmarks.bench_models import load_bench_model
    from rtpose.pipelines.detector import Detector

    model = load_bench_model(args.det, "detector", data_dir=args.data_dir, allow_random=False)

    def run(engine: Engine) -> list[tuple]:
        detector = Detector.from_engine(engine, model.spec, processing="numpy")
        out = []
        for image in images:
            boxes, scores = detector.detect(image)
            out.append((np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)))
        return out

    reference = run(factory.get(model, "eager"))
    rows = []
    for label, reason in candidates(args.device, args.candidates).items():
        row: dict[str, Any] = {"model": model.spec.name, "candidate": label}
        if reason is None:
            _progress(f"{model.spec.name} {label}")
            row.update(
                compare_detections(
                    reference, run(make_engine(label, model, factory, args.device, _calibration(args)))
                )
            )
            row["passed"] = row["images_same_count"] == row["images"] and row["boxes_unmatched"] == 0
        else:
            row["skipped"] = reason
        rows.append(row)
        _progress(json.dumps(row))  # on record at once: a crash in a later engine keeps this row
    return rows


def _pipeline(model: Any, engine: Engine) -> Any:
    from rtpose.pipelines.bottomup import BottomUp
    from rtpose.pipelines.topdown import TopDown

    if model.spec.task == "pose-bottomup":
        return BottomUp.from_engine(engine, model.spec, processing="numpy", dynamic_width=False)
    return TopDown.from_engines(engine, model.spec, None, processing="numpy")


def check_pose_model(args: argparse.Namespace, factory: Any, model: Any) -> list[dict[str, Any]]:
    from rtpose.engines.compiled import module_variant
    from rtpose.evaluation import evaluate

    coco = args.data_dir_resolved / "coco"
    ann_file, images_dir = coco / "annotations" / "person_keypoints_val2017_subset.json", coco / "val2017"
    bottom_up = model.spec.task == "pose-bottomup"

    def run(engine: Engine) -> tuple[Recorder, float]:
        recorder = Recorder(_pipeline(model, engine))
        metrics = evaluate(recorder, ann_file, images_dir, progress=False, bottom_up=bottom_up)
        return recorder, float(metrics["AP"])

    _progress(f"{model.spec.name} eager fp32 (reference)")
    reference, reference_ap = run(factory.get(model, "eager"))
    rows = []
    for label, reason in candidates(args.device, args.candidates).items():
        row: dict[str, Any] = {
            "model": model.spec.name, "candidate": label, "weights": model.weights_label,
            "network": module_variant(model.module),
        }  # fmt: skip
        if reason is not None:
            rows.append({**row, "skipped": reason})
            continue
        _progress(f"{model.spec.name} {label}")
        try:
            engine = make_engine(label, model, factory, args.device, _calibration(args))
        except RtposeError as exc:
            rows.append({**row, "skipped": f"engine failed: {str(exc).splitlines()[0]}"})
            continue
        recorder, ap = run(engine)
        if bottom_up:
            distances = bottomup_distances(reference, recorder, model.spec.input_size[0])
        else:
            distances = topdown_distances(reference, recorder, model.spec)
        within = float((distances <= KEYPOINT_PX).mean()) if distances.size else float("nan")
        finite = distances[np.isfinite(distances)]
        row.update({
            "keypoints": int(distances.size),
            "within_0.5px": round(within, 5),
            "median_px": round(float(np.median(finite)), 4) if finite.size else None,
            "max_px": round(float(finite.max()), 3) if finite.size else None,
            "lost": int((~np.isfinite(distances)).sum()),
            "AP_fp32": round(reference_ap * 100, 2), "AP": round(ap * 100, 2),
            "AP_diff_points": round((ap - reference_ap) * 100, 2),
        })  # fmt: skip
        row["passed"] = within >= KEYPOINT_SHARE and abs(ap - reference_ap) * 100 <= AP_POINTS
        rows.append(row)
        _progress(json.dumps(row))
    return rows


def _calibration(args: argparse.Namespace) -> Path:
    """INT8 calibration images: COCO train2017 beside the val2017 images that are evaluated."""
    return args.data_dir_resolved / "coco" / "train2017"


def _progress(message: str) -> None:
    print(f"[precision] {message}", file=sys.stderr, flush=True)


def _val_images(data_dir: Path) -> list[np.ndarray]:
    from rtpose.decode.image import decode_image

    folder = data_dir / "coco" / "val2017"
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise RtposeError(f"no COCO val images in {folder}; set RTPOSE_DATA")
    return [decode_image(f) for f in files]


def check(args: argparse.Namespace) -> dict[str, Any]:
    from rtpose.benchmarks.bench_models import EngineFactory, default_data_dir, load_bench_model
    from rtpose.engines.compiled import module_variant
    from rtpose.models.spec import list_specs

    args.data_dir_resolved = Path(args.data_dir or default_data_dir())
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"device": args.device, "reference": "eager fp32", "criteria": {
        "keypoints": f">= {KEYPOINT_SHARE:.0%} within {KEYPOINT_PX} px (network input)",
        "ap": f"within {AP_POINTS} AP points of fp32", "detector": "same boxes (IoU > 0.5) on every image",
    }}  # fmt: skip
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory(prefix="rtpose-precision-") as tmp:
        factory = EngineFactory(
            device=args.device,
            workdir=Path(tmp),
            max_batch=64,
            cache_dir=args.cache_dir,
            threads=args.threads,
        )
        rows = []
        if "detector" in args.checks:
            rows += check_detector(args, factory, _val_images(args.data_dir_resolved))
        pose_names = [s.name for s in list_specs() if s.task != "detector"]
        for name in pose_names:
            if args.models is not None and name not in args.models:
                continue
            spec_task = next(s.task for s in list_specs() if s.name == name)
            try:
                model = load_bench_model(name, spec_task, data_dir=args.data_dir, allow_random=False)
            except RtposeError:
                continue  # no real weights here: nothing to say about accuracy
            if module_variant(model.module) == "int8-emulation":
                # exact INT8 emulation needs float32 integers: compare the float network in every precision
                model.module.set_int8_emulation(False)
            rows += check_pose_model(args, factory, model)
    result["rows"] = rows
    result["passed"] = all(r.get("passed", True) for r in rows)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [f"reference: {result['reference']} on {result.get('gpu', result['device'])}", ""]
    lines += ["| model | candidate | result |", "|---|---|---|"]
    for row in result["rows"]:
        if "skipped" in row:
            text = "skipped: " + row["skipped"]
        elif "images_same_count" in row:
            text = (f"same box count on {row['images_same_count']}/{row['images']} images, "
                    f"{row['boxes_unmatched']} unmatched of {row['boxes_reference']}, IoU min "
                    f"{row['matched_iou_min']} mean {row['matched_iou_mean']}, score diff max "
                    f"{row['score_abs_diff_max']}")  # fmt: skip
        else:
            text = (f"{row['within_0.5px']:.2%} of {row['keypoints']} keypoints within 0.5 px (median "
                    f"{row['median_px']} px, max {row['max_px']}, lost {row['lost']}); AP {row['AP']} vs "
                    f"{row['AP_fp32']} ({row['AP_diff_points']:+.2f})")  # fmt: skip
        if "passed" in row:
            text += " — " + ("pass" if row["passed"] else "FAIL")
        lines.append(f"| {row['model']} | {row['candidate']} | {text} |")
    lines += ["", "all criteria held" if result["passed"] else "some criteria FAILED"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--det", default="rtmdet-nano")
    parser.add_argument(
        "--models", nargs="*", default=None, help="pose models (default: all with real weights)"
    )
    parser.add_argument("--checks", nargs="+", default=["detector", "pose"], choices=("detector", "pose"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--candidates", nargs="+", default=None, metavar="LABEL",
        help="only these candidates (eager-fp16, eager-bf16, ort-int8, openvino-fp32, openvino-bf16, "
             "compiled-fp32, compiled-fp16, compiled-bf16)",
    )  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=None, help="default $RTPOSE_DATA")
    parser.add_argument("--cache-dir", type=Path, default=None, help="compiled engine cache")
    parser.add_argument("--out", type=Path, default=Path("runs/precision_check.json"))
    args = parser.parse_args(argv)
    if "pose" not in args.checks:
        args.models = []
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = check(args)
    except RtposeError as exc:
        print(f"precision_check: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if result["passed"] else 2


if __name__ == "__main__":
    sys.exit(main())
