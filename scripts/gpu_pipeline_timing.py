"""Top-down pipeline timing on 1280x720 frames of the street video, for the GPU machine.

RTMDet-nano (real weights) + RTMPose-m with seeded RANDOM weights ("random": speed does not depend on
the weights; the keypoints are meaningless), compiled engines in the chosen precision. Per input kind:

* bytes:  the JPEG-encoded frame, decoded on the GPU (nvJPEG through torchvision where installed);
* array:  the decoded frame as a host NumPy array (uploaded through pinned memory: counted in "pre");
* tensor: the frame already on the GPU (no decode, no upload).

Profiled calls (device synchronised at stage boundaries) give p50/p99 per stage; unprofiled calls give
the end-to-end latency the hot path really has. A batch of 8 different frames measures throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from rtpose.decode.gpu import gpu_decoder_name
from rtpose.pipelines.topdown import TopDown


def read_frames(video: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise SystemExit(f"cannot read frames from {video}")
    return frames


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(pipeline: TopDown, plain: TopDown, item: object, iterations: int, warmup: int) -> dict:
    for _ in range(warmup):
        pipeline(item)
        plain(item)
    stages: dict[str, list[float]] = {}
    people = 0
    for _ in range(iterations):
        people = len(pipeline(item))
        for stage, ms in pipeline.last_timings.items():
            stages.setdefault(stage, []).append(ms)
    wall = []
    for _ in range(iterations):
        torch.cuda.synchronize()
        start = time.perf_counter()
        plain(item)  # returns host results: the call ends after the one device-to-host copy
        wall.append((time.perf_counter() - start) * 1000.0)
    row = {"people": people}
    for stage, values in stages.items():
        row[stage] = {"p50": percentile(values, 50), "p99": percentile(values, 99)}
    row["unprofiled"] = {"p50": percentile(wall, 50), "p99": percentile(wall, 99)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_video = Path(os.environ.get("RTPOSE_DATA", "../shared/data")) / "video" / "openpose_video.avi"
    parser.add_argument("--video", type=Path, default=default_video)
    parser.add_argument("--pose", default="rtmpose-m")
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    frames = read_frames(args.video, max(args.batch, 1) * 4)
    frame = frames[0]
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    jpeg = encoded.tobytes()
    start = time.perf_counter()
    pipeline = TopDown(args.pose, "rtmdet-nano", backend="compiled", device="cuda", precision=args.precision,
                       pose_weights="random", profile=True)  # fmt: skip
    print(
        f"engines ready in {time.perf_counter() - start:.1f} s (built or loaded from the cache)", flush=True
    )
    plain = TopDown.from_engines(pipeline.pose_engine, pipeline.pose_spec, pipeline.detector)
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "decoder": gpu_decoder_name(),
        "frame": f"{frame.shape[1]}x{frame.shape[0]}",
        "pose": f"{args.pose} (random weights)",
        "precision": args.precision,
        "iterations": args.iterations,
        "modes": {},
    }
    items = {"bytes": jpeg, "array": frame, "tensor": torch.from_numpy(frame).cuda()}
    for mode, item in items.items():
        report["modes"][mode] = measure(pipeline, plain, item, args.iterations, args.warmup)

    batch = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames[: args.batch * 4 : 4]]
    for _ in range(3):
        plain.predict_batch(batch)
    times = []
    for _ in range(max(args.iterations // 10, 5)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        found = plain.predict_batch(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    report["batch"] = {
        "images": len(batch),
        "people": sum(map(len, found)),
        "p50_ms": statistics.median(times),
        "images_per_s": len(batch) / (statistics.median(times) / 1000.0),
    }

    print(f"\n{report['device']}, torch {report['torch']}, decoder {report['decoder']}, "
          f"frame {report['frame']}, {report['pose']} + rtmdet-nano, compiled {args.precision}")  # fmt: skip
    header = f"{'input':8} {'people':>6}" + "".join(
        f" {s + ' p50/p99':>17}" for s in ("decode", "pre", "infer", "post", "total", "unprofiled")
    )
    print(header)
    for mode, row in report["modes"].items():
        columns = ("decode", "pre", "infer", "post", "total", "unprofiled")
        cells = "".join(f" {row[s]['p50']:8.2f}/{row[s]['p99']:<8.2f}" for s in columns)
        print(f"{mode:8} {row['people']:>6}{cells}")
    b = report["batch"]
    print(f"batch of {b['images']} JPEG frames ({b['people']} people): p50 {b['p50_ms']:.2f} ms, "
          f"{b['images_per_s']:.1f} images/s")  # fmt: skip
    out = args.out or (Path(os.environ["OUT"]) / "pipeline_timing.json" if os.environ.get("OUT") else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
