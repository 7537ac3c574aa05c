"""The video Pipeline end to end: fake model on synthetic videos (fast), then real models on real video."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
from fakes import BlobModel, scene_frame

from rtpose.errors import RtposeError
from rtpose.pipelines.video import Pipeline

HERE = Path(__file__).parent


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_streams_end_to_end_with_outputs(scene_dir: Path, tmp_path: Path) -> None:
    model = BlobModel()
    with Pipeline(
        model=model, det_interval=5, out_dir=tmp_path / "videos", jsonl=tmp_path / "out.jsonl"
    ) as pipe:
        pipe.add_source(scene_dir / "two_movers.mp4")
        pipe.add_source(scene_dir / "one_mover.mp4")
        results = list(pipe)
    records = _jsonl(tmp_path / "out.jsonl")
    assert len(records) == len(results) == 100
    for stream, count in (("two_movers", 60), ("one_mover", 40)):
        mine = [r for r in records if r["stream"] == stream]
        assert [r["frame"] for r in mine] == list(range(count))
        assert all(set(r) == {"stream", "frame", "time", "people"} for r in mine)
        assert all(set(p) == {"id", "bbox", "score", "keypoints"} for r in mine for p in r["people"])
        assert _decoded_frames(tmp_path / "videos" / f"{stream}.mp4") == count
    # the detector ran on every 5th frame of each stream only; the rest followed the keypoints
    detected = [r for r in results if r.detected]
    assert sorted((r.stream, r.frame) for r in detected) == sorted(
        [("two_movers", f) for f in range(0, 60, 5)] + [("one_mover", f) for f in range(0, 40, 5)]
    )
    assert sum(model.detect_calls) == len(detected) and max(model.pose_calls) == 3  # 2 + 1 people batched
    # both movers of two_movers kept their ids and boxes followed them between detections
    movers = [(10.0, 20.0, 1.5, 0.0), (120.0, 60.0, -1.0, 0.5)]
    for result in (r for r in results if r.stream == "two_movers"):
        assert len(result.people) == 2
        for person in result.people:
            centre = (person.bbox[:2] + person.bbox[2:]) / 2
            truth = [
                np.array([x0 + vx * result.frame + 8, y0 + vy * result.frame + 16])
                for x0, y0, vx, vy in movers
            ]
            nearest = int(np.argmin([np.linalg.norm(centre - t) for t in truth]))
            assert person.track_id == nearest + 1 and np.linalg.norm(centre - truth[nearest]) < 4
    assert [e.reason for e in pipe.ended] == ["finished", "finished"]


def test_no_track_no_smooth_and_a_failing_stream_does_not_stop_others(scene_dir: Path) -> None:
    class Picky(BlobModel):
        def pose(self, images, boxes, scores):  # type: ignore[no-untyped-def]
            if any(image.shape[0] == 20 for image in images):
                raise RtposeError("this model cannot do 20-pixel frames")
            return super().pose(images, boxes, scores)

    with Pipeline(model=Picky(), track=False, smooth=False) as pipe:
        pipe.add_source(scene_dir / "one_mover.mp4")
        pipe.add_source([np.zeros((20, 20, 3), np.uint8)] * 5, name="tiny")
        results = list(pipe)
    good = [r for r in results if r.stream == "one_mover"]
    bad = [r for r in results if r.stream == "tiny"]
    assert len(good) == 40 and all(r.error is None and len(r.people) == 1 for r in good)
    assert all(p.track_id is None for r in good for p in r.people)
    assert len(bad) == 5 and all("20-pixel" in (r.error or "") for r in bad)


def test_ctrl_c_mid_run_leaves_complete_outputs(scene_dir: Path, tmp_path: Path) -> None:
    class Interrupting(BlobModel):
        def pose(self, images, boxes, scores):  # type: ignore[no-untyped-def]
            if len(self.pose_calls) == 20:
                raise KeyboardInterrupt
            return super().pose(images, boxes, scores)

    pipe = Pipeline(model=Interrupting(), out_dir=tmp_path / "v", jsonl=tmp_path / "o.jsonl")
    pipe.add_source(scene_dir / "two_movers.mp4")
    emitted = 0
    with pytest.raises(KeyboardInterrupt):
        for _ in pipe:
            emitted += 1
    assert emitted == 20
    assert len(_jsonl(tmp_path / "o.jsonl")) == 20
    assert _decoded_frames(tmp_path / "v" / "two_movers.mp4") == 20


@pytest.mark.parametrize("graceful", [True, False])
def test_sigint_to_a_running_process_flushes_and_closes(tmp_path: Path, graceful: bool) -> None:
    """A real SIGINT: with `stop_on_sigint` the run ends cleanly (exit 0) and both outputs hold the same
    frames; without it, KeyboardInterrupt still closes both files (they may differ by the frame in hand)."""
    script = textwrap.dedent(f"""
        import contextlib, itertools, sys
        sys.path.insert(0, {str(HERE)!r})
        from fakes import BlobModel, scene_frame
        from rtpose.pipelines.video import Pipeline, stop_on_sigint
        frames = (scene_frame(i % 100) for i in itertools.count())
        out_dir, jsonl = {str(tmp_path / "v")!r}, {str(tmp_path / "o.jsonl")!r}
        pipe = Pipeline(model=BlobModel(), out_dir=out_dir, jsonl=jsonl)
        pipe.add_source(frames, name="endless")
        try:
            with stop_on_sigint(pipe) if {graceful!r} else contextlib.nullcontext():
                pipe.run()
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    jsonl = tmp_path / "o.jsonl"
    try:
        deadline = time.monotonic() + 60
        while (
            not jsonl.exists() or len(jsonl.read_text().splitlines()) < 30
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:  # never leave an endless run behind
            process.kill()
            process.wait()
    assert process.returncode == (0 if graceful else 130), stderr.decode()[-2000:]
    records = _jsonl(jsonl)
    assert len(records) >= 30 and [r["frame"] for r in records] == list(range(len(records)))
    video_frames = _decoded_frames(tmp_path / "v" / "endless.mp4")
    if graceful:
        assert video_frames == len(records)
    else:
        assert abs(video_frames - len(records)) <= 1


def test_memory_stays_flat_over_thousands_of_frames() -> None:
    frames = 2000
    movers = [(0.0, 10.0, 0.05, 0.0), (100.0, 40.0, -0.03, 0.0)]

    def source():  # type: ignore[no-untyped-def]
        for i in range(frames):
            yield scene_frame(i % 500, size=(96, 128), movers=movers)

    pipe = Pipeline(model=BlobModel(), det_interval=3, batch_timeout=0.0)
    pipe.add_source(source(), name="long")
    tracemalloc.start()
    try:
        sizes = []
        for result in pipe:
            if result.frame in (300, frames - 1):
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    growth = sizes[1] - sizes[0]
    assert growth < 256 * 1024, f"traced memory grew by {growth / 1024:.0f} KiB over {frames - 300} frames"


def test_real_detector_and_rtmpose_on_street_video(
    data_dir: Path, models_dir: Path, rtpose_env: dict
) -> None:
    frames = []
    with av.open(str(data_dir / "video" / "openpose_video.avi")) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == 4:
                break
    weights = models_dir / "rtmpose_official_arch" / "rtmpose-t_random_official_format.pth"
    with Pipeline("rtmpose-t", "rtmdet-nano", pose_weights=weights, det_interval=2) as pipe:
        pipe.add_source(frames, name="street", fps=50)
        results = list(pipe)
    topdown = pipe.model.topdown  # type: ignore[attr-defined]
    for engine in (topdown.pose_engine, topdown.detector.engine):  # decoder threads need the cores
        options = engine.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert [r.frame for r in results] == [0, 1, 2, 3] and [r.detected for r in results] == [
        True,
        False,
        True,
        False,
    ]
    first = results[0].people
    assert len(first) >= 3  # a busy street: the real detector finds several people
    for person in first:
        assert person.keypoints is not None and person.keypoints.shape == (17, 2)
        assert person.track_id is not None
    assert len({p.track_id for p in first}) == len(first)


@pytest.mark.gpu
def test_gpu_pipeline_matches_cpu_reference(data_dir: Path, rtpose_env: dict) -> None:
    """The torch/CUDA pipeline gives the same people as the ONNX Runtime / NumPy CPU pipeline."""
    with av.open(str(data_dir / "video" / "openpose_video.avi")) as container:
        frames = [
            f.to_ndarray(format="bgr24") for _, f in zip(range(3), container.decode(video=0), strict=False)
        ]
    weights = "random"  # seeded: the same pose weights on both sides
    outputs = {}
    for backend, device in (("ort", "cpu"), ("torch", "cuda")):
        with Pipeline("rtmpose-t", "rtmdet-nano", pose_weights=weights, backend=backend, device=device,
                      det_interval=2, smooth=False) as pipe:  # fmt: skip
            pipe.add_source(list(frames), name="street", fps=50)
            outputs[device] = list(pipe)
    for cpu, gpu in zip(outputs["cpu"], outputs["cuda"], strict=True):
        assert len(cpu.people) == len(gpu.people)
        cpu_boxes = np.stack([p.bbox for p in cpu.people])
        gpu_boxes = np.stack([p.bbox for p in gpu.people])
        np.testing.assert_allclose(gpu_boxes, cpu_boxes, atol=1.0)
        np.testing.assert_allclose(
            np.stack([p.keypoints for p in gpu.people]), np.stack([p.keypoints for p in cpu.people]), atol=2.0
        )


def test_poses_only_for_detections_the_tracker_can_use(
    data_dir: Path, rtpose_env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real detector and MoveNet on the street video: leaving out the low-score boxes no track can take
    (most of them here) gives exactly the results of posing every box."""
    from rtpose.tracking.temporal import StreamTemporalState

    with av.open(str(data_dir / "video" / "openpose_video.avi")) as container:
        decoded = zip(range(20), container.decode(video=0), strict=False)
        frames = [f.to_ndarray(format="bgr24") for _, f in decoded]
    filtering = StreamTemporalState.pose_candidates
    posed: dict[bool, list[int]] = {True: [], False: []}

    def run(filtered: bool) -> list[dict]:
        def candidates(self: StreamTemporalState):
            rule = filtering(self)

            def counted(boxes: np.ndarray, scores: np.ndarray):
                chosen = rule(boxes, scores) if filtered else (boxes, scores)
                posed[filtered].append(len(chosen[0]))
                return chosen

            return counted

        monkeypatch.setattr(StreamTemporalState, "pose_candidates", candidates)
        with Pipeline("movenet-lightning", "rtmdet-nano", det_interval=1) as pipe:
            pipe.add_source(list(frames), name="street", fps=50)
            return [result.to_json() for result in pipe]

    assert run(True) == run(False)
    assert sum(posed[True]) < 0.6 * sum(posed[False])  # far fewer pose crops for the same results


class _PreparingModel(BlobModel):
    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[tuple[int, int, list[int]]] = []

    def prepare(self, height: int, width: int, batch_sizes: list[int]) -> int:
        self.prepared.append((height, width, list(batch_sizes)))
        return 3


def test_prepare_graphs_asks_the_model_once_per_frame_size_before_its_first_step() -> None:
    small = [scene_frame(i) for i in range(4)]
    large = [scene_frame(i, size=(240, 320)) for i in range(4)]
    model = _PreparingModel()
    with Pipeline(model=model, prepare_graphs=True, batch_size=4) as pipe:
        for name, frames in (("a", small), ("b", small), ("c", large)):
            pipe.add_source(frames, name=name, fps=25)
        results = list(pipe)
    assert len(results) == 12 and all(r.error is None for r in results)
    assert sorted(model.prepared) == [(120, 160, [1, 3]), (240, 320, [1, 3])]  # one frame, all 3 streams
    plain = _PreparingModel()
    with Pipeline(model=plain) as pipe:  # off by default
        pipe.add_source(small, name="a", fps=25)
        list(pipe)
    assert plain.prepared == []


class _LaunchingModel(BlobModel):
    """A model that can start its detector ahead (as `TopDownFrameModel` on CUDA graphs)."""

    class Handle:
        def __init__(self, model: _LaunchingModel, images: list[np.ndarray]) -> None:
            self.model, self.images, self.found = model, images, model.detect(images)

        def wait(self) -> None:
            self.model.dropped += 1

    def __init__(self) -> None:
        super().__init__()
        self.launched = self.used = self.dropped = 0

    def launch_detect(self, images: list[np.ndarray]) -> Handle:
        self.launched += 1
        return self.Handle(self, images)

    def detect_and_pose(
        self, images: list[np.ndarray], candidates: list, launched: Handle | None = None
    ) -> list:
        if launched is not None:
            assert all(a is b for a, b in zip(launched.images, images, strict=True))
            self.used += 1
            found = launched.found
        else:
            found = self.detect(images)
        chosen = [rule(*f) for rule, f in zip(candidates, found, strict=True)]
        return self.pose(images, [c[0] for c in chosen], [c[1] for c in chosen])


@pytest.mark.parametrize(("interval", "streams"), [(1, 1), (1, 2), (3, 2)])
def test_look_ahead_starts_the_next_detector_early_with_the_same_results(interval: int, streams: int) -> None:
    frames = [scene_frame(i) for i in range(24)]

    def run(ahead: bool) -> tuple[list, _LaunchingModel, int]:
        model = _LaunchingModel()
        with Pipeline(model=model, det_interval=interval, look_ahead=ahead, batch_size=streams) as pipe:
            for s in range(streams):
                pipe.add_source(frames, name=f"s{s}", fps=25)
            results = [r.to_json() for r in pipe]
        return results, model, pipe.steps_ahead

    plain, plain_model, _ = run(False)
    ahead, model, steps_ahead = run(True)
    assert ahead == plain and len(plain) == 24 * streams
    assert plain_model.launched == 0
    # started ahead only where every frame of the next step runs the detector; each one used, none dropped
    assert 0 < steps_ahead == model.used == model.launched and model.dropped == 0
    assert steps_ahead <= 24 // interval
    assert sum(model.detect_calls) == sum(plain_model.detect_calls)


class _PoseLaunchingModel(_LaunchingModel):
    """A model that can also start its pose step ahead on given boxes."""

    class PoseHandle:
        def __init__(self, model: _PoseLaunchingModel, people: list) -> None:
            self.model, self.people = model, people

        def wait(self) -> None:
            self.model.poses_dropped += 1

    def __init__(self) -> None:
        super().__init__()
        self.poses_launched = self.poses_used = self.poses_dropped = 0

    def launch_pose(self, images: list[np.ndarray], boxes: list, scores: list) -> PoseHandle:
        self.poses_launched += 1
        return self.PoseHandle(self, self.pose(images, boxes, scores))

    def pose_launched(self, handle: PoseHandle) -> list:
        self.poses_used += 1
        return handle.people


@pytest.mark.parametrize(("interval", "streams"), [(5, 1), (3, 2), (1, 2)])
def test_look_ahead_starts_the_next_pose_on_boxes_from_the_settled_poses(interval: int, streams: int) -> None:
    frames = [scene_frame(i) for i in range(24)]

    def run(ahead: bool) -> tuple[list, _PoseLaunchingModel, int]:
        model = _PoseLaunchingModel()
        with Pipeline(model=model, det_interval=interval, look_ahead=ahead, batch_size=streams) as pipe:
            for s in range(streams):
                pipe.add_source(frames[s:], name=f"s{s}", fps=25)  # streams out of step at the end
            results = [r.to_json() for r in pipe]
        return results, model, pipe.steps_ahead

    plain, plain_model, _ = run(False)
    ahead, model, steps_ahead = run(True)
    assert ahead == plain and plain_model.poses_launched == 0
    assert model.poses_used == model.poses_launched and model.poses_dropped == 0
    assert steps_ahead == model.launched + model.poses_launched
    # between detector frames every step can start early: its boxes come from the poses just settled
    assert model.poses_launched >= (0 if interval == 1 else 24 - 24 // interval - 3)
    assert sum(model.pose_calls) == sum(plain_model.pose_calls)
    assert sum(model.detect_calls) == sum(plain_model.detect_calls)


def test_a_pose_started_for_frames_that_no_longer_need_it_is_waited_for_and_dropped() -> None:
    model = _PoseLaunchingModel()
    with Pipeline(model=model, det_interval=5, look_ahead=False) as pipe:
        pipe.add_source([scene_frame(i) for i in range(3)], name="a", fps=25)
        pipe._launched = ([], [], model.PoseHandle(model, []))  # as if started for another step's frames
        results = list(pipe)
    assert len(results) == 3 and all(r.error is None for r in results)
    assert model.poses_dropped == 1


def test_a_failing_started_pose_is_retried_frame_by_frame() -> None:
    class Failing(_PoseLaunchingModel):
        def pose_launched(self, handle: _PoseLaunchingModel.PoseHandle) -> list:
            raise RuntimeError("lost")

    model = Failing()
    with Pipeline(model=model, det_interval=5, batch_size=2) as pipe:
        pipe.add_source([scene_frame(i) for i in range(4)], name="a", fps=25)
        pipe.add_source([scene_frame(i) for i in range(4)], name="b", fps=25)
        results = list(pipe)
    assert len(results) == 8 and all(r.error is None for r in results)  # each frame again, not ahead
    assert model.poses_launched > 0 and model.poses_dropped == model.poses_launched


def test_a_detector_started_for_frames_that_no_longer_need_it_is_waited_for_and_dropped() -> None:
    model = _LaunchingModel()
    with Pipeline(model=model, det_interval=1) as pipe:
        pipe.add_source([scene_frame(i) for i in range(3)], name="a", fps=25)
        pipe._launched = ([], [], model.launch_detect([]))  # as if started for another step's frames
        results = list(pipe)
    assert len(results) == 3 and all(r.error is None for r in results)
    assert model.dropped == 1


def test_no_frame_is_taken_early_for_a_model_that_cannot_start_anything_ahead() -> None:
    class Idle(_LaunchingModel):
        launches_ahead = False

    model = Idle()
    with Pipeline(model=model, det_interval=1) as pipe:
        pipe.add_source([scene_frame(i) for i in range(6)], name="a", fps=25)
        calls = []
        taking = pipe.hub.next_batch
        pipe.hub.next_batch = lambda *a, **k: calls.append(k.get("partial", True)) or taking(*a, **k)
        results = list(pipe)
    assert len(results) == 6 and model.launched == 0 and pipe.steps_ahead == 0
    assert False not in calls  # only the step's own, complete-or-timeout takes


def test_a_stream_whose_end_was_taken_ahead_is_still_reported_when_stopped() -> None:
    """Stopped right after a stream's last result, the step taken ahead may hold the stream's end (and
    no frame): that end is reported, not lost; a stream with frames taken ahead but not run is stopped."""
    for _ in range(5):  # the reader must have reached the end when the last step looks ahead
        model = _LaunchingModel()
        with Pipeline(model=model, det_interval=1) as pipe:
            pipe.add_source([scene_frame(i) for i in range(3)], name="a", fps=25)
            for result in pipe.results(stop_when_idle=False):
                if result.frame == 2:
                    time.sleep(0.05)
                    pipe.stop()
        ends = {end.stream: (end.reason, end.frames) for end in pipe.ended}
        assert ends == {"a": ("finished", 3)} or ends == {"a": ("stopped", 3)}


def test_frames_taken_ahead_and_never_run_leave_their_stream_stopped() -> None:
    model = _LaunchingModel()
    with Pipeline(model=model, det_interval=1) as pipe:
        pipe.add_source([scene_frame(i) for i in range(6)], name="a", fps=25)
        for result in pipe.results(stop_when_idle=False):
            if result.frame == 1:
                pipe.stop()
    assert [(end.stream, end.reason, end.frames) for end in pipe.ended] == [("a", "stopped", 2)]
