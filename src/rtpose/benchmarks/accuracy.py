"""COCO keypoint AP of the imported pretrained models: our engines against their original runtimes.

    python -m rtpose.benchmarks.accuracy [--models movenet-lightning openpose-lite] [--out FILE.json]

For every (model, boxes) pair the same pipeline (preprocessing, decoding, rescoring, OKS-NMS, COCOeval)
runs twice or more, once per engine; only the engine differs:

- movenet-lightning (top-down, GT boxes and rtmdet-nano boxes): ours = our PyTorch MoveNet with its
  INT8 emulation (`--backend`), reference = the TFLite file in ai-edge-litert returning its raw heads
  (`engines.reference.TFLiteEngine`), so our decoder runs on both. The rtmdet-nano detector (ONNX
  Runtime) is the same object for both, so both see the same boxes.
- openpose-lite (bottom-up): ours in INT8-emulation and float modes (PyTorch), reference = the IR in
  OpenVINO: its default INT8 CPU runtime (what users of the IR get) and, as finer oracles, FakeQuantize
  executed in f32 ("fq-f32", what our emulation follows) and the float graph ("float", our float mode).
  Each image keeps its own width (height 256, width rounded up to the stride) on both sides.

dAP = AP(ours) - AP(reference) in AP points (x100); the issue's bar is |dAP| <= 0.5. Seconds are the
wall time of `evaluate` (decode + pipeline + NMS) on this machine, single process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtpose.errors import RtposeError

MODELS = ("movenet-lightning", "openpose-lite")
#: our ways of running the INT8 IR of openpose-lite -> the INT8 semantics each emulates (None: plain float).
#: "int8-emulation" follows OpenVINO's INT8 CPU execution, "int8-fake-quantize" the IR's FakeQuantize formula.
OPENPOSE_MODE_SEMANTICS = {
    "int8-emulation": "openvino-cpu",
    "int8-fake-quantize": "fake-quantize",
    "float": None,
}
OUR_OPENPOSE_MODES = tuple(OPENPOSE_MODE_SEMANTICS)
#: the modes an accuracy run uses unless told otherwise
DEFAULT_OPENPOSE_MODES = ("int8-emulation", "float")
#: |dAP| bar of the issue, in AP points
DAP_LIMIT = 0.5
ANNOTATIONS = Path("coco/annotations/person_keypoints_val2017_subset.json")
IMAGES = Path("coco/val2017")


@dataclass
class AccuracyRun:
    """One evaluation: a model, a box source, an engine."""

    model: str
    boxes: str
    engine: str
    reference: bool
    metrics: dict[str, Any]
    #: median ms of one engine call on one real input at the spec's input size (batch 1), warmed up
    forward_ms: float = float("nan")

    @property
    def ap(self) -> float:
        return 100.0 * float(self.metrics["AP"])


@dataclass
class Comparison:
    model: str
    boxes: str
    ours: str
    reference: str
    ap_ours: float
    ap_reference: float
    dap: float
    within_limit: bool


@dataclass
class KeypointAgreement:
    """Decoded keypoints of two engines on the same inputs: bottom-up on the same canvases (people paired
    greedily; a keypoint the reference found and the other lost counts as far), top-down on the same
    ground-truth boxes (person by person, in crop pixels)."""

    model: str
    boxes: str
    engine: str
    reference: str
    keypoints: int
    #: share of the reference's keypoints within 1 px / 0.5 px at network-input resolution
    within_1px: float
    within_half_px: float


@dataclass
class AccuracyReport:
    runs: list[AccuracyRun] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    agreements: list[KeypointAgreement] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "runs": [{**asdict(run), "AP_points": round(run.ap, 2)} for run in self.runs],
            "comparisons": [asdict(c) for c in self.comparisons],
            "keypoint_agreement": [asdict(a) for a in self.agreements],
            "dap_limit": DAP_LIMIT,
        }


# -- models and engines --------------------------------------------------------------------------


def _weights_path(name: str, data_dir: Path) -> Path:
    """The model's weight file: $RTPOSE_OFFLINE_DIR / cache first, else the shared data's models folder."""
    from rtpose.errors import ModelNotFoundError
    from rtpose.models.spec import get_spec
    from rtpose.models.weights import resolve_weights

    spec = get_spec(name)
    for offline_dir in (None, data_dir / "models"):
        try:
            return resolve_weights(spec, offline_dir=offline_dir, download=False, progress=False).path
        except ModelNotFoundError:
            continue
    raise ModelNotFoundError(f"{name}: no weights found (set RTPOSE_OFFLINE_DIR or --data-dir)")


def movenet_engines(
    data_dir: Path, backend: str, threads: int
) -> tuple[list[tuple[str, bool, Callable[[], Any]]], Any]:
    """([(label, is_reference, engine factory)], spec) for movenet-lightning."""
    from rtpose.engines.factory import create_engine
    from rtpose.engines.reference import TFLiteEngine
    from rtpose.models.spec import get_spec

    path = _weights_path("movenet-lightning", data_dir)

    def ours() -> Any:
        engine, _ = create_engine("movenet-lightning", task="pose-topdown", backend=backend, weights=path)
        return engine

    engines = [
        (f"ours {backend} int8-emulation", False, ours),
        ("TFLite (ai-edge-litert)", True, lambda: TFLiteEngine(path, threads=threads)),
    ]
    return engines, get_spec("movenet-lightning")


def openpose_engines(
    data_dir: Path,
    openvino_modes: Sequence[str],
    threads: int,
    our_modes: Sequence[str] = DEFAULT_OPENPOSE_MODES,
) -> tuple[list[tuple[str, bool, Callable[[], Any]]], Any]:
    """([(label, is_reference, engine factory)], spec) for openpose-lite: our two modes, OpenVINO's."""
    from rtpose.engines.reference import OpenVinoEngine
    from rtpose.engines.torch_engine import TorchEngine
    from rtpose.models.factory import build_with_weights
    from rtpose.models.spec import get_spec
    from rtpose.models.weights import resolve_weights

    spec = get_spec("openpose-lite")
    path = _weights_path("openpose-lite", data_dir)

    def ours(mode: str) -> Any:
        module = build_with_weights(spec, resolve_weights(spec, path, download=False, progress=False))
        semantics = OPENPOSE_MODE_SEMANTICS[mode]
        if semantics is None:
            module.set_int8_emulation(False)
        else:
            module.set_int8_emulation(True, semantics)
        return TorchEngine(module.eval(), device="cpu", output_names=spec.extra["output_names"])

    engines: list[tuple[str, bool, Callable[[], Any]]] = [
        (f"ours torch {mode}", False, lambda mode=mode: ours(mode)) for mode in our_modes
    ]
    for mode in openvino_modes:
        engines.append(
            (
                f"OpenVINO {mode}",
                True,
                lambda m=mode: OpenVinoEngine(path, mode=m, threads=threads, spec=spec),
            )
        )
    return engines, spec


def _detector(data_dir: Path) -> Any:
    from rtpose.pipelines.detector import Detector

    return Detector("rtmdet-nano", backend="ort", weights=_weights_path("rtmdet-nano", data_dir))


# -- evaluation ----------------------------------------------------------------------------------


def subset_annotations(ann_file: Path, count: int, out_path: Path) -> Path:
    """A copy of `ann_file` with only its first `count` images (by id) and their annotations."""
    data = json.loads(ann_file.read_text())
    keep = sorted(int(image["id"]) for image in data["images"])[:count]
    kept = set(keep)
    data["images"] = [im for im in data["images"] if int(im["id"]) in kept]
    data["annotations"] = [a for a in data["annotations"] if int(a["image_id"]) in kept]
    out_path.write_text(json.dumps(data))
    return out_path


def _evaluate_quietly(pipeline: Any, ann_file: Path, images_dir: Path, boxes: str | None) -> dict[str, Any]:
    from rtpose.evaluation.coco import evaluate

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' tables, once per run, are noise here
        return evaluate(pipeline, ann_file, images_dir, boxes=boxes, progress=False, bottom_up=boxes is None)


def keypoint_agreement(
    model: str, boxes: str, recorders: dict[str, tuple[bool, Any]], spec: Any
) -> list[KeypointAgreement]:
    """Every engine against every reference engine (and the references among themselves)."""
    import numpy as np

    from rtpose.benchmarks.precision_check import bottomup_distances, topdown_distances

    rows = []
    for reference, (is_reference, recorded_reference) in recorders.items():
        if not is_reference:
            continue
        for engine, (_, recorded) in recorders.items():
            if engine == reference:
                continue
            if boxes == "bottom-up":
                distances = bottomup_distances(recorded_reference, recorded, int(spec.input_size[0]))
            else:
                distances = topdown_distances(recorded_reference, recorded, spec).ravel()
            rows.append(
                KeypointAgreement(
                    model, boxes, engine, reference, int(distances.size),
                    round(float(np.mean(distances <= 1.0)), 4) if distances.size else float("nan"),
                    round(float(np.mean(distances <= 0.5)), 4) if distances.size else float("nan"),
                )
            )  # fmt: skip
    return rows


def _pipeline(spec: Any, engine: Any, detector: Any) -> Any:
    if spec.task == "pose-bottomup":
        from rtpose.pipelines.bottomup import BottomUp

        # the same canvas for every engine: each image keeps its own width (OpenVINO reshapes per size)
        return BottomUp.from_engine(engine, spec, dynamic_width=True)
    from rtpose.pipelines.topdown import TopDown

    return TopDown.from_engines(engine, spec, detector=detector)


def _first_file(ann_file: Path) -> str:
    images = json.loads(ann_file.read_text())["images"]
    return min(images, key=lambda im: int(im["id"]))["file_name"]


def _sample_input(spec: Any, image_path: Path) -> Any:
    """One real network input (batch 1) at the spec's input size: the image letterboxed and normalised."""
    from rtpose.decode.image import decode_image
    from rtpose.preprocess.letterbox import letterbox_numpy
    from rtpose.preprocess.normalize import normalize_numpy

    pad = int(spec.extra.get("pad_value", 0))
    canvas, _ = letterbox_numpy(decode_image(image_path), spec.input_size, pad)
    return normalize_numpy(canvas[None], spec.mean, spec.std, spec.channel_order)


def median_ms(call: Callable[[], Any], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of `call()` in milliseconds after `warmup` calls (which also compile/cache)."""
    import numpy as np

    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def compare(runs: Sequence[AccuracyRun]) -> list[Comparison]:
    """Every (ours, reference) pair of the same model and boxes."""
    comparisons = []
    for ours in runs:
        if ours.reference:
            continue
        for reference in runs:
            if not reference.reference or (reference.model, reference.boxes) != (ours.model, ours.boxes):
                continue
            dap = ours.ap - reference.ap
            comparisons.append(
                Comparison(
                    ours.model, ours.boxes, ours.engine, reference.engine, round(ours.ap, 2),
                    round(reference.ap, 2), round(dap, 2), abs(dap) <= DAP_LIMIT + 1e-9,
                )
            )  # fmt: skip
    return comparisons


def run_accuracy(
    data_dir: Path,
    *,
    models: Sequence[str] = MODELS,
    boxes: Sequence[str] = ("gt", "det"),
    images: int | None = None,
    backend: str = "torch",
    openvino_modes: Sequence[str] = ("int8", "fq-f32", "float"),
    our_openpose_modes: Sequence[str] = DEFAULT_OPENPOSE_MODES,
    threads: int = 2,
    timing_repeats: int = 10,
    log: Callable[[str], None] = print,
) -> AccuracyReport:
    """Evaluate every engine of every model on the COCO val subset (first `images` images if given).

    timing_repeats: engine calls timed per engine for `forward_ms` (0: no timing, NaN).
    """
    import torch

    from rtpose.benchmarks.precision_check import Recorder
    from rtpose.decode.image import decode_image

    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise RtposeError(f"unknown model(s) {unknown}; this benchmark knows {', '.join(MODELS)}")
    bad_modes = sorted(set(our_openpose_modes) - set(OUR_OPENPOSE_MODES))
    if bad_modes:
        raise RtposeError(f"our openpose-lite modes are {', '.join(OUR_OPENPOSE_MODES)}, not {bad_modes}")
    bad_boxes = sorted(set(boxes) - {"gt", "det"})
    if bad_boxes:
        raise RtposeError(f"boxes must be 'gt' and/or 'det', not {bad_boxes}")
    ann_file, images_dir = data_dir / ANNOTATIONS, data_dir / IMAGES
    if not ann_file.is_file() or not images_dir.is_dir():
        raise RtposeError(f"COCO val subset not found under {data_dir} (set RTPOSE_DATA or --data-dir)")
    torch.set_num_threads(threads)
    report = AccuracyReport()
    with tempfile.TemporaryDirectory() as tmp:
        if images is not None:
            ann_file = subset_annotations(ann_file, images, Path(tmp) / "subset.json")
        detector = _detector(data_dir) if "movenet-lightning" in models and "det" in boxes else None
        for model in models:
            if model == "movenet-lightning":
                engines, spec = movenet_engines(data_dir, backend, threads)
                box_sources: Sequence[str | None] = list(boxes)
            else:
                engines, spec = openpose_engines(data_dir, openvino_modes, threads, our_openpose_modes)
                box_sources = [None]
            first_file = _first_file(ann_file)
            sample = _sample_input(spec, images_dir / first_file)
            # box source -> engine -> (is the reference, its recorded people); ground truth and bottom-up only
            # (detector boxes differ between runs in number and order)
            recorders: dict[str, dict[str, tuple[bool, Any]]] = {}
            for label, is_reference, make_engine in engines:
                engine = make_engine()
                forward_ms = (
                    median_ms(lambda e=engine, x=sample: e(x), repeats=timing_repeats)
                    if timing_repeats > 0
                    else float("nan")
                )
                for box_source in box_sources:
                    pipeline = _pipeline(spec, engine, detector)
                    if box_source != "gt":  # warm up the detector / first-size work outside the timing
                        pipeline(decode_image(images_dir / first_file))
                    if box_source in (None, "gt"):  # keep the people for the keypoint agreement
                        pipeline = Recorder(pipeline)
                        recorders.setdefault(box_source or "bottom-up", {})[label] = (is_reference, pipeline)
                    metrics = _evaluate_quietly(pipeline, ann_file, images_dir, box_source)
                    run = AccuracyRun(
                        model, box_source or "bottom-up", label, is_reference, metrics, forward_ms
                    )
                    report.runs.append(run)
                    log(
                        f"{model:18s} {run.boxes:9s} {label:28s} AP {run.ap:5.1f}  "
                        f"{metrics['seconds']:.1f} s / {metrics['num_images']} images"
                    )
            for box_name, recorded in recorders.items():
                report.agreements += keypoint_agreement(model, box_name, recorded, spec)
    report.comparisons = compare(report.runs)
    report.info = _machine_info(threads, images, backend)
    return report


def _machine_info(threads: int, images: int | None, backend: str) -> dict[str, Any]:
    import numpy as np
    import torch

    versions: dict[str, str] = {"python": platform.python_version(), "torch": torch.__version__,
                                "numpy": np.__version__}  # fmt: skip
    from importlib.metadata import PackageNotFoundError, version

    for package in ("openvino", "ai-edge-litert", "onnxruntime"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
        "threads": threads,
        "images": images if images is not None else "all",
        "backend": backend,
        "versions": versions,
        "command": " ".join(["python -m rtpose.benchmarks.accuracy", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
    }


def format_table(report: AccuracyReport) -> str:
    """The runs (AP, AP50, AR, seconds) and the comparisons (dAP) as two plain-text tables."""
    header = f"{'model':18s} {'boxes':9s} {'engine':28s} {'AP':>5s} {'AP50':>5s} {'AR':>5s} {'people':>6s}"
    lines = [f"{header} {'s':>6s} {'fwd ms':>7s}"]
    for run in report.runs:
        m = run.metrics
        lines.append(
            f"{run.model:18s} {run.boxes:9s} {run.engine:28s} {100 * m['AP']:5.1f} {100 * m['AP50']:5.1f} "
            f"{100 * m['AR']:5.1f} {m['num_people']:6d} {m['seconds']:6.1f} {run.forward_ms:7.1f}"
        )
    lines += [
        "",
        f"{'model':18s} {'boxes':9s} {'ours':28s} {'reference':24s} {'dAP':>6s}  |dAP|<={DAP_LIMIT}",
    ]
    for c in report.comparisons:
        verdict = "yes" if c.within_limit else "NO"
        lines.append(f"{c.model:18s} {c.boxes:9s} {c.ours:28s} {c.reference:24s} {c.dap:+6.2f}  {verdict}")
    if report.agreements:
        lines += [
            "",
            f"{'model':18s} {'boxes':9s} {'engine':28s} {'reference':24s} {'keypoints':>9s} {'<=1px':>7s} "
            f"{'<=0.5px':>7s}",
        ]
        for a in report.agreements:
            lines.append(
                f"{a.model:18s} {a.boxes:9s} {a.engine:28s} {a.reference:24s} {a.keypoints:9d} "
                f"{100 * a.within_1px:6.1f}% {100 * a.within_half_px:6.1f}%"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from rtpose.benchmarks.bench_models import default_data_dir

    parser = argparse.ArgumentParser(
        prog="python -m rtpose.benchmarks.accuracy",
        description="COCO keypoint AP of the imported models: our engines vs their original runtimes.",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--boxes", nargs="+", default=["gt", "det"], choices=["gt", "det"],
                        help="top-down box sources: ground truth and/or rtmdet-nano detections")  # fmt: skip
    parser.add_argument("--images", type=int, default=None, help="first N images only (default: all 60)")
    parser.add_argument("--backend", default="torch", choices=["torch", "ort"], help="our MoveNet engine")
    parser.add_argument("--openvino-modes", nargs="+", default=["int8", "fq-f32", "float"],
                        choices=["int8", "fq-f32", "float"])  # fmt: skip
    parser.add_argument("--our-modes", nargs="+", default=list(DEFAULT_OPENPOSE_MODES),
                        choices=OUR_OPENPOSE_MODES,
                        help="our openpose-lite engines: int8-emulation (OpenVINO's INT8 CPU execution), "
                        "int8-fake-quantize (the IR's FakeQuantize formula), float")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every runtime")
    parser.add_argument("--data-dir", type=Path, default=None, help="default $RTPOSE_DATA")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    try:
        report = run_accuracy(
            Path(args.data_dir or default_data_dir()), models=args.models, boxes=args.boxes,
            images=args.images, backend=args.backend, openvino_modes=args.openvino_modes,
            our_openpose_modes=args.our_modes, threads=args.threads,
        )  # fmt: skip
    except RtposeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(report))
    if args.out is not None:
        from rtpose.sinks.json_out import write_json

        write_json(report.to_json(), args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
