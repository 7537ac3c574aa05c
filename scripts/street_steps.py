"""What the video GPU diagnostics share (`video_step_kernels.py`, `video_gpu_ceiling.py`): frames of the
street video in memory, the video pipeline's models, and one step of a worker's per-frame work on them
(`video.run_step`, then each stream's tracking and smoothing), without decoding or result transport."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from rtpose.pipelines.video import build_frame_model, run_step
from rtpose.tracking.temporal import StreamTemporalState, TemporalConfig
from rtpose.types import Person


def street_frames(count: int = 120) -> list[np.ndarray]:
    """The first `count` frames of $RTPOSE_DATA/video/openpose_video.avi, BGR."""
    import av

    path = os.path.join(os.environ.get("RTPOSE_DATA", "../shared/data"), "video", "openpose_video.avi")
    with av.open(path) as container:
        decoded = zip(range(count), container.decode(video=0), strict=False)
        return [frame.to_ndarray(format="bgr24") for _, frame in decoded]


def street_model(interval: int) -> Any:
    """The benchmark's models: RTMDet-nano + RTMPose-m (random weights), compiled FP16 on CUDA."""
    return build_frame_model("rtmpose-m", "rtmdet-nano", TemporalConfig(det_interval=interval),
                             backend="compiled", device="cuda", precision="fp16",
                             pose_weights="random")  # fmt: skip


def streams_step(
    model: Any, frames: list[np.ndarray], states: list[StreamTemporalState], index: int, offset: int = 0
) -> tuple[list[list[Person]], float]:
    """Step `index` of len(states) streams (stream i shows frame offset + index + 13 i): the people
    found, and the seconds spent in the model calls (graph launches and waits for their host copies)."""
    images = [frames[(offset + index + 13 * i) % len(frames)] for i in range(len(states))]
    plans = [state.plan(image.shape[:2]) for state, image in zip(states, images, strict=True)]
    began = time.perf_counter()
    people = run_step(model, images, plans, states)
    seconds = time.perf_counter() - began
    for i, state in enumerate(states):
        state.finish(people[i], index / 25.0, detected=plans[i] is None)
    return people, seconds
