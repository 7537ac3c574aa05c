"""The video benchmark's clock: steady state only, every stream warm before it starts."""

from __future__ import annotations

import time
from pathlib import Path

from rtpose.benchmarks.video_bench import _timed
from rtpose.pipelines.video import FrameResult


class SlowStartPipeline:
    """Streams that start one after another (as the workers of a ProcessPipeline do): stream i gives
    its first result only after `delay * i` results of the others."""

    def __init__(self, delay: int) -> None:
        self.delay = delay
        self.names: list[str] = []
        self.given: dict[str, int] = {}
        self.left_early = False

    def add_source(self, source: Path, name: str) -> str:
        self.names.append(name)
        return name

    def __iter__(self):
        self.given = dict.fromkeys(self.names, 0)
        total = 0
        try:
            while True:
                for i, name in enumerate(self.names):
                    if total < self.delay * i:
                        continue
                    self.given[name] += 1
                    total += 1
                    yield FrameResult(name, self.given[name], 0.0, [], latency=0.01)
        finally:
            self.left_early = True


def test_clock_starts_when_every_stream_is_warm_and_stops_after_the_timed_frames() -> None:
    pipeline = SlowStartPipeline(delay=50)
    row = _timed(pipeline, Path("street.avi"), streams=3, frames=20, warmup=5)
    assert row["frames"] == 60  # frames x streams, all after the warm-up
    # the last stream became warm only after the first two had given ~100 results: those are not timed
    assert pipeline.given["s2"] >= 5 and pipeline.given["s0"] > pipeline.given["s2"] + 50
    untimed = sum(pipeline.given.values()) - row["frames"]
    assert untimed >= 100 + 5  # s0 and s1 alone for 100 results, then s2's warm-up
    assert pipeline.left_early  # the benchmark leaves the loop, which closes a real pipeline
    assert row["latency_ms_median"] == 10.0 and row["fps_total"] > 0


def test_without_warmup_every_result_is_timed() -> None:
    row = _timed(SlowStartPipeline(delay=0), Path("street.avi"), streams=2, frames=4, warmup=0)
    assert row["frames"] == 8 and row["warm_s"] == 0.0


def test_server_share_counts_the_whole_seconds_inside_the_window() -> None:
    from rtpose.benchmarks.video_bench import _server_share

    timeline = {9: [5, 40, 0.9], 10: [10, 80, 0.5], 11: [10, 40, 0.25], 12: [3, 24, 0.1], 13: [9, 9, 0.9]}
    share = _server_share({"steps": 37, "busy_s": 2.65, "timeline": timeline}, 9.5, 13.2)
    assert share["steps"] == 23 and share["frames_per_step"] == round(144 / 23, 2)
    assert share["busy_share"] == round(0.85 / 3, 3) and share["whole_run"] == {"steps": 37, "busy_s": 2.65}


def test_cpu_busy_share_reads_the_machine_counters() -> None:
    import sys

    from rtpose.benchmarks.video_bench import cpu_busy_share, cpu_times

    assert cpu_busy_share((10, 100), (40, 200)) == 0.3
    assert cpu_busy_share(None, (40, 200)) is None and cpu_busy_share((10, 100), (10, 100)) is None
    if sys.platform.startswith("linux"):
        first = cpu_times()
        deadline = time.perf_counter() + 0.3
        while time.perf_counter() < deadline:  # keep one core busy
            pass
        share = cpu_busy_share(first, cpu_times())
        assert share is not None and 0.0 < share <= 1.0
