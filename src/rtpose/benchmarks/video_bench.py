"""Video pipeline measurements on this machine: `python -m rtpose.benchmarks.video_bench`.

1. throughput: frames/s of the whole pipeline (decode, detector every N frames, pose, tracking,
   smoothing, JSONL) for 1, 2 and 4 copies of the street video (looped), ONNX Runtime on the CPU by
   default, any backend/device/precision by option; with `--baseline`, in the same run, the plain
   sequential loop (decode a frame, detect, crop, pose with PyTorch eager, one frame at a time);
2. tracking quality on the street video without ground-truth tracks, by proxies:
   - births: tracks whose first frame is after the first `settle` frames. On a street people do walk in,
     so this is an upper bound of fragmentation (a broken track reappears as a birth);
   - short tracks: tracks reported on fewer than `short` frames (fragments or false positives);
   - jumps: consecutive reports of one id whose box centre moved more than half the box height in one
     frame: the id hopped to a spatially distant person (an ID switch that IoU tracking can make);
3. jitter: for the most static long track (a standing person), the mean absolute second difference of
   its keypoints (pixels per frame^2, confident keypoints only), with and without One-Euro smoothing;
4. memory: RSS and traced Python memory over a long run of a tiny synthetic source with a fake model.

Models resolve as everywhere else (set RTPOSE_OFFLINE_DIR to the shared models folder here).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rtpose.pipelines.video import FrameResult, Pipeline
from rtpose.tracking.one_euro import OneEuroParams, PoseSmoother
from rtpose.types import Person


def _default_video() -> Path:
    from rtpose.benchmarks.bench_models import default_data_dir

    return default_data_dir() / "video" / "openpose_video.avi"


# -- 1. throughput ----------------------------------------------------------------------------------
def throughput(
    video: Path,
    streams: int,
    frames: int,
    pose: str,
    det_interval: int,
    batch: int,
    warmup: int = 0,
    workers: int = 1,
    model_server: bool = False,
    server_wait: float = 0.002,
    mps: str = "auto",
    **kw: Any,
) -> dict:
    """Steady-state frames/s of `streams` looped copies of `video` (`frames` timed per stream after
    `warmup` per stream, see `_timed`), JSONL written to a temporary file. workers > 1 or model_server:
    the streams are spread over that many processes (`ProcessPipeline`), with the models in a model
    server process or in every worker, under a private MPS daemon or not (`mps`)."""
    with tempfile.TemporaryDirectory(prefix="rtpose-video-bench-") as tmp:
        jsonl = Path(tmp) / "poses.jsonl"
        options = dict(det_interval=det_interval, batch_size=batch, loop=True, jsonl=jsonl)
        if workers > 1 or model_server:
            from rtpose.pipelines.multiprocess import ProcessPipeline

            if model_server:
                options["server_wait"] = server_wait
            pipeline: Any = ProcessPipeline(
                pose, "rtmdet-nano", workers=workers, model_server=model_server, mps=mps, **options, **kw
            )
        else:
            pipeline = Pipeline(pose, "rtmdet-nano", **options, **kw)
        result = _timed(pipeline, video, streams, frames, warmup)
        served = getattr(pipeline, "server_stats", None)
    row = {"det_interval": det_interval, "batch": batch, "workers": workers, "model_server": model_server,
           "mps": bool(getattr(pipeline, "mps_used", False))}  # fmt: skip
    window = result.pop("window")
    if served:
        row["server"] = _server_share(served, *window)
    return {**row, **result}


def _server_share(stats: dict, start: float, end: float) -> dict:
    """What the model server did in the timed window [start, end] (monotonic seconds), from the whole
    seconds of its timeline inside the window: steps, frames per step, ms per step, busy fraction."""
    inside = range(int(start) + 1, int(end)) if end - start >= 3 else range(int(start), int(end) + 1)
    seconds = [stats.get("timeline", {}).get(second, [0, 0, 0.0]) for second in inside]
    steps, frames, busy = (sum(v[i] for v in seconds) for i in range(3))
    return {
        "steps": int(steps),
        "frames_per_step": round(frames / steps, 2) if steps else None,
        "ms_per_step": round(1000 * busy / steps, 2) if steps else None,
        "busy_share": round(busy / max(len(inside), 1), 3),
        "whole_run": {k: round(v, 2) for k, v in stats.items() if k != "timeline"},
    }


def _timed(pipeline: Any, video: Path, streams: int, frames: int, warmup: int = 0) -> dict:
    """Steady-state frames/s: the looped streams run until every one of them has given `warmup` results
    (model loading, worker start-up and the CUDA-graph captures of each batch shape and person bucket
    happen there), then `frames * streams` results are timed with every stream running, then the
    pipeline is left (which closes it). `warm_s` says how long the warm-up took, `cpu_busy` which share of
    the whole machine's CPU time was busy in the timed window (a saturated CPU reads near 1)."""
    names = [pipeline.add_source(video, name=f"s{i}") for i in range(streams)]
    counts = dict.fromkeys(names, 0)
    cold = set(names) if warmup > 0 else set()
    latencies: list[float] = []
    began, window_start, cpu_start = time.perf_counter(), time.monotonic(), cpu_times()
    start: float | None = None if cold else began
    timed, wanted = 0, frames * streams
    for result in pipeline:
        counts[result.stream] += 1
        if start is None:
            if counts[result.stream] >= warmup:
                cold.discard(result.stream)
            if not cold:
                start = time.perf_counter()  # the clock starts once every stream is warm
                window_start = time.monotonic()
                cpu_start = cpu_times()
            continue
        timed += 1
        latencies.append(result.latency)
        if timed == wanted:
            break
    end = time.perf_counter()
    cpu_end = cpu_times()
    window = (window_start, time.monotonic())
    elapsed = end - start if start is not None else 0.0
    latency = round(1000 * float(np.median(latencies)), 1) if latencies else None
    fps = round(timed / elapsed, 2) if elapsed > 0 else None
    return {"streams": streams, "frames": timed, "warm_s": round((start or end) - began, 2),
            "seconds": round(elapsed, 2), "fps_total": fps,
            "fps_per_stream": round(fps / streams, 2) if fps else None,
            "latency_ms_median": latency, "cpu_busy": cpu_busy_share(cpu_start, cpu_end),
            "window": window}  # fmt: skip


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs of the machine since boot (Linux `/proc/stat`), else None."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = sum(fields[3:5])  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy_share(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time that was busy between two `cpu_times()` (None if unknown)."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round((end[0] - start[0]) / (end[1] - start[1]), 3)


def sequential_baseline(video: Path, frames: int, pose: str, device: str, **kw) -> dict:
    """The plain loop: decode one frame (PyAV), detect, crop (OpenCV), pose (PyTorch eager), next frame."""
    from rtpose.pipelines.topdown import TopDown
    from rtpose.sources.video import iter_decoded, open_video, parse_source

    topdown = TopDown(pose, "rtmdet-nano", backend="torch", device=device, processing="numpy", **kw)
    done, people, start = 0, 0, 0.0
    while done < frames:
        opened = open_video(parse_source(video), "cpu")
        try:
            for image, _ in iter_decoded(opened):
                if done == 1:
                    start = time.perf_counter()  # after the first frame: warm-up excluded
                people += len(topdown(image))
                done += 1
                if done == frames:
                    break
        finally:
            opened.container.close()
    elapsed = time.perf_counter() - start
    return {"pipeline": "sequential eager", "device": device, "frames": done,
            "fps": round((done - 1) / elapsed, 2), "people_per_frame": round(people / done, 2)}  # fmt: skip


# -- 2. and 3. tracking quality and jitter ---------------------------------------------------------
def _run_tracks(video: Path, pose: str, det_interval: int, frames: int) -> list[FrameResult]:
    """Results of the pipeline without smoothing (tracking on)."""
    pipeline = Pipeline(pose, "rtmdet-nano", det_interval=det_interval, smooth=False)
    pipeline.add_source(video, name="street")
    results = []
    for result in pipeline:
        result.image = None  # keep memory small
        results.append(result)
        if len(results) == frames:
            pipeline.remove_source("street")
    return results


def smoothed(results: list[FrameResult], params: OneEuroParams | None = None) -> list[FrameResult]:
    """The same results smoothed afterwards: what the pipeline with smoothing reports, since smoothing is its
    last step and nothing feeds back from it (boxes for the next frame come from unsmoothed keypoints)."""
    smoother = PoseSmoother(params)
    return [dataclasses.replace(r, people=smoother(r.people, r.time)) for r in results]


def track_quality(results: list[FrameResult], settle: int = 10, short: int = 10) -> dict:
    by_id: dict[int, list[tuple[int, Person]]] = defaultdict(list)
    for result in results:
        for person in result.people:
            if person.track_id is not None:
                by_id[person.track_id].append((result.frame, person))
    jumps = 0
    for reports in by_id.values():
        for (f0, a), (f1, b) in itertools.pairwise(reports):
            if f1 != f0 + 1:
                continue
            centre_a, centre_b = (a.bbox[:2] + a.bbox[2:]) / 2, (b.bbox[:2] + b.bbox[2:]) / 2
            if np.linalg.norm(centre_b - centre_a) > 0.5 * max(float(a.bbox[3] - a.bbox[1]), 1.0):
                jumps += 1
    lengths = [len(r) for r in by_id.values()]
    return {
        "frames": len(results),
        "people_per_frame_mean": round(float(np.mean([len(r.people) for r in results])), 2),
        "people_per_frame_max": max(len(r.people) for r in results),
        "track_ids": len(by_id),
        "births_after_first_frames": sum(1 for r in by_id.values() if r[0][0] >= settle),
        "short_tracks": sum(1 for n in lengths if n < short),
        "jumps": jumps,
        "median_track_length": float(np.median(lengths)) if lengths else 0,
    }


def _static_track(results: list[FrameResult], min_length: int = 40) -> int | None:
    """The id of the long track whose box centre moved least (a standing person)."""
    centres: dict[int, list[np.ndarray]] = defaultdict(list)
    for result in results:
        for person in result.people:
            centres[int(person.track_id or -1)].append((person.bbox[:2] + person.bbox[2:]) / 2)
    candidates = {
        tid: float(np.ptp(np.stack(c), axis=0).max())
        for tid, c in centres.items()
        if tid >= 0 and len(c) >= min_length
    }
    return min(candidates, key=candidates.get) if candidates else None  # type: ignore[arg-type]


def jitter(results: list[FrameResult], track_id: int, kpt_thr: float = 0.3) -> float:
    """Mean |x[t] - 2 x[t-1] + x[t-2]| over confident keypoints of consecutive frames of one track."""
    series = {r.frame: p for r in results for p in r.people if p.track_id == track_id}
    values = []
    for frame in sorted(series):
        if frame - 1 in series and frame - 2 in series:
            k0, k1, k2 = (series[f] for f in (frame - 2, frame - 1, frame))
            ok = np.ones(len(k2.keypoints), bool)
            for p in (k0, k1, k2):
                if p.keypoint_scores is not None:
                    ok &= p.keypoint_scores > kpt_thr
            accel = k2.keypoints - 2 * k1.keypoints + k0.keypoints
            values.extend(np.linalg.norm(accel[ok], axis=1).tolist())
    return round(float(np.mean(values)), 3) if values else float("nan")


# -- 4. memory --------------------------------------------------------------------------------------
class _StillModel:
    """Fake FramePoseModel: two people at fixed places with slightly noisy keypoints (no inference)."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.boxes = np.array([[10, 10, 40, 80], [60, 20, 90, 90]], np.float32)

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.boxes.copy(), np.array([0.9, 0.8], np.float32)) for _ in images]

    def pose(self, images: list, boxes: list[np.ndarray], scores: list[np.ndarray]) -> list[list[Person]]:
        out = []
        for frame_boxes, frame_scores in zip(boxes, scores, strict=True):
            people = []
            for box, score in zip(frame_boxes, frame_scores, strict=True):
                grid = np.linspace(box[:2] + 3, box[2:] - 3, 17) + self.rng.normal(0, 0.5, (17, 2))
                people.append(Person(box.astype(np.float32), float(score), grid.astype(np.float32),
                                     np.full(17, 0.9, np.float32)))  # fmt: skip
            out.append(people)
        return out


def memory(frames: int, checkpoints: tuple[int, ...]) -> dict:
    image = np.zeros((96, 128, 3), np.uint8)
    pipeline = Pipeline(model=_StillModel(), det_interval=3, batch_timeout=0.0)
    pipeline.add_source((image for _ in range(frames)), name="long")
    tracemalloc.start()
    out = {}
    for result in pipeline:
        if result.frame + 1 in checkpoints:
            rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            out[result.frame + 1] = {"traced_kib": round(tracemalloc.get_traced_memory()[0] / 1024, 1),
                                     "max_rss_mib": round(rss_mib, 1)}  # fmt: skip
    tracemalloc.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--video", type=Path, default=_default_video())
    parser.add_argument("--pose", default="rtmpose-t", help="pose model for throughput")
    parser.add_argument("--pose-weights", default=None)
    parser.add_argument("--quality-pose", default="movenet-lightning", help="pose model for tracking quality")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--frames", type=int, default=60, help="timed frames per stream for throughput")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed frames per stream before the clock starts")  # fmt: skip
    parser.add_argument("--det-interval", type=int, nargs="+", default=[5], help="detector intervals")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="processes the streams are spread over (each value a row)")  # fmt: skip
    parser.add_argument("--model-server", nargs="+", default=["off"], choices=["off", "on"],
                        help="with workers: the models in one server process (on) or in every worker "
                             "(off); each value a row")  # fmt: skip
    parser.add_argument("--mps", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                        help="with workers on a GPU: run them under a private CUDA MPS daemon (auto: where "
                             "it starts); each value a row")  # fmt: skip
    parser.add_argument("--prepare-graphs", action="store_true",
                        help="make the CUDA-graph steps on each stream's first frame instead of on first "
                             "use (Pipeline(prepare_graphs=True))")  # fmt: skip
    parser.add_argument("--look-ahead", nargs="+", default=["on"], choices=["on", "off"],
                        help="start the next step's detector or pose model before this step's tracking "
                             "where the model can (Pipeline(look_ahead=...)); each value a row")  # fmt: skip
    parser.add_argument("--server-wait", type=float, default=0.002,
                        help="seconds the model server waits for more workers' requests")  # fmt: skip
    parser.add_argument("--decode", default="auto", choices=["auto", "cpu", "nvdec"],
                        help="video decoding of the pipeline rows (auto: the CPU; nvdec: the GPU's "
                             "decoder, frames back in host memory)")  # fmt: skip
    parser.add_argument("--backend", default="ort", help="ort, torch, compiled or auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--baseline", action="store_true", help="also time the sequential eager loop")
    parser.add_argument("--baseline-frames", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--quality-frames", type=int, default=205)
    parser.add_argument("--quality-intervals", type=int, nargs="+", default=[5], help="detector intervals")
    parser.add_argument("--memory-frames", type=int, default=10_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "quality", "memory"])
    args = parser.parse_args(argv)
    report: dict = {}
    engine = {"backend": args.backend, "device": args.device, "precision": args.precision}
    if args.baseline:  # first: the eager models also warm CUDA up for everything after
        report["baseline"] = sequential_baseline(args.video, args.baseline_frames, args.pose, args.device,
                                                 pose_weights=args.pose_weights)  # fmt: skip
        print(json.dumps(report["baseline"]), flush=True)
    if "throughput" not in args.skip:
        report["engine"] = {**engine, "pose": args.pose, "pose_weights": args.pose_weights}
        report["throughput"] = []
        rows = itertools.product(args.det_interval, args.streams, args.workers, args.model_server, args.mps,
                                 args.look_ahead)  # fmt: skip
        for interval, n, workers, server, mps, ahead in rows:
            row = throughput(args.video, n, args.frames, args.pose, interval, args.batch, args.warmup,
                             workers, server == "on", args.server_wait, mps, pose_weights=args.pose_weights,
                             decode=args.decode, prepare_graphs=args.prepare_graphs, look_ahead=ahead == "on",
                             **engine)  # fmt: skip
            row["decode"], row["prepare_graphs"], row["look_ahead"] = args.decode, args.prepare_graphs, ahead
            if "baseline" in report:
                row["x_baseline"] = round(row["fps_total"] / report["baseline"]["fps"], 2)
            report["throughput"].append(row)
            print(json.dumps(row), flush=True)
    if "quality" not in args.skip:
        quality = {}
        for interval in args.quality_intervals:
            raw = _run_tracks(args.video, args.quality_pose, interval, args.quality_frames)
            smooth = smoothed(raw)
            entry = track_quality(raw)
            static = _static_track(raw)
            entry["static_track"] = static
            if static is not None:
                entry["jitter_px_raw"] = jitter(raw, static)
                entry["jitter_px_smoothed"] = jitter(smooth, static)
            quality[f"det_interval_{interval}"] = entry
        report["tracking"] = {"pose": args.quality_pose, **quality}
        print(json.dumps(report["tracking"], indent=1), flush=True)
    if "memory" not in args.skip:
        marks = (1000, args.memory_frames // 2, args.memory_frames)
        report["memory"] = {"frames": args.memory_frames, "at": memory(args.memory_frames, marks)}
        print(json.dumps(report["memory"], indent=1), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
