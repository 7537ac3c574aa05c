"""The `rtpose` command: detect | predict | eval | export | build | models.

Exit codes: 0 when everything worked, 1 when any item (or the model) failed, 2 for usage errors.
Errors meant for users (`RtposeError`) print as one line; `-v` adds the traceback and debug logging.
Heavy modules (torch, the pipelines) are imported by the subcommand that needs them, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rtpose.errors import RtposeError
from rtpose.types import ImageResult

logger = logging.getLogger("rtpose")

DEMO_IMAGE_COUNT = 3
PROGRESS_BAR_FROM = 10  # images


# -- logging -----------------------------------------------------------------------------------------


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of each record (works under capture too)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    if not any(isinstance(h, _CurrentStderrHandler) for h in logger.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("rtpose: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


# -- argument parsing --------------------------------------------------------------------------------


BACKEND_CHOICES = ("auto", "ort", "torch", "compiled")
PRECISION_CHOICES = ("fp32", "fp16", "bf16", "int8")


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKEND_CHOICES, default="auto",
        help="inference backend: ONNX Runtime (CPU), PyTorch eager, or a compiled engine (AOTInductor + "
        "CUDA graphs, built once and cached; see 'rtpose build'); auto = compiled on CUDA, ONNX Runtime "
        "on CPU",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None,
        help="where to run (default: cuda when a GPU is visible, else cpu)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=PRECISION_CHOICES, default="fp32",
        help="engine precision; fp16/bf16 need a compiled engine, int8 runs on ONNX Runtime (CPU; quantised "
        "once, see 'rtpose build --precision int8') (default fp32)",
    )  # fmt: skip


def _add_det_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--det", default="rtmdet-nano", metavar="NAME|FILE", help="detector: zoo name or weight file"
    )
    parser.add_argument(
        "--det-weights", metavar="FILE", help="weights for the detector (overrides the zoo's)"
    )
    parser.add_argument(
        "--det-thr", type=float, default=None, metavar="SCORE", help="detector score threshold"
    )


def _add_pose_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pose", default="rtmpose-m", metavar="NAME|FILE", help="pose model: zoo name or weight file"
    )
    parser.add_argument(
        "--pose-weights", metavar="FILE", help="weights for the pose model (overrides the zoo's)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtpose",
        description="Real-time multi-person 2D human pose estimation (COCO 17 keypoints).",
        epilog="Run 'rtpose COMMAND --help' for the options of a command. Environment: RTPOSE_CACHE "
        "(weights and engines), RTPOSE_OFFLINE_DIR (weight files to use before downloading), RTPOSE_DATA "
        "(test data, --demo).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    detect = sub.add_parser(
        "detect", help="find people (boxes only)", description="Find people in images: boxes and scores."
    )
    detect.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, folders or glob patterns")
    _add_det_options(detect)
    _add_runtime_options(detect)
    detect.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' for stdout)")
    detect.set_defaults(handler=cmd_detect)

    predict = sub.add_parser(
        "predict",
        help="estimate poses",
        description="Estimate the pose of every person: a detector + a top-down pose model, or a bottom-up "
        "model alone (when the pose model's task is pose-bottomup).",
    )
    predict.add_argument("sources", nargs="*", metavar="SOURCE", help="image files, folders or glob patterns")
    _add_pose_options(predict)
    _add_det_options(predict)
    _add_runtime_options(predict)
    predict.add_argument("--out", metavar="DIR", help="write annotated images (skeletons) into this folder")
    predict.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' for stdout)")
    predict.add_argument(
        "--kpt-thr", type=float, default=0.3, help="keypoints below this score are not drawn"
    )
    predict.add_argument(
        "--demo", action="store_true",
        help=f"run on the first {DEMO_IMAGE_COUNT} images of $RTPOSE_DATA/coco/val2017 instead of SOURCEs",
    )  # fmt: skip
    predict.set_defaults(handler=cmd_predict)

    evaluate = sub.add_parser(
        "eval",
        help="COCO keypoint AP/AR",
        description="COCO keypoint AP/AR (pycocotools) of a pose model on an annotated image folder.",
    )
    evaluate.add_argument(
        "--ann", required=True, metavar="FILE", help="COCO person keypoints annotation file"
    )
    evaluate.add_argument("--images", required=True, metavar="DIR", help="folder of the annotated images")
    evaluate.add_argument(
        "--boxes", default="gt", metavar="gt|det|FILE",
        help="person boxes: ground truth, the detector's, or a COCO detection result file (default gt)",
    )  # fmt: skip
    _add_pose_options(evaluate)
    _add_det_options(evaluate)
    _add_runtime_options(evaluate)
    evaluate.add_argument("--metrics", metavar="FILE", help="write the metrics as JSON")
    evaluate.set_defaults(handler=cmd_eval)

    export = sub.add_parser(
        "export",
        help="export a model to ONNX",
        description="Export a model (zoo name or weight file) to ONNX.",
    )
    export.add_argument("model", metavar="NAME|FILE", help="zoo name or weight file")
    export.add_argument("--out", required=True, metavar="FILE.onnx", help="where to write the ONNX file")
    export.add_argument(
        "--task", choices=("detector", "pose-topdown", "pose-bottomup"), default=None,
        help="the model's task (default: the zoo name's; needed for a weight file)",
    )  # fmt: skip
    export.add_argument("--weights", metavar="FILE", help="weights to export (default: the zoo's)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.set_defaults(handler=cmd_export)

    build = sub.add_parser(
        "build",
        help="build an optimized engine",
        description="Compile a model into an engine for this GPU (or CPU): BatchNorm folded, kernels fused "
        "and autotuned, fp16/bf16, CUDA graphs per batch size at load time. The engine is cached in "
        "$RTPOSE_CACHE/engines and reused by every command with --backend compiled (or auto on CUDA); "
        "building again finds it there unless --force.",
    )
    build.add_argument("model", metavar="NAME|FILE", help="zoo name or weight file")
    build.add_argument(
        "--weights", metavar="FILE",
        help="weights to build with (default: the zoo's); 'random' = seeded random weights, for speed "
        "measurements only",
    )  # fmt: skip
    build.add_argument(
        "--task", choices=("detector", "pose-topdown", "pose-bottomup"), default=None,
        help="the model's task (default: the zoo name's; needed for a weight file)",
    )  # fmt: skip
    build.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda",
        help="build for this device (default cuda; cpu builds a CPU AOTInductor engine)",
    )  # fmt: skip
    build.add_argument(
        "--precision", choices=PRECISION_CHOICES, default="fp16",
        help="default fp16; int8 (with --device cpu) quantises the ONNX export for ONNX Runtime",
    )  # fmt: skip
    build.add_argument(
        "--calib", metavar="DIR", default=None,
        help="int8: folder of typical images to calibrate on (default $RTPOSE_CALIB_DIR, else the sample "
        "COCO train2017 images)",
    )  # fmt: skip
    build.add_argument(
        "--max-batch", type=int, default=64, metavar="N",
        help="largest batch the engine takes in one call (CUDA graphs for 1, 2, 4, ... N; default 64)",
    )  # fmt: skip
    build.add_argument("--force", action="store_true", help="rebuild even when a valid engine is cached")
    build.set_defaults(handler=cmd_build)

    from rtpose.benchmarks.cli import add_bench_parser, run_bench
    from rtpose.pipelines.video_cli import add_video_parser, run_video

    video = add_video_parser(sub)
    video.set_defaults(handler=run_video)

    bench = add_bench_parser(sub)
    bench.set_defaults(handler=run_bench)

    models = sub.add_parser(
        "models", help="list the model zoo", description="The model zoo, and which weights are found offline."
    )
    models.set_defaults(handler=cmd_models)
    return parser


# -- helpers -----------------------------------------------------------------------------------------


def resolve_runtime(backend: str, device: str | None) -> tuple[str, str]:
    """(backend, device) from the options: auto backend = compiled on CUDA, ONNX Runtime on the CPU."""
    if device is None:
        device = "cuda" if _cuda_available() else "cpu"
    if backend == "auto":
        backend = "compiled" if device == "cuda" else "ort"
        logger.info("backend auto: %s on %s", backend, device)
    return backend, device


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pose_task(name_or_file: str) -> str:
    """The task of a pose model: from the zoo spec of a name; a weight file is taken as top-down."""
    from rtpose.models.spec import get_spec

    path = Path(name_or_file)
    if path.suffix and path.exists():
        return "pose-topdown"
    return get_spec(name_or_file).task


def demo_sources() -> list[Path]:
    """The first images of $RTPOSE_DATA/coco/val2017 (default ../shared/data from the cwd, then the repo)."""
    from rtpose.sources.files import sample_images

    return sample_images(DEMO_IMAGE_COUNT, purpose="--demo")


def _unique_output_path(out_dir: Path, source: str, used: set[Path]) -> Path:
    path = out_dir / Path(source).name
    if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"):
        path = path.with_suffix(".jpg")
    stem, index = path.stem, 1
    while path in used:
        path = path.with_name(f"{stem}_{index}{path.suffix}")
        index += 1
    used.add(path)
    return path


def process_sources(
    predict: Callable[[Any], list[Any]],
    sources: Sequence[str | Path],
    *,
    on_image: Callable[[ImageResult, Any], None] | None = None,
) -> list[ImageResult]:
    """Run `predict` over the sources, printing one line per image and a final summary."""
    from tqdm import tqdm

    from rtpose.pipelines.runner import decode_and_predict
    from rtpose.sources.files import expand_sources

    items = expand_sources(sources)
    results: list[ImageResult] = []
    total_seconds = 0.0
    bar = tqdm(items, unit="img", file=sys.stderr, disable=len(items) < PROGRESS_BAR_FROM, leave=False)
    for path in bar:
        start = time.perf_counter()
        result, image = decode_and_predict(predict, path)
        seconds = time.perf_counter() - start
        total_seconds += seconds
        if result.ok and on_image is not None:
            try:
                on_image(result, image)
            except RtposeError as exc:
                result.error = str(exc)
        results.append(result)
        if result.ok:
            line = f"{result.file}: {len(result.people)} people, {seconds * 1000:.1f} ms"
        else:
            line = f"{result.file}: ERROR {result.error}"
        tqdm.write(line, file=sys.stdout)
    failed = sum(not r.ok for r in results)
    people = sum(len(r.people) for r in results)
    mean_ms = total_seconds / max(len(results), 1) * 1000
    print(
        f"{len(results)} images: {len(results) - failed} ok, {failed} failed, {people} people, "
        f"{mean_ms:.1f} ms per image (decode + inference)"
    )
    return results


def _write_json(results: list[ImageResult], path: str) -> None:
    from rtpose.sinks.json_out import write_json

    write_json([r.to_json() for r in results], path)
    if path != "-":
        logger.info("wrote %s", path)


def _exit_code(results: list[ImageResult]) -> int:
    return 1 if any(not r.ok for r in results) or not results else 0


# -- commands ----------------------------------------------------------------------------------------


def cmd_detect(args: argparse.Namespace) -> int:
    from rtpose.pipelines.detector import Detector

    backend, device = resolve_runtime(args.backend, args.device)
    detector = Detector(
        args.det, backend=backend, device=device, weights=args.det_weights, score_thr=args.det_thr,
        precision=args.precision,
    )  # fmt: skip
    results = process_sources(detector, args.sources)
    if args.json:
        _write_json(results, args.json)
    return _exit_code(results)


def _make_pose_pipeline(args: argparse.Namespace, *, with_detector: bool = True) -> Any:
    backend, device = resolve_runtime(args.backend, args.device)
    if pose_task(args.pose) == "pose-bottomup":
        from rtpose.pipelines.bottomup import BottomUp

        return BottomUp(
            args.pose, backend=backend, device=device, weights=args.pose_weights, precision=args.precision
        )
    from rtpose.pipelines.topdown import TopDown

    return TopDown(
        args.pose,
        args.det if with_detector else None,
        backend=backend,
        device=device,
        pose_weights=args.pose_weights,
        det_weights=args.det_weights,
        det_score_thr=args.det_thr,
        precision=args.precision,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    if args.demo and args.sources:
        raise _UsageError("give either SOURCEs or --demo, not both")
    if not args.demo and not args.sources:
        raise _UsageError("no SOURCE given (image files, folders, glob patterns), or use --demo")
    sources: list[str | Path] = list(demo_sources() if args.demo else args.sources)
    pipeline = _make_pose_pipeline(args)

    on_image = None
    if args.out:
        import cv2

        from rtpose.sinks.draw import draw_people

        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        used: set[Path] = set()

        def on_image(result: ImageResult, image: Any) -> None:
            target = _unique_output_path(out_dir, result.file, used)
            if not cv2.imwrite(str(target), draw_people(image, result.people, kpt_thr=args.kpt_thr)):
                raise RtposeError(f"cannot write {target}")

    results = process_sources(pipeline, sources, on_image=on_image)
    if args.out:
        logger.info("annotated images in %s", args.out)
    if args.json:
        _write_json(results, args.json)
    return _exit_code(results)


def cmd_eval(args: argparse.Namespace) -> int:
    from rtpose.evaluation.coco import evaluate

    pipeline = _make_pose_pipeline(args, with_detector=args.boxes == "det")
    metrics = evaluate(pipeline, args.ann, args.images, boxes=args.boxes, metrics_path=args.metrics)
    if args.metrics:
        logger.info("wrote %s", args.metrics)
    failed = int(metrics.get("num_failed", 0) or 0)
    if failed:
        for item in metrics.get("failed", []) or []:
            logger.error("failed: %s", item)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from rtpose.engines.factory import export_model

    task = args.task
    if task is None:
        path = Path(args.model)
        if path.suffix and path.exists():
            raise _UsageError(
                "--task is needed when exporting a weight file (detector, pose-topdown, pose-bottomup)"
            )
        from rtpose.models.spec import get_spec

        task = get_spec(args.model).task
    out = export_model(args.model, args.out, task=task, weights=args.weights, opset=args.opset)
    print(f"exported {args.model} to {out}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from rtpose.engines.factory import build_compiled

    if args.max_batch < 1:
        raise _UsageError(f"--max-batch must be at least 1, not {args.max_batch}")
    task = args.task
    if task is None:
        path = Path(args.model)
        if path.suffix and path.exists():
            raise _UsageError("--task is needed when building a weight file (detector, pose-topdown, ...)")
        from rtpose.models.spec import get_spec

        task = get_spec(args.model).task
    start = time.perf_counter()
    if args.precision == "int8":
        if args.device != "cpu":
            raise _UsageError("--precision int8 builds an ONNX Runtime model for the CPU: add --device cpu")
        from rtpose.engines.factory import build_int8

        path, spec = build_int8(
            args.model, task=task, weights=args.weights, calibration=args.calib, force=args.force
        )
        print(f"engine: {path} (ONNX Runtime, int8)")
        print(f"model: {spec.name} ({task}), calibration: {path.with_suffix('.json')}")
        print(f"total: {time.perf_counter() - start:.1f} s")
        return 0
    build, spec = build_compiled(
        args.model, task=task, weights=args.weights, device=args.device, precision=args.precision,
        max_batch=args.max_batch, force=args.force, progress=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    state = f"built ({build.reason})" if build.built else f"reused ({build.reason})"
    print(f"engine: {build.path}")
    print(f"model: {spec.name} ({task}), device {args.device}, {args.precision}, max batch {args.max_batch}")
    print(f"state: {state}")
    for stage, stage_seconds in build.stage_seconds.items():
        print(f"  {stage}: {stage_seconds:.1f} s")
    print(f"total: {seconds:.1f} s")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from rtpose.models.factory import describe_zoo

    rows = describe_zoo()
    header = ("name", "task", "input", "params", "weights here")
    table = [header]
    for row in rows:
        size = row.get("input_size")
        params = row.get("params_m")
        where = (
            f"{row['available']}: {row['path']}"
            if row.get("available")
            else ("download" if row.get("url") else "-")
        )
        table.append((
            str(row["name"]), str(row["task"]), f"{size[0]}x{size[1]}" if size else "-",
            f"{params:.2f} M" if params is not None else "-", where,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


# -- entry point -------------------------------------------------------------------------------------


class _UsageError(Exception):
    """Wrong combination of options: reported like argparse's errors, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    _setup_logging(args.verbose)
    try:
        return int(args.handler(args))
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"rtpose {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RtposeError as exc:
        logger.error("error: %s", exc, exc_info=args.verbose)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
