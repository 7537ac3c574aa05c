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
import os
import time

import av
import torch
from torch.profiler import ProfilerActivity, profile

from rtpose.pipelines.video import build_frame_model, run_step
from rtpose.tracking.temporal import StreamTemporalState, TemporalConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--interval", type=int, default=1, help="detector interval")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps (after 40 warm-up steps)")
    parser.add_argument("--top", type=int, default=25, help="kernels listed")
    args = parser.parse_args()
    path = os.path.join(os.environ.get("RTPOSE_DATA", "../shared/data"), "video", "openpose_video.avi")
    with av.open(path) as container:
        frames = [
            f.to_ndarray(format="bgr24") for _, f in zip(range(120), container.decode(video=0), strict=False)
        ]
    began = time.perf_counter()
    model = build_frame_model("rtmpose-m", "rtmdet-nano", TemporalConfig(det_interval=1), backend="compiled",
                              device="cuda", precision="fp16", pose_weights="random")  # fmt: skip
    print(f"DIAG engines ready {time.perf_counter() - began:.0f} s", flush=True)

    def step(states: list[StreamTemporalState], index: int) -> int:
        images = [frames[(index + 13 * i) % len(frames)] for i in range(len(states))]
        plans = [state.plan(image.shape[:2]) for state, image in zip(states, images, strict=True)]
        people = run_step(model, images, plans, states)
        for i, state in enumerate(states):
            state.finish(people[i], index / 25.0, detected=plans[i] is None)
        return sum(len(p) for p in people)

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
