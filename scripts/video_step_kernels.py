"""Where the GPU time of a video step goes: the video pipeline's model calls on in-memory frames of the
street video, one process, torch.profiler over the timed steps, kernels sorted by GPU time.

    python scripts/video_step_kernels.py [--streams 8 1] [--interval 1] [--steps 20] [--top 25]

Each step runs what `Pipeline` runs for `streams` streams (detector + pose with the pose-candidate
rules, or pose on boxes from tracking between detector frames), then each stream's tracking. Prints
`DIAG` lines (GPU ms per step, crops per frame) and `K` lines (GPU us per step, calls per step, kernel).
Needs CUDA, PyAV and the street video ($RTPOSE_DATA/video/openpose_video.avi). RTPOSE_TRITON=0 compares
the torch crops with the one-kernel crop.
"""

from __future__ import annotations

import argparse
import time

import torch
from street_steps import streams_step, street_frames, street_model
from torch.profiler import ProfilerActivity, profile

from rtpose.tracking.temporal import StreamTemporalState, TemporalConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--interval", type=int, default=1, help="detector interval")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps (after 40 warm-up steps)")
    parser.add_argument("--top", type=int, default=25, help="kernels listed")
    args = parser.parse_args()
    frames = street_frames()
    began = time.perf_counter()
    model = street_model(1)
    print(f"DIAG engines ready {time.perf_counter() - began:.0f} s", flush=True)

    def step(states: list[StreamTemporalState], index: int) -> int:
        return sum(len(p) for p in streams_step(model, frames, states, index)[0])

    for streams in args.streams:
        states = [StreamTemporalState(TemporalConfig(det_interval=args.interval)) for _ in range(streams)]
        for index in range(40):  # warm-up: the CUDA-graph captures of every shape and bucket seen
            step(states, index)
        torch.cuda.synchronize()
        crops = 0
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            for index in range(40, 40 + args.steps):
                crops += step(states, index)
            torch.cuda.synchronize()
        events = [e for e in profiler.key_averages() if e.device_type.name == "CUDA"]
        total = sum(e.self_device_time_total for e in events) / args.steps
        print(f"DIAG streams={streams} interval={args.interval}: GPU {total / 1000:.3f} ms per step, "
              f"{crops / args.steps / streams:.1f} crops/frame", flush=True)  # fmt: skip
        events.sort(key=lambda e: -e.self_device_time_total)
        for e in events[: args.top]:
            per_step, calls = e.self_device_time_total / args.steps, e.count / args.steps
            print(f"K {per_step:9.1f} us/step {calls:6.1f} x  {e.key[:110]}")


if __name__ == "__main__":
    main()
