"""One process runs the models of a `ProcessPipeline` for all its workers: the model server.

Why: with every worker owning its own copy of the engines (`ProcessPipeline` without a server), each
worker's steps are small (its own 1-2 frames), each holds a CUDA context and a copy of the engines, and
the contexts take turns on the GPU. With a server, the workers keep what parallelises on the CPU
(decoding, tracking, smoothing, drawing, encoding) and send their frames here; the server answers the
requests of all workers that are waiting with one batched model call: one context, one copy of the
engines, batches of all streams. A first version, one step at a time, was slower than a model in every
worker on the H100 (344 vs 445 frames/s, 4 workers): its one thread waited for the GPU at every step and
the GPU idled during its host work. Now the workers send their next pose request before their own
tracking (`RemoteFrameModel.launch_pose`, the pipeline's look-ahead), and on CUDA the server keeps a twin
of its models (`TopDownFrameModel.twin`: the same engines, graph steps of their own) so that two steps
are in flight, each of half the workers' requests: one runs on the GPU while the other's workers track.
Steps that need the detector are launched too, every graph step of a frame size is captured when the
size first comes, and launched steps answer with pose rows (the workers make the people). Same host, 8
workers (docs/benchmarks.md): 914.8 vs 919.0 frames/s against models in every worker at
`--det-interval 5`, 799.3 vs 891.1 every frame; on par at best, so workers with their own models stay
the default.

Frames travel through shared memory (`FrameSlots`, one block per image of a request, reused while the
frame size stays), everything else (boxes, the pose-candidate rules, the people found) through one pipe
per worker:

    worker -> server: (op, [FrameRef], args)   op: "detect" | "pose" | "detect_and_pose"
    server -> worker: ("ok", [result per image]) | ("rows", (pose rows, rows per image)) | ("error", message)

A request whose merged batch fails is retried alone, so a bad frame fails only its own request. The
server ends when every worker has closed its pipe; a worker whose server is gone gets `ModelGone`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from rtpose.errors import RtposeError
from rtpose.pipelines.video import BoxesAndScores, FramePoseModel, ModelGone, SelectRule, detect_and_pose
from rtpose.settings import environment_count
from rtpose.types import Person, people_from_rows

logger = logging.getLogger("rtpose.video")


@dataclass(frozen=True)
class FrameRef:
    """Where one image of a request lies: shared-memory block `name`, holding an array of `shape`."""

    slot: int
    name: str
    shape: tuple[int, ...]
    dtype: str


class FrameSlots:
    """The worker's shared-memory blocks for the images of one request (the worker waits for the answer
    before it writes the next request, so one block per image position suffices)."""

    def __init__(self) -> None:
        self._blocks: list[shared_memory.SharedMemory] = []

    def put(self, images: Sequence[np.ndarray]) -> list[FrameRef]:
        refs = []
        for slot, image in enumerate(images):
            image = np.asarray(image)
            if slot == len(self._blocks):
                self._blocks.append(shared_memory.SharedMemory(create=True, size=max(1, image.nbytes)))
            elif self._blocks[slot].size < image.nbytes:  # a larger frame than before: a new block
                self._release(self._blocks[slot])
                self._blocks[slot] = shared_memory.SharedMemory(create=True, size=image.nbytes)
            block = self._blocks[slot]
            np.ndarray(image.shape, image.dtype, buffer=block.buf)[...] = image
            refs.append(FrameRef(slot, block.name, tuple(image.shape), image.dtype.str))
        return refs

    def close(self) -> None:
        for block in self._blocks:
            self._release(block)
        self._blocks.clear()

    @staticmethod
    def _release(block: shared_memory.SharedMemory) -> None:
        block.close()
        with contextlib.suppress(FileNotFoundError):
            block.unlink()


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open a block a worker made, leaving its cleanup to the worker. Before Python 3.13 opening also
    registers it with the resource tracker; the server and its workers are spawned by one parent and
    share that parent's tracker, which keeps one entry per name, so the worker's unlink clears it."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    return shared_memory.SharedMemory(name=name)


class SharedFrames:
    """The server's view of the workers' `FrameSlots` (blocks opened once, reopened when replaced).

    pin: register each block with CUDA as page-locked memory, so the model's frame upload reads it
    directly (no copy into a staging buffer first; `graphed.FrameBuffer.load`)."""

    def __init__(self, pin: bool = False) -> None:
        self.pin = pin
        self._open: dict[tuple[int, int], tuple[shared_memory.SharedMemory, int | None]] = {}

    def view(self, worker: int, ref: FrameRef) -> np.ndarray:
        key = (worker, ref.slot)
        entry = self._open.get(key)
        if entry is None or entry[0].name.lstrip("/") != ref.name.lstrip("/"):
            if entry is not None:
                self._close(*entry)
            block = _attach(ref.name)
            entry = self._open[key] = (block, self._register(block) if self.pin else None)
        return np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=entry[0].buf)

    def forget(self, worker: int) -> None:
        for key in [k for k in self._open if k[0] == worker]:
            self._close(*self._open.pop(key))

    def close(self) -> None:
        for entry in self._open.values():
            self._close(*entry)
        self._open.clear()

    def _register(self, block: shared_memory.SharedMemory) -> int | None:
        import torch

        address = np.frombuffer(block.buf, np.uint8).ctypes.data
        if int(torch.cuda.cudart().cudaHostRegister(address, block.size, 0)) != 0:
            logger.debug("could not page-lock a frame block; its frames go through a staging copy")
            self.pin = False
            return None
        return address

    @staticmethod
    def _close(block: shared_memory.SharedMemory, registered: int | None) -> None:
        if registered is not None:
            import torch

            torch.cuda.cudart().cudaHostUnregister(registered)
        with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
            block.close()


class PendingReply:
    """A request sent to the model server whose reply is still to be read (one per worker at a time)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def answer(self) -> Any:
        try:
            status, payload = self._connection.recv()
        except (EOFError, OSError) as exc:
            raise ModelGone(f"the model server has stopped ({type(exc).__name__})") from exc
        if status == "rows":  # pose rows: the people are made here, not in the server
            return people_from_rows(*payload)
        if status != "ok":
            raise RtposeError(payload)
        return payload

    def wait(self) -> None:
        """Read the reply without using it (a request started ahead that is no longer wanted)."""
        with contextlib.suppress(RtposeError):
            self.answer()


class RemoteFrameModel:
    """`FramePoseModel` of a worker: each call is one request to the model server.

    A pose request may be sent before the worker's tracking (`launch_pose`, used by
    `Pipeline(look_ahead=True)`): the server then answers it while the worker tracks."""

    #: requests can be sent ahead (the pipeline's look-ahead takes frames early for them)
    launches_ahead = True

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._slots = FrameSlots()

    def detect(self, images: list[np.ndarray]) -> list[BoxesAndScores]:
        return self._send("detect", images, [None] * len(images)).answer()

    def pose(
        self, images: list[np.ndarray], boxes: list[np.ndarray], scores: list[np.ndarray]
    ) -> list[list[Person]]:
        return self.launch_pose(images, boxes, scores).answer()

    def launch_pose(
        self, images: list[np.ndarray], boxes: list[np.ndarray], scores: list[np.ndarray]
    ) -> PendingReply:
        """Send the request of `pose(images, boxes, scores)`; `pose_launched` reads its answer."""
        return self._send("pose", images, list(zip(boxes, scores, strict=True)))

    def pose_launched(self, launched: PendingReply) -> list[list[Person]]:
        return launched.answer()

    def detect_and_pose(
        self, images: list[np.ndarray], candidates: Sequence[SelectRule]
    ) -> list[list[Person]]:
        return self._send("detect_and_pose", images, list(candidates)).answer()

    def close(self) -> None:
        self._slots.close()
        self._connection.close()

    def _send(self, op: str, images: list[np.ndarray], args: list[Any]) -> PendingReply:
        refs = self._slots.put(images)  # the reply to the previous request has been read: slots are free
        try:
            self._connection.send((op, refs, args))
        except (EOFError, OSError) as exc:
            raise ModelGone(f"the model server has stopped ({type(exc).__name__})") from exc
        return PendingReply(self._connection)


def run_merged(model: FramePoseModel, op: str, images: list[np.ndarray], args: list[Any]) -> list[Any]:
    """One model call for the images of several requests: a result per image."""
    if op == "detect":
        return model.detect(images)
    if op == "pose":
        return model.pose(images, [a[0] for a in args], [a[1] for a in args])
    if op == "detect_and_pose":
        return detect_and_pose(model, images, args)
    raise RtposeError(f"unknown model-server operation {op!r}")


#: how often the serving loop looks whether a launched step has finished while it waits for requests
_POLL_S = 0.0002

Request = tuple[Connection, list[np.ndarray], list[Any]]  # who asked, the frames, an argument per frame


@dataclass
class _InFlight:
    """A pose step launched for these requests on `model`, answered when it says it has finished or
    once the next step is launched, whichever comes first."""

    requests: list[Request]
    model: FramePoseModel
    handle: Any
    began: float
    op: str = "pose"  # how its requests are served again should the launched step fail

    @property
    def pollable(self) -> bool:
        """Whether the handle says when it has finished (else it is answered when no request waits)."""
        return callable(getattr(self.handle, "ready", None))

    def finished(self) -> bool:
        return self.pollable and bool(self.handle.ready())


class ModelServer:
    """The serving loop over one pipe per worker (see the module docstring).

    batch_wait: after the first request of a step arrives, how long to wait for the other workers'
    requests before calling the model with what has come (it calls at once when every worker waits).
    For a model on a GPU with CUDA-graph steps per batch size: pad_batches fills each batch up to a
    power of two with frames that get no pose (empty box sets), so the steps stay few (they are kept
    for 4 sizes; requests merged freely would need one for every count and recapture in turn);
    pin_frames reads the frames from shared memory registered as page-locked (no staging copy).
    twin: the same models with graph steps of their own (`TopDownFrameModel.twin`). Steps of pose
    requests then alternate between the two and are launched without waiting (`launch_pose`): the
    answers of one step are read and sent while the next one runs on the GPU, and the requests of the
    next are read while this one runs. Requests for both models join that pose step once the detector
    has run on their frames and each frame's rule has chosen the boxes to pose.
    prepare_graphs: capture every graph step a frame size can need when the size first comes
    (`TopDownFrameModel.prepare`, both models).
    step_requests: the most requests one step takes (None: all that wait). With a twin, half the workers
    keeps two steps in turn: one runs on the GPU while the other's workers track and send again.
    """

    def __init__(
        self,
        model: FramePoseModel,
        connections: Sequence[Connection],
        batch_wait: float = 0.002,
        *,
        pad_batches: bool = False,
        pin_frames: bool = False,
        twin: FramePoseModel | None = None,
        prepare_graphs: bool = False,
        step_requests: int | None = None,
    ) -> None:
        self.model = model
        self.step_requests = step_requests
        self.prepare_graphs = prepare_graphs
        self._prepared: set[tuple[int, ...]] = set()
        self.batch_wait = float(batch_wait)
        self.pad_batches = pad_batches
        self._workers = {connection: index for index, connection in enumerate(connections)}
        self._frames = SharedFrames(pin=pin_frames)
        self._models = [model] if twin is None else [model, twin]
        self._turn = 0
        self._in_flight: _InFlight | None = None
        #: what the server did: model steps, requests and frames answered, seconds spent answering
        self.stats: dict[str, Any] = {"steps": 0, "requests": 0, "frames": 0, "busy_s": 0.0}
        #: the same per second of `time.monotonic()` (a clock all processes of the machine share):
        #: second -> [steps, frames, busy seconds]
        self.timeline: dict[int, list[float]] = {}

    def run(self) -> None:
        """Serve until every worker has closed its pipe."""
        open_ = set(self._workers)
        pending: dict[Connection, tuple] = {}
        deadline = 0.0
        try:
            while open_ or pending or self._in_flight is not None:
                if self._in_flight is not None and self._in_flight.finished():
                    self._answer_in_flight()  # its workers wait: answer before anything else
                listening = [c for c in open_ if c not in pending]
                polling = self._in_flight is not None and self._in_flight.pollable
                timeout: float | None = None
                if pending:
                    timeout = max(0.0, deadline - time.monotonic())
                elif self._in_flight is not None:  # look for requests, then answer the step
                    timeout = _POLL_S if polling else 0.0
                if polling and timeout is not None:
                    timeout = min(timeout, _POLL_S)
                ready = wait(listening, timeout=timeout) if listening else []
                for connection in ready:
                    try:
                        request = connection.recv()
                    except (EOFError, OSError):  # the worker ended (or died)
                        open_.discard(connection)
                        self._frames.forget(self._workers[connection])
                        continue
                    if not pending:
                        deadline = time.monotonic() + self.batch_wait
                    pending[connection] = request
                # workers whose request is in flight cannot ask again before their answer
                flying = {c for c, _, _ in self._in_flight.requests} if self._in_flight is not None else set()
                wanted = min(len(open_ - flying), self.step_requests or len(open_))
                if pending and (len(pending) >= wanted or time.monotonic() >= deadline):
                    taken = list(pending)[: self.step_requests or len(pending)]
                    self._step({connection: pending.pop(connection) for connection in taken})
                    if pending:  # requests left for the next step: it goes as soon as it may
                        deadline = time.monotonic()
                elif self._in_flight is not None and not ready and not polling:
                    self._answer_in_flight()
        finally:
            with contextlib.suppress(Exception):
                self._answer_in_flight()
            self._frames.close()

    def _record(self, requests: Sequence[Request], began: float, busy: float) -> None:
        frames = sum(len(images) for _, images, _ in requests)
        for key, value in (("steps", 1), ("requests", len(requests)), ("frames", frames), ("busy_s", busy)):
            self.stats[key] += value
        second = self.timeline.setdefault(int(began), [0, 0, 0.0])
        second[0], second[1], second[2] = second[0] + 1, second[1] + frames, second[2] + busy
        if len(self.timeline) > 3600:
            del self.timeline[min(self.timeline)]

    def _step(self, pending: dict[Connection, tuple]) -> None:
        """Answer the requests that came, or with a twin launch their pose step (answered later)."""
        began = time.monotonic()
        by_op: dict[str, list[Request]] = {}
        for connection, (op, refs, args) in pending.items():
            worker = self._workers[connection]
            try:
                images = [self._frames.view(worker, ref) for ref in refs]
            except (OSError, ValueError, TypeError) as exc:
                self._reply(connection, ("error", f"model server could not read the frames: {exc}"))
                continue
            by_op.setdefault(op, []).append((connection, images, args))
        if self.prepare_graphs:
            self._prepare({i.shape[:2] for rs in by_op.values() for _, images, _ in rs for i in images})
        if len(self._models) > 1 and set(by_op) <= {"pose", "detect_and_pose"}:
            detect = by_op.get("detect_and_pose", [])
            if detect and "pose" not in by_op and self._launch_after_detect(detect, began):
                return
            to_pose = by_op.get("pose", []) + self._detected(detect, began)
            if not to_pose or self._launch(to_pose, began):
                return
            by_op = {"pose": to_pose}
        self._answer_in_flight()  # before a synchronous step: one model's buffers at a time
        for op, requests in by_op.items():
            self._serve_recorded(op, requests, began)

    def _prepare(self, shapes: set[tuple[int, ...]]) -> None:
        """Capture every CUDA-graph step a frame size can need (each padded batch size, both models)
        when it comes first: captured lazily, they kept coming for a minute of the H100 run as rarer
        combinations of requests turned up, each capture holding up every worker."""
        for shape in shapes - self._prepared:
            self._prepared.add(shape)
            began = time.monotonic()
            largest = 1 << (max(1, len(self._workers)) - 1).bit_length()
            sizes = [size for size in (1, 2, 4, 8, 16, 32, 64) if size <= largest][-4:]  # StepCache keeps 4
            made = 0
            for model in self._models:
                prepare = getattr(model, "prepare", None)
                if prepare is not None:
                    made += int(prepare(int(shape[0]), int(shape[1]), sizes))
            logger.info("model server: %d CUDA-graph steps for %dx%d frames in %.1f s", made, shape[1],
                        shape[0], time.monotonic() - began)  # fmt: skip

    def _detected(self, requests: list[Request], began: float) -> list[Request]:
        """The detector on the frames of these detect-and-pose requests (the host waits for it), each
        image's rule applied to its detections: the same requests as pose requests on the chosen boxes,
        so that their pose step joins the one launched for the pose requests. Where the detector fails
        they are served the plain way (each alone) and left out."""
        if not requests:
            return []
        try:
            rules = [rule for _, _, request_rules in requests for rule in request_rules]
            found = self._detections(self._merged("detect", requests)[0])  # padding last, unread
            chosen = [rule(*boxes) for rule, boxes in zip(rules, found[: len(rules)], strict=True)]
        except Exception as exc:
            logger.debug("detector step of %d requests failed (%s); served alone", len(requests), exc)
            self._answer_in_flight()
            self._serve_recorded("detect_and_pose", requests, began)
            return []
        as_pose, start = [], 0
        for connection, request_images, _ in requests:
            as_pose.append((connection, request_images, chosen[start : start + len(request_images)]))
            start += len(request_images)
        return as_pose

    def _detections(self, images: list[np.ndarray]) -> list[BoxesAndScores]:
        """The detector on these images. The step in flight is answered meanwhile: its GPU work comes
        first on the stream, so the detector's answer cannot come sooner anyway."""
        launch = getattr(self.model, "launch_detect", None)
        read = getattr(self.model, "launched_detections", None)
        launched = launch(images) if launch is not None and read is not None else None
        self._answer_in_flight()
        found = read(launched) if launched is not None else None  # type: ignore[misc]
        return found if found is not None else self.model.detect(images)

    def _launch_after_detect(self, requests: list[Request], began: float) -> bool:
        """Detect-and-pose requests alone: start the detector, answer the step in flight while it runs,
        then launch the pose step on the chosen detections, on the frames the detector read (False where
        the model cannot; the caller serves them)."""
        model = self._models[self._turn]
        launch = getattr(model, "launch_detect", None)
        go_on = getattr(model, "launch_pose_on_detections", None)
        if launch is None or go_on is None:
            return False
        images, rules = self._merged("detect_and_pose", requests)
        try:
            detect = launch(images)
        except Exception as exc:  # served the plain way, which reports it
            logger.debug("could not launch a detector step (%s)", exc)
            return False
        if detect is None:
            return False
        self._answer_in_flight()
        try:
            handle = go_on(detect, rules)
        except Exception as exc:
            logger.debug("could not launch a pose step on detections (%s)", exc)
            handle = None
        if handle is None:  # the detector's answer is used up: the plain way from the start
            self._serve_recorded("detect_and_pose", requests, began)
            return True
        self._turn = (self._turn + 1) % len(self._models)
        self._in_flight = _InFlight(requests, model, handle, began, "detect_and_pose")
        return True

    def _merged(self, op: str, requests: Sequence[Request]) -> tuple[list[np.ndarray], list[Any]]:
        images = [image for _, request_images, _ in requests for image in request_images]
        args = [arg for _, _, request_args in requests for arg in request_args]
        return _padded(op, images, args) if self.pad_batches else (images, args)

    def _serve(self, op: str, requests: Sequence[Request], model: FramePoseModel | None = None) -> None:
        """One synchronous model call for these requests, or each alone when the merged call fails."""
        model = model or self.model
        try:
            merged = run_merged(model, op, *self._merged(op, requests))
        except Exception as exc:
            if len(requests) == 1:
                self._reply(requests[0][0], ("error", _error_text(exc)))
                return
            logger.debug("merged %s of %d requests failed (%s); each alone", op, len(requests), exc)
            for connection, images, args in requests:
                try:
                    self._reply(connection, ("ok", run_merged(model, op, images, args)))
                except Exception as alone:
                    self._reply(connection, ("error", _error_text(alone)))
            return
        self._answer(requests, merged)

    def _serve_recorded(self, op: str, requests: Sequence[Request], began: float) -> None:
        """`_serve`, then the step counted in the stats and timeline from `began`."""
        self._serve(op, requests)
        self._record(requests, began, time.monotonic() - began)

    def _answer(self, requests: Sequence[Request], merged: list[Any]) -> None:
        start = 0
        for connection, images, _ in requests:
            self._reply(connection, ("ok", merged[start : start + len(images)]))
            start += len(images)

    def _answer_rows(self, requests: Sequence[Request], rows: np.ndarray, counts: list[int]) -> None:
        """Each request's share of a step's pose rows (one array, far cheaper to send than its people;
        the worker makes them: `PendingReply.answer`)."""
        image = row = 0
        for connection, images, _ in requests:
            mine = counts[image : image + len(images)]
            self._reply(connection, ("rows", (rows[row : row + sum(mine)], mine)))
            image, row = image + len(images), row + sum(mine)

    def _launch(self, requests: list[Request], began: float) -> bool:
        """Launch the pose step of these requests on the model whose turn it is, then answer the step in
        flight (on the other model); False where the model cannot launch it (the caller serves it)."""
        model = self._models[self._turn]
        launch = getattr(model, "launch_pose", None)
        if launch is None:
            return False
        images, args = self._merged("pose", requests)
        try:
            handle = launch(images, [a[0] for a in args], [a[1] for a in args])
        except Exception as exc:  # served the plain way, which reports it
            logger.debug("could not launch a pose step (%s)", exc)
            handle = None
        if handle is None:
            return False
        self._turn = (self._turn + 1) % len(self._models)
        self._answer_in_flight()
        self._in_flight = _InFlight(requests, model, handle, began)
        return True

    def _answer_in_flight(self) -> None:
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        rows_of = getattr(flight.model, "rows_launched", None)
        try:
            if rows_of is not None:
                rows, counts = rows_of(flight.handle)
            else:
                merged = flight.model.pose_launched(flight.handle)  # type: ignore[attr-defined]
        except Exception as exc:
            logger.debug("a launched pose step failed (%s); its requests are served again", exc)
            self._serve(flight.op, flight.requests, flight.model)
        else:
            if rows_of is not None:
                self._answer_rows(flight.requests, rows, counts)
            else:
                self._answer(flight.requests, merged)
        self._record(flight.requests, flight.began, time.monotonic() - flight.began)

    def _reply(self, connection: Connection, message: tuple) -> None:
        with contextlib.suppress(OSError):  # the worker is gone; its pipe's EOF is seen next round
            connection.send(message)


def _no_pose(boxes: np.ndarray, scores: np.ndarray) -> BoxesAndScores:
    return boxes[:0], scores[:0]


def _padded(op: str, images: list[np.ndarray], args: list[Any]) -> tuple[list[np.ndarray], list[Any]]:
    """`images` and `args` filled up to a power of two with the first image again, given no boxes to
    pose (see `ModelServer`); the answers for the padding are left unread."""
    size = 1 << (len(images) - 1).bit_length()
    extra = size - len(images)
    if extra == 0:
        return images, args
    blank: Any = {"detect": None, "detect_and_pose": _no_pose,
                  "pose": (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))}.get(op)  # fmt: skip
    return images + [images[0]] * extra, args + [blank] * extra


def _error_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, RtposeError) else f"internal error: {type(exc).__name__}: {exc}"


def server_main(
    build: dict, connections: list[Connection], control: Connection, threads: int, batch_wait: float
) -> None:
    """Entry of the server process: builds the models (`build_frame_model(**build)`), says "ready" (or
    "failed") on `control`, serves, and at the end reports ("done", `ModelServer.stats` with its
    `timeline`)."""
    from rtpose.pipelines.multiprocess import limit_threads
    from rtpose.pipelines.video import build_frame_model

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; the server ends with its workers
    try:
        step_requests = environment_count("RTPOSE_SERVER_STEP", minimum=1)  # an experiment's setting
        limit_threads(threads)
        model = build_frame_model(**build)
    except BaseException as exc:
        control.send(("failed", -1, f"{type(exc).__name__}: {exc}"))
        return
    control.send(("ready", -1, None))
    cuda = str(build.get("device", "cpu")).startswith("cuda")
    twin = model.twin() if cuda and hasattr(model, "twin") else None  # two pose steps in flight
    # with a twin, steps of half the workers each: one on the GPU while the other's workers work
    # (H100, 8 workers: +17% at --det-interval 5, +20% every frame against steps of every request)
    if step_requests is None and twin is not None:
        step_requests = -(-len(connections) // 2)
    server = ModelServer(
        model, connections, batch_wait, pad_batches=cuda, pin_frames=cuda, twin=twin, prepare_graphs=cuda,
        step_requests=step_requests,
    )  # fmt: skip
    try:
        server.run()
    finally:
        with contextlib.suppress(OSError):
            control.send(("done", -1, {**server.stats, "timeline": server.timeline}))
