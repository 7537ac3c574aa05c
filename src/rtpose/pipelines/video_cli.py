"""`rtpose video SRC...`: the multi-stream pipeline on the command line, with a live status line.

The coordinator wires it into `rtpose.cli` with `add_video_parser(subparsers)`; the subcommand's handler
is `run_video(args) -> exit code`. The status line (stderr, redrawn in place about twice a second)
shows per stream: results per second, latency from decode to result, dropped frames (realtime mode)
and, for files, a progress bar.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, TextIO

from rtpose.errors import RtposeError
from rtpose.pipelines.video import Pipeline, stop_on_sigint
from rtpose.settings import parse_count
from rtpose.sources.stream_hub import StreamStats
from rtpose.sources.video import DECODE_MODES
from rtpose.tracking.one_euro import OneEuroParams

logger = logging.getLogger("rtpose.video")

_BAR_WIDTH = 12


def add_video_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "video", help="pose estimation on video files, image folders, cameras and streams",
        description="Run detection + top-down pose on many sources at once, with tracking and smoothing.",
    )  # fmt: skip
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="video file, image folder, camera index (0) or /dev/videoN, rtsp:// or http:// URL",
    )
    parser.add_argument(
        "--pose", default="rtmpose-t", help="pose model name or weight file (default rtmpose-t)"
    )
    parser.add_argument("--pose-weights", default=None, help="weight file for the --pose model")
    parser.add_argument(
        "--det", default="rtmdet-nano", help="detector name or weight file (default rtmdet-nano)"
    )
    parser.add_argument("--det-weights", default=None, help="weight file for the --det model")
    parser.add_argument(
        "--backend", default="ort", choices=("auto", "ort", "torch", "compiled"),
        help="ONNX Runtime (CPU), PyTorch eager, or a compiled engine (see 'rtpose build'); "
             "auto = compiled on CUDA, ONNX Runtime on CPU (default ort)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch and compiled backends)")
    parser.add_argument(
        "--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
        help="engine precision; fp16/bf16 need the compiled backend (default fp32)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, metavar="DIR", help="write an annotated MP4 per stream here")
    parser.add_argument(
        "--jsonl", default=None, metavar="FILE", help="one JSON line per frame ('-' = stdout)"
    )
    parser.add_argument(
        "--det-interval",
        type=int,
        default=5,
        metavar="N",
        help="run the detector every N frames; between them boxes follow the keypoints",
    )
    parser.add_argument("--batch", type=int, default=8, metavar="N", help="at most N streams per batch")
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=0.02,
        metavar="S",
        help="seconds to wait for slower streams before running a partial batch",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="drop the oldest frames when the model falls behind (default: lose nothing)",
    )
    parser.add_argument(
        "--decode", default="auto", choices=DECODE_MODES,
        help="where to decode video: cpu (FFmpeg threads), nvdec (the GPU's decoder; frames come back to "
             "host memory) or auto (= cpu: faster per stream on the H100 host, and no CUDA context per "
             "stream taking turns with the models; see docs/benchmarks.md) (default auto)",
    )  # fmt: skip
    parser.add_argument(
        "--loop",
        action="store_true",
        help="play video files again from the start when they end (stop with Ctrl-C)",
    )
    parser.add_argument("--no-track", action="store_true", help="no tracking ids (implies --no-smooth)")
    parser.add_argument("--no-smooth", action="store_true", help="no One-Euro smoothing of keypoints")
    parser.add_argument(
        "--min-cutoff", type=float, default=1.0, help="One-Euro min cutoff in Hz (lower: smoother)"
    )
    parser.add_argument(
        "--beta", type=float, default=0.05, help="One-Euro speed coefficient (higher: less lag)"
    )
    parser.add_argument(
        "--d-cutoff", type=float, default=1.0, help="One-Euro cutoff of the speed estimate, Hz"
    )
    parser.add_argument(
        "--workers", default="auto", metavar="N|auto",
        help="spread the streams over N processes, each decoding, inferring and tracking its own streams; "
             "on the H100 with 8 streams, 8 workers under MPS (see --mps) ran 761-981 frames/s against 177 "
             "for one process (see docs/benchmarks.md). auto: on a CUDA device one process per stream, at "
             "most half the cores and 8; on the CPU one process (2 workers on 2 cores were slower) "
             "(default auto)",
    )  # fmt: skip
    parser.add_argument(
        "--model-server", action="store_true",
        help="with --workers: run the models in one more process that serves every worker (one copy of "
             "the engines, one GPU context, batches of all streams); the workers decode, track and draw. "
             "On a GPU it keeps two batched steps in flight; on the H100 (8 streams, 8 workers) it "
             "runs on par with models in every worker, not faster (915 vs 919 frames/s with "
             "--det-interval 5, 799 vs 891 every frame)",
    )  # fmt: skip
    parser.add_argument(
        "--mps", default="auto", choices=["auto", "on", "off"],
        help="with --workers on a GPU: run the workers under a private CUDA MPS daemon, so their kernels "
             "share the GPU at once instead of taking turns (on the H100, 8 workers: 441 -> 750 frames/s). "
             "auto: on for 2+ workers with their own models where the daemon starts (else a warning); "
             "on: an error where it cannot; the daemon is quit at the end (default auto)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no status line")
    parser.set_defaults(handler=run_video)
    return parser


def _bar(done: int, total: int) -> str:
    filled = min(_BAR_WIDTH, round(_BAR_WIDTH * done / total)) if total else 0
    return "[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + f"] {min(100, 100 * done // max(total, 1)):3d}%"


def status_line(pipeline: Any, stats: dict[str, StreamStats]) -> str:
    """One line for all streams: `name fps latency drops [bar]` per stream (`stats`: the pipeline's
    `stream_stats()`; a stream missing there has ended)."""
    parts = []
    for name, rate in pipeline.rates.items():
        stream = stats.get(name)
        if stream is None and rate.frames == 0:
            continue
        text = f"{name}: {rate.fps:5.1f} fps {rate.latency * 1000:5.0f} ms"
        if stream is not None and stream.dropped:
            text += f" {stream.dropped} dropped"
        if stream is not None and stream.total_frames and stream.kind not in ("camera", "url"):
            text += " " + _bar(rate.frames, stream.total_frames)
        elif stream is None:
            text += " done"
        parts.append(text)
    return " | ".join(parts)


class StatusPrinter:
    """Redraws the status line in place at most every `interval` seconds (only on a terminal)."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 0.5) -> None:
        self.stream, self.interval = stream, interval
        self._last = 0.0
        self._width = 0

    def update(self, line: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        padded = line.ljust(self._width)
        self._width = len(line)
        self.stream.write("\r" + padded)
        self.stream.flush()

    def finish(self) -> None:
        if self._width:
            self.stream.write("\n")
            self.stream.flush()


def worker_count(requested: str, device: str, sources: int, cores: int | None = None) -> int:
    """The number of worker processes `--workers` asks for (see its help); bad values raise."""
    if requested != "auto":
        return parse_count(requested, "--workers", 1, accepted="a number or 'auto'")
    if not str(device).startswith("cuda"):
        return 1
    cores = cores if cores is not None else os.cpu_count() or 1
    return max(1, min(sources, 8, cores // 2))


def run_video(args: argparse.Namespace) -> int:
    """Exit code 0 when every stream ended cleanly, 1 when one failed, 130 on a second Ctrl-C."""
    options = dict(
        backend=args.backend, device=args.device, precision=args.precision, pose_weights=args.pose_weights,
        det_weights=args.det_weights, det_interval=args.det_interval, batch_size=args.batch,
        batch_timeout=args.batch_timeout, realtime=args.realtime, decode=args.decode, loop=args.loop,
        track=not args.no_track, smooth=not (args.no_smooth or args.no_track),
        one_euro=OneEuroParams(args.min_cutoff, args.beta, args.d_cutoff), out_dir=args.out, jsonl=args.jsonl,
    )  # fmt: skip
    try:
        workers = worker_count(args.workers, args.device, len(args.sources))
        if workers > 1 or args.model_server:
            from rtpose.pipelines.multiprocess import ProcessPipeline

            pipeline: Any = ProcessPipeline(
                args.pose,
                args.det,
                workers=workers,
                model_server=args.model_server,
                mps=args.mps,
                **options,
            )
        else:
            pipeline = Pipeline(args.pose, args.det, **options)
    except RtposeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    show_status = not args.quiet and sys.stderr.isatty()
    printer = StatusPrinter()
    try:
        for source in args.sources:
            try:
                pipeline.add_source(source)
            except RtposeError as exc:  # a bad name is reported; the other sources still run
                print(f"error: {exc}", file=sys.stderr)
        with stop_on_sigint(pipeline):
            for _ in pipeline:
                if show_status:
                    printer.update(status_line(pipeline, pipeline.stream_stats()))
    except KeyboardInterrupt:
        printer.finish()
        print("interrupted; outputs closed", file=sys.stderr)
        return 130
    finally:
        pipeline.close()
    if show_status:
        printer.update(status_line(pipeline, {}), force=True)
        printer.finish()
    failed = [end for end in pipeline.ended if end.reason == "failed"]
    for end in pipeline.ended:
        detail = f" ({end.error})" if end.error else ""
        print(f"{end.stream}: {end.reason} after {end.frames} frames{detail}", file=sys.stderr)
    if not pipeline.ended:
        return 1
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m rtpose.pipelines.video_cli` (until the coordinator wires `rtpose video`)."""
    parser = argparse.ArgumentParser(prog="rtpose")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_video_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
