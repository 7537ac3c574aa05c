"""The model server's loop in-process: requests of several workers merged into one model call, a failing
request answered alone, frames through shared memory, the end when every worker has gone."""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Iterator, Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection

import numpy as np
import pytest
from tests.video.fakes import BlobModel, scene_frame

from rtpose.errors import RtposeError
from rtpose.pipelines.model_server import FrameSlots, ModelServer, RemoteFrameModel, SharedFrames
from rtpose.pipelines.video import ModelGone
from rtpose.tracking.temporal import PoseCandidates


class RecordingModel(BlobModel):
    """`BlobModel` that fails on an all-white frame (a stand-in for a frame the model chokes on)."""

    def detect(self, images):
        if any(image.min() == 255 for image in images):
            raise RtposeError("cannot read a white frame")
        return super().detect(images)


def _serve(model, connections, wait: float = 0.5, **options) -> threading.Thread:
    server = ModelServer(model, connections, batch_wait=wait, **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    thread.server = server  # type: ignore[attr-defined]
    return thread


def _json(people: list[list]) -> list[list[dict]]:
    """People per image as their JSON, for comparing answers."""
    return [[p.to_json() for p in image] for image in people]


def _assert_answered(answers: Sequence[tuple[Connection, list[list]]]) -> None:
    """Each worker end got ("ok", people) with the expected people."""
    for worker, expected in answers:
        status, people = worker.recv()
        assert status == "ok" and _json(people) == _json(expected)


@contextlib.contextmanager
def _closed_after(server: ModelServer, *slots: FrameSlots) -> Iterator[None]:
    """Free a server's and the workers' shared memory however the test ends."""
    try:
        yield
    finally:
        server._frames.close()
        for worker_slots in slots:
            worker_slots.close()


def test_requests_of_two_workers_become_one_model_call_with_the_same_answers() -> None:
    model = RecordingModel()
    (server_a, worker_a), (server_b, worker_b) = Pipe(), Pipe()
    thread = _serve(model, [server_a, server_b])
    remote_a, remote_b = RemoteFrameModel(worker_a), RemoteFrameModel(worker_b)
    frames_a, frames_b = [scene_frame(0), scene_frame(5)], [scene_frame(9)]
    answers: dict[str, list] = {}

    def ask(name: str, remote: RemoteFrameModel, frames: list) -> None:
        answers[name] = remote.detect(frames)

    calls = [threading.Thread(target=ask, args=("a", remote_a, frames_a)),
             threading.Thread(target=ask, args=("b", remote_b, frames_b))]  # fmt: skip
    for call in calls:
        call.start()
    for call in calls:
        call.join(timeout=10)
    reference = BlobModel().detect(frames_a + frames_b)
    for got, want in zip(answers["a"] + answers["b"], reference, strict=True):
        np.testing.assert_array_equal(got[0], want[0])
    assert model.detect_calls == [3]  # both requests in one call

    # both stages with the pose-candidate rules travelling as values
    people = remote_a.detect_and_pose(frames_a, [PoseCandidates(), PoseCandidates()])
    assert [len(p) for p in people] == [len(b) for b, _ in reference[:2]]
    remote_a.close()
    remote_b.close()
    thread.join(timeout=10)
    assert not thread.is_alive()  # every worker gone: the server ends
    assert thread.server.stats["frames"] == 5  # type: ignore[attr-defined]


def test_a_failing_request_fails_alone() -> None:
    model = RecordingModel()
    (server_a, worker_a), (server_b, worker_b) = Pipe(), Pipe()
    thread = _serve(model, [server_a, server_b])
    remote_a, remote_b = RemoteFrameModel(worker_a), RemoteFrameModel(worker_b)
    white = np.full((120, 160, 3), 255, np.uint8)
    outcome: dict[str, object] = {}

    def ask(name: str, remote: RemoteFrameModel, frames: list) -> None:
        try:
            outcome[name] = remote.detect(frames)
        except RtposeError as exc:
            outcome[name] = exc

    calls = [threading.Thread(target=ask, args=("bad", remote_a, [white])),
             threading.Thread(target=ask, args=("good", remote_b, [scene_frame(3)]))]  # fmt: skip
    for call in calls:
        call.start()
    for call in calls:
        call.join(timeout=10)
    assert isinstance(outcome["bad"], RtposeError) and "white frame" in str(outcome["bad"])
    assert isinstance(outcome["good"], list) and len(outcome["good"][0][0]) == 2
    remote_a.close()
    remote_b.close()
    thread.join(timeout=10)


def test_a_pose_request_sent_ahead_is_answered_later_or_dropped() -> None:
    """`launch_pose` sends the request at once (the worker tracks meanwhile); `pose_launched` reads the
    answer; a request no longer wanted is read and dropped by `wait`, so the next call gets its own."""
    model = RecordingModel()
    server_end, worker_end = Pipe()
    thread = _serve(model, [server_end], wait=0.0)
    remote = RemoteFrameModel(worker_end)
    frames = [scene_frame(3), scene_frame(7)]
    boxes, scores = zip(*BlobModel().detect(frames), strict=True)
    expected = BlobModel().pose(frames, list(boxes), list(scores))
    launched = remote.launch_pose(frames, list(boxes), list(scores))
    got = remote.pose_launched(launched)
    assert _json(got) == _json(expected)
    remote.launch_pose(frames[:1], list(boxes[:1]), list(scores[:1])).wait()
    assert len(remote.detect([frames[1]])) == 1  # the dropped answer is not read as this one's
    failing = remote._send("detect", [np.full((120, 160, 3), 255, np.uint8)], [None])
    failing.wait()  # an error answer, dropped quietly
    assert model.pose_calls == [4, 2]  # boxes per call: two frames of two people, then one frame
    remote.close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_worker_pipeline_sends_its_next_pose_request_before_tracking_with_the_same_results() -> None:
    from rtpose.pipelines.video import Pipeline

    frames = [scene_frame(i) for i in range(15)]

    def run(ahead: bool) -> tuple[list, int]:
        server_end, worker_end = Pipe()
        thread = _serve(BlobModel(), [server_end], wait=0.0)
        remote = RemoteFrameModel(worker_end)
        with Pipeline(model=remote, det_interval=5, look_ahead=ahead) as pipe:
            pipe.add_source(frames, name="a", fps=25)
            records = [r.to_json() for r in pipe]
        remote.close()
        thread.join(timeout=10)
        return records, pipe.steps_ahead

    (plain, none_ahead), (ahead, steps_ahead) = run(False), run(True)
    assert ahead == plain and len(plain) == 15
    assert none_ahead == 0 and steps_ahead >= 10  # the 12 frames between detector frames, less the first


class LaunchingModel(BlobModel):
    """`BlobModel` that can launch pose steps (the answer is computed at once), logging which instance."""

    def __init__(self, log: list, name: str, fail: bool = False) -> None:
        super().__init__()
        self.log, self.name, self.fail = log, name, fail

    def launch_pose(self, images: list, boxes: list, scores: list) -> list:
        self.log.append(("launch", self.name))
        return self.pose(images, boxes, scores)

    def launch_detect(self, images: list) -> tuple:
        return images, self.detect(images)

    def launched_detections(self, launched: tuple) -> list:
        return launched[1]

    def launch_pose_on_detections(self, launched: tuple, candidates: list) -> list:
        images, found = launched
        chosen = [rule(*boxes) for rule, boxes in zip(candidates, found, strict=True)]
        return self.launch_pose(images, [c[0] for c in chosen], [c[1] for c in chosen])

    def pose_launched(self, handle: list) -> list:
        self.log.append(("answer", self.name))
        if self.fail:
            raise RtposeError("lost")
        return handle


class RowsModel(LaunchingModel):
    """`LaunchingModel` whose launched steps answer as pose rows (`TopDownFrameModel.rows_launched`)."""

    def rows_launched(self, handle: list) -> tuple:
        people = self.pose_launched(handle)
        rows = [np.concatenate([p.bbox, [p.score], np.column_stack([p.keypoints, p.keypoint_scores]).ravel()])
                for image in people for p in image]  # fmt: skip
        return np.array(rows, np.float32).reshape(len(rows), -1), [len(image) for image in people]


@pytest.mark.parametrize(("fail", "rows"), [(False, False), (True, False), (False, True), (True, True)])
def test_with_a_twin_pose_steps_alternate_and_are_answered_after_the_next_launch(
    fail: bool, rows: bool
) -> None:
    """Two workers' pipelines against a server with a twin: the records of a plain server, pose steps
    launched on the two instances in turn; a launched step that fails is served again the plain way.
    rows: the launched steps answer as pose rows, which the workers turn into people."""
    from rtpose.pipelines.video import Pipeline

    streams = {"a": [scene_frame(i) for i in range(12)], "b": [scene_frame(i + 3) for i in range(12)]}

    def run(twin: bool) -> tuple[dict, list]:
        log: list = []
        ends = [Pipe() for _ in streams]
        kind = RowsModel if rows else LaunchingModel
        model = kind(log, "A", fail) if twin else BlobModel()
        spare = kind(log, "B", fail) if twin else None
        server = ModelServer(model, [e[0] for e in ends], batch_wait=0.001, twin=spare)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        records: dict = {}

        def worker(name: str, connection) -> None:
            remote = RemoteFrameModel(connection)
            with Pipeline(model=remote, det_interval=4) as pipe:
                pipe.add_source(streams[name], name=name, fps=25)
                records[name] = [r.to_json() for r in pipe]
            remote.close()

        workers = [
            threading.Thread(target=worker, args=(n, e[1])) for n, e in zip(streams, ends, strict=True)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
        thread.join(timeout=10)
        assert not thread.is_alive()
        return records, log

    plain, _ = run(False)
    records, log = run(True)
    assert records == plain and all(len(r) == 12 for r in records.values())
    launches = [name for kind, name in log if kind == "launch"]
    assert len(launches) >= 8 and launches[:4] == ["A", "B", "A", "B"]


def test_a_launched_step_is_answered_once_the_next_one_is_launched() -> None:
    log: list = []
    (server_a, worker_a), (server_b, worker_b) = Pipe(), Pipe()
    server = ModelServer(LaunchingModel(log, "A"), [server_a, server_b], twin=LaunchingModel(log, "B"))
    frames = [scene_frame(2)]
    boxes, scores = BlobModel().detect(frames)[0]
    expected = BlobModel().pose(frames, [boxes], [scores])
    slots_a, slots_b = FrameSlots(), FrameSlots()
    with _closed_after(server, slots_a, slots_b):
        server._step({server_a: ("pose", slots_a.put(frames), [(boxes, scores)])})
        assert log == [("launch", "A")] and not worker_a.poll()  # in flight, not answered yet
        server._step({server_b: ("pose", slots_b.put(frames), [(boxes, scores)])})
        assert log == [("launch", "A"), ("launch", "B"), ("answer", "A")]
        assert worker_a.poll() and not worker_b.poll()
        server._answer_in_flight()
        _assert_answered([(worker_a, expected), (worker_b, expected)])
        assert server.stats["steps"] == 2 and server.stats["frames"] == 2


class Finished(list):
    """A launched step's answer that says when it is done (like `LaunchedPose.ready`)."""

    def __init__(self, people: list, done: threading.Event) -> None:
        super().__init__(people)
        self.done = done

    def ready(self) -> bool:
        return self.done.is_set()


def test_detect_and_pose_requests_join_the_launched_pose_step() -> None:
    """With a twin, a step holding a detect-and-pose and a pose request runs the detector on the first
    and launches one pose step for both: the answers of plain serving."""
    log: list = []
    (server_a, worker_a), (server_b, worker_b) = Pipe(), Pipe()
    model = LaunchingModel(log, "A")
    server = ModelServer(model, [server_a, server_b], twin=LaunchingModel(log, "B"))
    frame_a, frame_b = scene_frame(3), scene_frame(7)
    boxes, scores = BlobModel().detect([frame_b])[0]
    rule = PoseCandidates()
    want_a = BlobModel().pose([frame_a], *[[x] for x in BlobModel().detect([frame_a])[0]])
    want_b = BlobModel().pose([frame_b], [boxes], [scores])
    slots_a, slots_b = FrameSlots(), FrameSlots()
    with _closed_after(server, slots_a, slots_b):
        server._step({
            server_a: ("detect_and_pose", slots_a.put([frame_a]), [rule]),
            server_b: ("pose", slots_b.put([frame_b]), [(boxes, scores)]),
        })  # fmt: skip
        boxes_a = len(BlobModel().detect([frame_a])[0][0])
        assert model.detect_calls == [1] and log == [("launch", "A")]
        assert model.pose_calls == [boxes_a + len(boxes)]  # one pose call for both requests
        server._answer_in_flight()
        _assert_answered([(worker_a, want_a), (worker_b, want_b)])


def test_detect_and_pose_requests_alone_launch_the_pose_step_on_the_detections() -> None:
    log: list = []
    (server_a, worker_a), (server_b, worker_b) = Pipe(), Pipe()
    model = LaunchingModel(log, "A")
    server = ModelServer(model, [server_a, server_b], twin=LaunchingModel(log, "B"))
    frames = [scene_frame(3), scene_frame(8)]
    want = BlobModel().pose(frames, *zip(*BlobModel().detect(frames), strict=True))
    slots_a, slots_b = FrameSlots(), FrameSlots()
    with _closed_after(server, slots_a, slots_b):
        server._step({
            server_a: ("detect_and_pose", slots_a.put(frames[:1]), [PoseCandidates()]),
            server_b: ("detect_and_pose", slots_b.put(frames[1:]), [PoseCandidates()]),
        })  # fmt: skip
        assert model.detect_calls == [2] and log == [("launch", "A")] and not worker_a.poll()
        server._answer_in_flight()
        _assert_answered([(worker_a, want[:1]), (worker_b, want[1:])])


def test_a_launched_step_that_says_it_is_done_is_answered_without_a_new_request() -> None:
    done = threading.Event()

    class Pollable(LaunchingModel):
        def launch_pose(self, images: list, boxes: list, scores: list) -> Finished:
            return Finished(super().launch_pose(images, boxes, scores), done)

    log: list = []
    server_end, worker_end = Pipe()
    server = ModelServer(Pollable(log, "A"), [server_end], twin=Pollable(log, "B"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    remote = RemoteFrameModel(worker_end)
    frames = [scene_frame(4)]
    boxes, scores = BlobModel().detect(frames)[0]
    pending = remote.launch_pose(frames, [boxes], [scores])
    assert not worker_end.poll(0.3)  # launched, not finished: no answer, though no other request comes
    done.set()
    assert worker_end.poll(5)
    assert [len(p) for p in remote.pose_launched(pending)] == [len(boxes)]
    remote.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and log == [("launch", "A"), ("answer", "A")]


def test_a_step_takes_at_most_step_requests_and_the_rest_go_next() -> None:
    """Four requests waiting, two per step: two pose steps in turn on the two models, each of two
    frames, every worker answered."""
    log: list = []
    ends = [Pipe() for _ in range(4)]
    model, twin = LaunchingModel(log, "A"), LaunchingModel(log, "B")
    server = ModelServer(model, [e[0] for e in ends], batch_wait=0.5, twin=twin, step_requests=2)
    frame = scene_frame(6)
    boxes, scores = BlobModel().detect([frame])[0]
    remotes = [RemoteFrameModel(e[1]) for e in ends]
    pending = [remote.launch_pose([frame], [boxes], [scores]) for remote in remotes]  # all wait already
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    answers = [remote.pose_launched(p) for remote, p in zip(remotes, pending, strict=True)]
    for remote in remotes:
        remote.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert [len(a[0]) for a in answers] == [len(boxes)] * 4
    assert [e for e in log if e[0] == "launch"] == [("launch", "A"), ("launch", "B")]
    assert model.pose_calls == twin.pose_calls == [2 * len(boxes)]  # two frames per step
    assert server.stats["steps"] == 2 and server.stats["frames"] == 4


def test_a_gone_server_is_model_gone() -> None:
    server_end, worker_end = Pipe()
    server_end.close()
    remote = RemoteFrameModel(worker_end)
    with pytest.raises(ModelGone, match="model server has stopped"):
        remote.detect([scene_frame(0)])
    remote.close()


def test_frames_travel_through_shared_memory_and_blocks_grow() -> None:
    slots, frames = FrameSlots(), SharedFrames()
    try:
        small, large = scene_frame(1), scene_frame(2, size=(240, 320))
        (ref,) = slots.put([small])
        np.testing.assert_array_equal(frames.view(0, ref), small)
        (bigger,) = slots.put([large])  # a larger frame: a new block, reopened by the reader
        assert bigger.name != ref.name
        np.testing.assert_array_equal(frames.view(0, bigger), large)
    finally:
        frames.close()
        slots.close()


def test_pose_candidate_rules_are_values() -> None:
    rule = PoseCandidates()
    boxes, scores = np.zeros((2, 4)), np.array([0.9, 0.1])
    copy = pickle.loads(pickle.dumps(rule))
    assert [a.tolist() for a in copy(boxes, scores)] == [a.tolist() for a in rule(boxes, scores)]


def test_padded_batches_are_powers_of_two_whose_padding_gets_no_pose() -> None:
    model = RecordingModel()
    server_end, worker_end = Pipe()
    thread = _serve(model, [server_end], pad_batches=True)
    remote = RemoteFrameModel(worker_end)
    frames = [scene_frame(i) for i in (0, 4, 8)]
    people = remote.detect_and_pose(frames, [PoseCandidates()] * 3)
    assert len(people) == 3 and all(len(p) == 2 for p in people)
    assert model.detect_calls == [4]  # three frames and one of padding
    assert model.pose_calls == [6]  # the padding frame's two blobs got no pose
    remote.close()
    thread.join(timeout=10)
