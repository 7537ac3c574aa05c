"""The `rtpose bench` subcommand: `add_bench_parser(subparsers)` and `run_bench(args)`.

Presets fill the options the user left out:

- `cpu`: the CPU comparison of ONNX Runtime against PyTorch eager: 2 threads for both, rtmpose-m at
  batch 1 (one person per call) and 10 (all persons of a street frame in one call), rtmdet-nano at
  batch 1, and the whole pipeline on the street frame;
- `gpu`: every backend on CUDA, pose batches 1, 8, 64, 256, detector batches 1 and 8; ONNX Runtime
  (CPU) joins up to batch 8.

Without a preset the defaults are those of `BenchConfig` (eager and ONNX Runtime on the CPU; every
backend on CUDA). Also runnable alone: `python -m rtpose.benchmarks.cli [options]`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtpose.errors import RtposeError

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "device": "cpu", "backends": "eager,ort", "batches": "1,10", "det_batches": "1", "threads": 2,
        "runs": 30, "warmup": 3,
    },
    "gpu": {
        "device": "cuda", "backends": "eager,ort,compiled-fp32,compiled-fp16,compiled-bf16",
        "batches": "1,8,64,256", "det_batches": "1,8", "runs": 100, "warmup": 10, "ort_max_batch": 8,
    },
}  # fmt: skip
DEFAULTS: dict[str, Any] = {
    "device": None, "backends": None, "batches": "1,8,64,256", "det_batches": "1", "threads": None,
    "runs": 50, "warmup": 5, "ort_max_batch": 256,
}  # fmt: skip


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench` on an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "bench",
        help="per-stage latency and throughput of every backend, side by side",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_options(parser)
    return parser


def _add_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--pose", default="rtmpose-m", help="top-down pose model (random weights when none are here)")
    add("--det", default="rtmdet-nano", help="person detector")
    add("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when visible, else cpu")
    add("--backends", default=None, metavar="LIST",
        help="comma list of eager, ort, compiled-fp32, compiled-fp16, compiled-bf16 "
             "(default: eager,ort on cpu; all on cuda)")  # fmt: skip
    add("--batches", default=None, metavar="LIST", help="pose model batch sizes (default 1,8,64,256)")
    add("--det-batches", default=None, metavar="LIST", help="detector batch sizes (default 1)")
    add("--sections", default="pose,detector,pipeline", metavar="LIST",
        help="sections: pose, detector, pipeline (staged), topdown (TopDown.predict_batch: stage-timed, "
             "wall time per call, and on CUDA op by op without its CUDA-graph stages)")  # fmt: skip
    add("--pipeline-image", type=Path, default=None, metavar="FILE",
        help="image for the pipeline section (default: a 1280x720 street frame with ~10 people)")  # fmt: skip
    add("--frame", type=int, default=None, metavar="N", help="frame of the street video (default 20)")
    add("--runs", type=int, default=None, help="timed calls per row (default 50)")
    add("--warmup", type=int, default=None, help="warm-up calls per row (default 5)")
    add("--max-seconds", type=float, default=20.0, help="stop a row after this long (>= 3 runs)")
    add("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads")
    add("--ort-max-batch", type=int, default=None, help="largest batch timed with ONNX Runtime")
    add("--preset", choices=sorted(PRESETS), default=None, help="cpu: issue-2 CPU comparison; gpu: all")
    add("--cache-dir", type=Path, default=None, help="engine cache (default $RTPOSE_CACHE)")
    add("--out", type=Path, default=Path("runs/bench"), help="folder for bench.json, bench.md, bench.png")


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise RtposeError(f"{option} must be a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise RtposeError(f"{option} needs positive integers, got {text!r}")
    return values


def config_from_args(args: argparse.Namespace) -> Any:
    """A `BenchConfig` from parsed options: explicit option > preset > default."""
    import torch

    from rtpose.benchmarks.bench import BenchConfig
    from rtpose.benchmarks.bench_models import BACKENDS

    preset = PRESETS.get(args.preset or "", {})

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else preset.get(name, DEFAULTS.get(name))

    device = pick("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    backends_text = pick("backends") or ("eager,ort" if device == "cpu" else ",".join(BACKENDS))
    backends = tuple(b.strip() for b in backends_text.split(",") if b.strip())
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise RtposeError(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    bad = [s for s in sections if s not in ("pose", "detector", "pipeline", "topdown")]
    if bad or not sections:
        raise RtposeError(f"unknown sections {bad}; choose from pose, detector, pipeline, topdown")
    runs, warmup = int(pick("runs")), int(pick("warmup"))
    if runs < 1 or warmup < 0:
        raise RtposeError("--runs must be >= 1 and --warmup >= 0")
    return BenchConfig(
        pose=args.pose, det=args.det, device=device, backends=backends,
        batches=_int_list(pick("batches"), "--batches"),
        det_batches=_int_list(pick("det_batches"), "--det-batches"),
        pipeline_image=args.pipeline_image, frame_index=args.frame if args.frame is not None else 20,
        sections=sections, runs=runs, warmup=warmup, min_runs=min(3, runs), max_seconds=args.max_seconds,
        threads=pick("threads"), ort_max_batch=int(pick("ort_max_batch")), cache_dir=args.cache_dir,
        out=args.out, preset=args.preset,
    )  # fmt: skip


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark the options describe; prints the markdown report. 0 on success, 1 on error."""
    from rtpose.benchmarks.bench import Bench, write_outputs
    from rtpose.benchmarks.bench_report import markdown

    try:
        config = config_from_args(args)
        report = Bench(config).run()
        written = write_outputs(report, config.out)
    except RtposeError as exc:
        print(f"rtpose bench: {exc}", file=sys.stderr)
        return 1
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rtpose.benchmarks.cli", description=__doc__.splitlines()[0]
    )
    _add_options(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
