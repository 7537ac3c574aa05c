"""Where does a `TopDown.predict_batch` frame go? torch.profiler over the public hot path.

    python scripts/profile_topdown.py --device cuda --backend compiled --precision fp16   # the H100
    python scripts/profile_topdown.py --device cpu --backend torch --frames 3             # a smoke run

The frame is the street-video frame of `rtpose bench` (1280x720, ~10 people; RTMPose-m random weights,
RTMDet-nano real). Prints the stage times of the pipeline's own profiler, then the operators that cost
most host time and how many kernels and host syncs (`aten::item`, `aten::_local_scalar_dense`, device to
host copies) one frame launches: the numbers that say what to fuse or capture next for the 3 ms target.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from rtpose.benchmarks.bench import BenchConfig, pipeline_image_bytes
from rtpose.pipelines.topdown import TopDown

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--frames", type=int, default=20, help="profiled frames (after 10 warm-up frames)")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)

    encoded, label = pipeline_image_bytes(BenchConfig())
    pipeline = TopDown("rtmpose-m", "rtmdet-nano", backend=args.backend, device=args.device,
                       precision=args.precision, pose_weights="random", profile=True)  # fmt: skip
    for _ in range(10):
        pipeline.predict_batch([encoded])
    stages = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(args.frames):
            people = pipeline.predict_batch([encoded])
            stages.append(dict(pipeline.last_timings))
    print(f"{label}: {len(people[0])} people, {args.backend} {args.precision} on {args.device}")
    print("stage ms (median):", {k: round(float(np.median([s[k] for s in stages])), 2) for k in stages[0]})
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    syncs = {e.key: e.count // args.frames for e in events if e.key in SYNC_OPS}
    copies = sum(e.count for e in events if e.key == "aten::copy_") // args.frames
    print(f"per frame: {kernels // max(args.frames, 1)} GPU kernels, {copies} copy_ calls, syncs {syncs}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
