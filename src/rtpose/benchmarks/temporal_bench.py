"""Host cost of the video pipeline's per-stream temporal logic, per frame, without any model.

A video worker's main thread runs `StreamTemporalState.plan`, `settle` (weak-pose drop + pose NMS) and
`follow` (ByteTrack + One-Euro) for every frame of its streams; on the H100 at `--det-interval 5` that
work is about 30% of the thread (docs/notes.md), so its cost bounds the pipeline's frames/s. This
benchmark feeds the same logic a seeded synthetic street scene and times each part per frame:

- `--people` persons walk across a 1280x720 frame at their own speeds (leaving on one side, coming
  back on the other), with 17 keypoints each (a
  standing-person layout) that jitter by a pixel or so, keypoint scores around 0.8;
- detector frames (every `--det-interval` frames) get the people's boxes with detector-like scores,
  plus a few low-score boxes and, every so often, a duplicate pose of someone (for pose NMS);
- between detector frames the boxes `plan` proposes are posed, as the pipeline does: each gets the
  keypoints of the person it covers (or weak ones where it covers nobody).

    python -m rtpose.benchmarks.temporal_bench --frames 3000 --people 7 --det-interval 5

Reports microseconds per frame (median and mean) of plan, settle, follow, and of the tracker and
smoother inside follow, with the number of confirmed tracks; `--out` writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtpose.tracking.matching import iou_matrix
from rtpose.tracking.temporal import StreamTemporalState, TemporalConfig
from rtpose.types import Person

_IMAGE_SIZE = (720, 1280)
# a standing person's 17 COCO keypoints, as fractions of its box (x, y)
_BODY = np.array([
    [0.50, 0.06], [0.55, 0.04], [0.45, 0.04], [0.60, 0.06], [0.40, 0.06], [0.70, 0.20], [0.30, 0.20],
    [0.80, 0.37], [0.20, 0.37], [0.85, 0.52], [0.15, 0.52], [0.62, 0.53], [0.38, 0.53], [0.63, 0.75],
    [0.37, 0.75], [0.64, 0.96], [0.36, 0.96],
])  # fmt: skip


@dataclass
class _Walker:
    x: float
    y: float
    height: float
    speed: float


class SyntheticStreet:
    """A seeded scene of walking people; `detections(t)` and `poses(t, boxes)` stand in for the models."""

    def __init__(self, people: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        height, width = _IMAGE_SIZE
        self.walkers = [
            _Walker(
                x=float((i + self.rng.uniform(0.2, 0.8)) * width / people),
                y=float(self.rng.uniform(0.3, 0.6) * height),
                height=float(self.rng.uniform(120, 320)), speed=float(self.rng.uniform(-3, 3)),
            )
            for i in range(people)
        ]  # fmt: skip

    def _box(self, walker: _Walker, t: int) -> np.ndarray:
        width = _IMAGE_SIZE[1]
        x = (walker.x + walker.speed * t) % (width + 200) - 100
        w = walker.height * 0.4
        return np.array([x - w / 2, walker.y, x + w / 2, walker.y + walker.height], np.float32)

    def _pose(self, box: np.ndarray, score: float, kpt_score: float = 0.8) -> Person:
        size = box[2:] - box[:2]
        keypoints = box[:2] + _BODY * size + self.rng.normal(0, 1.0, _BODY.shape)
        kpt_scores = np.clip(self.rng.normal(kpt_score, 0.1, len(_BODY)), 0, 1)
        return Person(box, score, keypoints.astype(np.float32), kpt_scores.astype(np.float32))

    def detections(self, t: int) -> list[Person]:
        """Posed detections of a detector frame: every person, a few weak boxes, sometimes a duplicate."""
        people = []
        for walker in self.walkers:
            box = self._box(walker, t) + self.rng.normal(0, 2, 4).astype(np.float32)
            people.append(self._pose(box, float(self.rng.uniform(0.4, 0.6))))
        for _ in range(2):
            box = self._box(self.walkers[int(self.rng.integers(len(self.walkers)))], t) + 40
            people.append(self._pose(box, float(self.rng.uniform(0.2, 0.35))))
        if t % 3 == 0:
            people.append(self._pose(people[0].bbox + 1, people[0].score * 0.9))
        return people

    def poses(self, t: int, boxes: np.ndarray, scores: np.ndarray) -> list[Person]:
        """Poses of the boxes a stream's `plan` proposed (between detector frames): as a pose model
        would, the keypoints of the person the box covers, or weak keypoints where it covers nobody."""
        truth = np.array([self._box(walker, t) for walker in self.walkers])
        overlap = iou_matrix(np.asarray(boxes).reshape(-1, 4), truth)
        people = []
        for box, score, row in zip(boxes, scores, overlap, strict=True):
            best = int(np.argmax(row))
            if row[best] >= 0.3:
                people.append(
                    self._pose(truth[best] + self.rng.normal(0, 2, 4).astype(np.float32), float(score))
                )
            else:
                people.append(self._pose(np.asarray(box, np.float32), float(score), kpt_score=0.05))
        return people


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - start) * 1e6


def run(frames: int, people: int, det_interval: int, seed: int = 0) -> dict[str, Any]:
    scene = SyntheticStreet(people, seed)
    state = StreamTemporalState(TemporalConfig(det_interval=det_interval))
    parts: dict[str, list[float]] = {"plan": [], "settle": [], "follow": [], "tracker": [], "smoother": []}
    tracked = []
    for t in range(frames):
        plan, micros = _timed(state.plan, _IMAGE_SIZE)
        parts["plan"].append(micros)
        found = scene.detections(t) if plan is None else scene.poses(t, *plan)
        settled, micros = _timed(state.settle, found, detected=plan is None)
        parts["settle"].append(micros)
        start = time.perf_counter()
        assert state.tracker is not None and state.smoother is not None
        with_ids, micros = _timed(state.tracker.update, settled)
        parts["tracker"].append(micros)
        out, micros = _timed(state.smoother, with_ids, t / 30)
        parts["smoother"].append(micros)
        parts["follow"].append((time.perf_counter() - start) * 1e6)
        tracked.append(len(out))
    per_frame = np.sum([parts["plan"], parts["settle"], parts["follow"]], axis=0)
    return {
        "frames": frames, "people": people, "det_interval": det_interval, "seed": seed,
        "mean_people_reported": float(np.mean(tracked)),
        "us_per_frame": {
            name: {"median": float(np.median(v)), "mean": float(np.mean(v))}
            for name, v in {**parts, "total": list(per_frame)}.items()
        },
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "numpy": np.__version__,
    }  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rtpose.benchmarks.temporal_bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--frames", type=int, default=3000, help="frames of the synthetic stream")
    parser.add_argument("--people", type=int, default=7, help="people walking in it")
    parser.add_argument("--det-interval", type=int, default=5, help="detector every N frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args.frames, args.people, args.det_interval, args.seed)
    print(f"{result['frames']} frames, {result['people']} people, det-interval {result['det_interval']}: "
          f"{result['mean_people_reported']:.1f} people reported per frame")  # fmt: skip
    print("us per frame     median     mean")
    for name, stats in result["us_per_frame"].items():
        print(f"{name:12s} {stats['median']:10.1f} {stats['mean']:8.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
