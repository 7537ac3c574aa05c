"""How many frames/s the GPU side of the video pipeline can give, without decoding or result transport.

    python scripts/video_gpu_ceiling.py --layouts 8x1 16x1 4x2 1x8 [--seconds 12] [--interval 1] [--mps on]

A layout PxS runs P processes (under one private MPS daemon with `--mps on`), each stepping S in-memory
streams of the street video through what a `ProcessPipeline` worker runs per step (`video.run_step`,
then each stream's tracking and smoothing), for `--seconds` after a warm-up, all processes timed over
the same window. Prints one `CEIL` line per layout: frames/s in all, and the share of each process's
time inside the model calls (graph launches and the waits for their host copies; the rest is
tracking). Comparing 8x1 with 16x1 tells whether the GPU still has room when more one-frame steps
are in flight.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np


def _worker(streams: int, interval: int, seconds: float, barrier, results) -> None:
    import torch
    from street_steps import streams_step, street_frames, street_model

    from rtpose.tracking.temporal import StreamTemporalState, TemporalConfig

    frames, model = street_frames(), street_model(interval)
    states = [StreamTemporalState(TemporalConfig(det_interval=interval)) for _ in range(streams)]
    offset = int(np.random.default_rng(os.getpid()).integers(len(frames)))
    in_model = [0.0]

    def step(index: int) -> None:
        in_model[0] += streams_step(model, frames, states, index, offset)[1]

    for index in range(60):
        step(index)
    torch.cuda.synchronize()
    barrier.wait()
    in_model[0] = 0.0
    began, index, done = time.perf_counter(), 60, 0
    while time.perf_counter() - began < seconds:
        step(index)
        index += 1
        done += streams
    elapsed = time.perf_counter() - began
    results.put((done, elapsed, in_model[0] / elapsed))


def run_layout(processes: int, streams: int, interval: int, seconds: float, mps: bool) -> None:
    from rtpose.pipelines.mps import MpsDaemon

    context = mp.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    daemon = MpsDaemon() if mps else None
    began = time.perf_counter()
    try:
        if daemon is not None:
            daemon.start()
        env = daemon.client_environment() if daemon is not None else _nothing()
        with env:
            workers = [
                context.Process(target=_worker, args=(streams, interval, seconds, barrier, results))
                for _ in range(processes)
            ]
            for worker in workers:
                worker.start()
        got = [results.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
    finally:
        if daemon is not None:
            daemon.stop()
    frames = sum(g[0] for g in got)
    window = max(g[1] for g in got)
    waiting = np.mean([g[2] for g in got])
    print(f"CEIL layout={processes}x{streams} interval={interval} mps={mps}: {frames / window:.1f} frames/s "
          f"in all, model calls (launches + GPU waits) {100 * waiting:.0f}% of each process's time "
          f"(wall {time.perf_counter() - began:.0f} s)", flush=True)  # fmt: skip


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["8x1", "16x1", "4x2", "1x8"],
                        help="PROCESSESxSTREAMS per run")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--interval", type=int, nargs="+", default=[1], help="detector interval(s)")
    parser.add_argument("--mps", choices=("on", "off"), default="on")
    args = parser.parse_args()
    for layout in args.layouts:
        processes, streams = (int(v) for v in layout.split("x"))
        for interval in args.interval:
            run_layout(processes, streams, interval, args.seconds, args.mps == "on" and processes > 1)


if __name__ == "__main__":
    main()
