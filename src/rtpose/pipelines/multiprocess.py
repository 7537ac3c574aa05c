"""The video pipeline over several processes: streams split among workers, each one a whole `Pipeline`.

Why: one Python process is bound by its one thread doing the per-frame work of every stream (graph
launches, tracking, smoothing, results) and by decoder threads contending for its GIL. On the H100 host
one process ran 8 streams of the street video at ~140 frames/s, and ~240 with the frames already in
memory (no decoding at all). Processes share nothing but the GPU (under a private MPS daemon by default,
`pipelines.mps`, so their kernels run side by side instead of in turns): each
worker decodes, detects, tracks, smooths and writes the annotated videos of its own streams, and sends
the per-frame results (people, not images) to the parent, which writes the JSONL and yields them.

Sources added before iteration are dealt round-robin; a source added while running goes to the running
worker with the fewest open streams; `remove_source` works while running. A worker ends with its streams
unless `results(stop_when_idle=False)` keeps every worker for sources still to come (a service). The
first worker starts alone and builds the engines (the on-disk cache then serves the others). A worker
that fails or dies ends its streams with an error; the others go on. Workers report their readers'
numbers (decoder, drops, frame counts) every 0.5 s for the status line (`stream_stats`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from rtpose.errors import RtposeError
from rtpose.pipelines.video import FrameResult, Pipeline, StreamRate, StreamRunner, model_build_options
from rtpose.sinks.json_out import JsonlWriter
from rtpose.sources.stream_hub import StreamEnd, StreamStats
from rtpose.sources.video import parse_source

logger = logging.getLogger("rtpose.video")

SourceEntry = tuple[Any, str, float | None]
_SERVER = -1  # the model server's key among the worker indices
_STATS_INTERVAL = 0.5  # seconds between a worker's reports of its readers' numbers


def _name(index: int) -> str:
    return "the model server" if index == _SERVER else f"worker {index}"


def limit_threads(threads: int) -> None:
    """Thread pools of the CPU libraries of one worker: each would size itself to every core of the
    machine, and N workers with one pool per core each oversubscribe the CPU N times."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def _worker_main(
    index: int,
    sources: list[SourceEntry],
    options: dict,
    threads: int,
    results: Any,
    commands: Any,
    server: Connection | None = None,
    stop_when_idle: bool = True,
) -> None:
    """One worker: a `Pipeline` over its sources; results, then its stream ends, go to `results` (the
    sending end of this worker's own pipe: a worker that dies mid-message garbles only its own channel).
    server: this worker's pipe to the model server (then the worker builds no model of its own).
    Commands: ("add", (source, name, fps)), ("remove", name), ("stop", None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it sends "stop" to everyone
    try:
        limit_threads(threads)
        if server is not None:
            from rtpose.pipelines.model_server import RemoteFrameModel

            options = {**options, "model": RemoteFrameModel(server)}
        pipeline = Pipeline(**options)
        for source, name, fps in sources:
            pipeline.add_source(source, name=name, fps=fps)
    except BaseException as exc:  # reported to the parent, which ends this worker's streams
        results.send(("failed", index, f"{type(exc).__name__}: {exc}"))
        results.send(("ended", index, []))
        return
    results.send(("ready", index, None))

    sending = threading.Lock()  # the command thread reports too: one message at a time on the pipe

    def send(message: tuple) -> None:
        with sending:
            results.send(message)

    def obey() -> None:  # commands arrive while the pipeline may be waiting for frames
        while True:
            command, argument = commands.get()
            if command == "stop":
                pipeline.stop()
                return
            if command == "add":
                source, name, fps = argument
                try:
                    pipeline.add_source(source, name=name, fps=fps)
                except RtposeError as exc:  # e.g. the file went away, or this pipeline is closing
                    send(("source_failed", index, StreamEnd(name, "failed", 0, str(exc))))
                continue
            with contextlib.suppress(RtposeError):  # ended already
                pipeline.remove_source(argument)

    threading.Thread(target=obey, daemon=True, name=f"rtpose-worker-{index}-commands").start()
    reported = 0.0
    try:
        for result in pipeline.results(stop_when_idle=stop_when_idle):
            result.image = None  # drawn into this worker's videos already; only people travel
            send(("result", index, result))
            if time.monotonic() - reported > _STATS_INTERVAL:  # for the parent's status line
                reported = time.monotonic()
                send(("stats", index, pipeline.stream_stats()))
    except BaseException as exc:
        send(("failed", index, f"{type(exc).__name__}: {exc}"))
    finally:
        pipeline.close()
        if server is not None:
            pipeline.model.close()  # the server ends when every worker has closed its pipe
        with contextlib.suppress(OSError), sending:  # the parent may have stopped listening
            results.send(("ended", index, pipeline.ended))


class ProcessPipeline(StreamRunner):
    """`Pipeline` with its streams spread over `workers` processes (see the module docstring).

    Takes the options of `Pipeline` (except `model`, which cannot travel to a process); `jsonl` is
    written by this process, `out_dir` by the workers (one MP4 per stream either way). threads: size of
    each worker's torch and OpenCV thread pools (default: the machine's cores shared among the workers).
    model_server: one more process runs the models for all workers (`rtpose.pipelines.model_server`);
    the workers then decode, track, smooth and draw, and send their frames through shared memory.
    server_wait: how long the server waits for the other workers' requests after the first of a step.
    mps: run the workers under a private CUDA MPS daemon (`rtpose.pipelines.mps`) so their kernels share
    the GPU at once instead of taking turns: "on" (an error where MPS cannot run), "off", or "auto" (on
    for two or more workers with their own models on a CUDA device, where the daemon starts; else off,
    with a warning when it was wanted but could not start). `mps_used` says what happened.
    """

    def __init__(
        self,
        pose: str | os.PathLike[str] = "rtmpose-t",
        det: str | os.PathLike[str] = "rtmdet-nano",
        *,
        workers: int = 2,
        jsonl: str | os.PathLike[str] | None = None,
        sources: Iterable[str | os.PathLike[str]] = (),
        start_timeout: float = 900.0,
        threads: int | None = None,
        model_server: bool = False,
        server_wait: float = 0.002,
        mps: str = "auto",
        **options: Any,
    ) -> None:
        super().__init__()
        if workers < 1:
            raise RtposeError(f"workers must be at least 1, not {workers}")
        if threads is not None and threads < 1:
            raise RtposeError(f"threads must be at least 1, not {threads}")
        if server_wait < 0:
            raise RtposeError(f"server_wait must be >= 0, not {server_wait}")
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        if "model" in options:
            raise RtposeError("ProcessPipeline builds its models in the workers; it takes no model=")
        self.workers = int(workers)
        self.options = {"pose": pose, "det": det, **options}
        self.model_server, self.server_wait = bool(model_server), float(server_wait)
        if mps not in ("auto", "on", "off"):
            raise RtposeError(f"mps must be 'auto', 'on' or 'off', not {mps!r}")
        self.mps = mps
        #: whether the workers ran under an MPS daemon (known once they have started)
        self.mps_used = False
        self._mps: Any = None
        self._server_build = model_build_options(**self.options) if model_server else None  # checks them
        #: what the model server did (`ModelServer.stats`), once it has ended
        self.server_stats: dict[str, Any] | None = None
        self.start_timeout = float(start_timeout)
        self.ended: list[StreamEnd] = []
        self.rates: dict[str, StreamRate] = {}
        self._sources: list[SourceEntry] = []
        self._owner: dict[str, int] = {}
        self._jsonl = JsonlWriter(jsonl) if jsonl is not None else None
        self._processes: dict[int, Any] = {}
        self._server_control: Any = None
        self._commands: list[Any] = []
        self._gone: set[int] = set()  # workers that have ended
        self._stream_stats: dict[str, StreamStats] = {}
        self._stop_when_idle = True
        self._adding = threading.Lock()
        self._started = self._closed = False
        for source in sources:
            self.add_source(source)

    def add_source(
        self,
        source: str | os.PathLike[str] | Iterable[np.ndarray],
        name: str | None = None,
        fps: float | None = None,
    ) -> str:
        """Add a source, before or while iterating; returns its stream name (bad paths raise here).
        Before, sources are dealt round-robin to the workers; while running, a new one goes to the
        running worker with the fewest open streams."""
        if self._closed:
            raise RtposeError("this pipeline is closed; create a new one")
        if isinstance(source, Iterator):
            raise RtposeError(
                "ProcessPipeline cannot send a generator or iterator to a worker process; pass a list of "
                "frames, a file, a folder, a camera or a URL"
            )
        spec = parse_source(source, name, fps)
        with self._adding:  # results() may be dealing the sources out right now, in another thread
            unique, count = spec.name, 1
            while unique in self._owner:
                count += 1
                unique = f"{spec.name}-{count}"
            worker = self._least_busy_worker() if self._started else len(self._sources) % self.workers
            self._owner[unique] = worker
            self._sources.append((source, unique, fps))
            self.rates[unique] = StreamRate()
            if self._started:
                self._commands[worker].put(("add", (source, unique, fps)))
        return unique

    def _least_busy_worker(self) -> int:
        """The running worker with the fewest open streams; with stop_when_idle, one that has some (a
        worker without any is ending). A source sent to a worker that ends before reading it is reported
        as failed, never lost silently."""
        running = [i for i in range(len(self._commands)) if i not in self._gone]
        reported = self._reported()
        open_streams = dict.fromkeys(running, 0)
        for name, worker in self._owner.items():
            if worker in open_streams and name not in reported:
                open_streams[worker] += 1
        if self._stop_when_idle:
            running = [i for i in running if open_streams[i] > 0]
        if not running:
            raise RtposeError(
                "no worker is running a stream any more (each ends with its streams); to add sources to an "
                "idle pipeline, iterate results(stop_when_idle=False)"
            )
        return min(running, key=lambda i: open_streams[i])

    def remove_source(self, name: str) -> None:
        """Stop a stream while running (its worker finishes its outputs and reports it removed)."""
        if name not in self._owner:
            raise RtposeError(f"no stream named {name!r}")
        if self._started and not self._closed:
            self._commands[self._owner[name]].put(("remove", name))

    @property
    def streams(self) -> list[str]:
        return list(self._owner)

    def stream_stats(self) -> dict[str, StreamStats]:
        """The workers' latest reports (every 0.5 s) for the streams not reported ended."""
        ended = self._reported()
        return {name: stats for name, stats in self._stream_stats.items() if name not in ended}

    def results(self, *, stop_when_idle: bool = True) -> Iterator[FrameResult]:
        """Results of all workers as they come. Ends when every worker has ended (a worker ends when its
        streams have, with stop_when_idle) or, for a service that adds sources later, runs every worker
        until `stop()` / `close()` (stop_when_idle=False)."""
        if self._started:
            raise RtposeError("a ProcessPipeline runs once; create a new one")
        context = mp.get_context("spawn")  # CUDA cannot be used in forked children
        with self._adding:
            used = min(self.workers, len(self._sources)) if stop_when_idle else self.workers
            assigned: list[list[SourceEntry]] = [[] for _ in range(used)]
            for entry in self._sources:
                assigned[self._owner[entry[1]]].append(entry)
            self._commands = [context.Queue() for _ in range(used)]
            self._stop_when_idle = stop_when_idle
            self._started = True  # from here on, add_source sends new sources to a running worker

        def owned(index: int | None = None) -> list[SourceEntry]:  # sources may also come while running
            return [entry for entry in self._sources if index is None or self._owner[entry[1]] == index]

        readers: dict[int, Any] = {}
        to_server: list[Any] = [None] * used  # each worker's end of its pipe to the model server

        def launch(process: Any) -> None:  # CUDA processes connect to the MPS daemon where there is one
            with self._mps.client_environment() if self._mps else contextlib.nullcontext():
                process.start()

        def start(index: int) -> None:
            reader, sender = context.Pipe(duplex=False)
            args = (index, assigned[index], self.options, self.threads, sender, self._commands[index],
                    to_server[index], stop_when_idle)  # fmt: skip
            process = context.Process(
                target=_worker_main, args=args, name=f"rtpose-worker-{index}", daemon=True
            )
            launch(process)
            sender.close()  # the child has its copy: when it exits, this end reads EOF
            if to_server[index] is not None:
                to_server[index].close()
            self._processes[index] = process
            readers[index] = reader

        def start_server() -> None:
            from rtpose.pipelines.model_server import server_main

            pipes = [context.Pipe(duplex=True) for _ in range(used)]
            to_server[:] = [worker_end for _, worker_end in pipes]
            reader, sender = context.Pipe(duplex=False)
            args = (self._server_build, [server_end for server_end, _ in pipes], sender, self.threads,
                    self.server_wait)  # fmt: skip
            process = context.Process(target=server_main, args=args, name="rtpose-model-server", daemon=True)
            launch(process)
            sender.close()
            for server_end, _ in pipes:
                server_end.close()
            self._processes[_SERVER] = process
            readers[_SERVER] = self._server_control = reader

        def start_others() -> None:
            for other in range(0 if self.model_server else 1, used):
                start(other)

        first = _SERVER if self.model_server else 0
        try:
            self._start_mps(used)
            if used and self.model_server:  # alone first: it builds the engines
                start_server()
            elif used:  # alone first: it builds the engines, the others then load them from the cache
                start(0)
            waiting_first, deadline = used > 0, time.monotonic() + self.start_timeout
            while readers:
                ready = wait(list(readers.values()), timeout=0.5)
                if not ready and waiting_first and time.monotonic() > deadline:
                    who = "the model server" if self.model_server else "worker 0"
                    raise RtposeError(f"{who} did not start in {self.start_timeout:.0f} s")
                for index in [i for i, reader in readers.items() if reader in ready]:
                    try:
                        kind, _, payload = readers[index].recv()
                    except (EOFError, OSError, pickle.UnpicklingError):  # gone without saying "ended"
                        process = self._processes[index]
                        process.join(timeout=5)
                        kind, payload = "lost", None
                        if index != _SERVER or waiting_first:  # a server lost later: its workers say so
                            reason = f"{_name(index)} died (exit code {process.exitcode})"
                            logger.error("%s", reason)
                            self._end_streams(owned() if index == _SERVER else owned(index), reason)
                    if kind == "result":
                        self._emit(payload)
                        yield payload
                    elif kind == "ready" and waiting_first and index == first:
                        waiting_first = False
                        start_others()
                    elif kind == "failed":
                        logger.error("%s failed: %s", _name(index), payload)
                        self._end_streams(owned(index) if index != _SERVER else [], payload)
                        if waiting_first and index == first:  # the others would fail the same way
                            waiting_first = False
                            for other in range(0 if index == _SERVER else 1, used):
                                self._gone.add(other)
                                reason = f"not started: {_name(index)} failed ({payload})"
                                self._end_streams(owned(other), reason)
                    elif kind == "done":
                        self.server_stats = payload
                    elif kind == "stats":
                        self._stream_stats.update(payload)
                    elif kind == "source_failed":
                        logger.error("%s: %s", payload.stream, payload.error)
                        self.ended.append(payload)
                    if kind == "ended":  # less those already reported failed
                        done = self._reported()
                        self.ended.extend(end for end in payload if end.stream not in done)
                    if kind in ("ended", "lost") and index != _SERVER:  # a source sent as it was ending
                        self._gone.add(index)
                        self._end_streams(owned(index), f"{_name(index)} ended before it could start it")
                    if kind in ("ended", "lost", "done") or (kind == "failed" and index == _SERVER):
                        readers.pop(index).close()
        finally:
            self.close()

    def stop(self) -> None:
        """Ask every worker to end after its current step (outputs are finished)."""
        super().stop()
        for commands in self._commands:
            commands.put(("stop", None))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop()
        # the server last: it ends when its workers have
        for _, process in sorted(self._processes.items(), key=lambda item: item[0] == _SERVER):
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        control = self._server_control
        if control is not None and not control.closed:  # the caller left before the server said "done"
            with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):
                while control.poll():
                    kind, _, payload = control.recv()
                    if kind == "done":
                        self.server_stats = payload
            control.close()
        if self._mps is not None:  # after every worker has gone
            self._mps.stop()
        reported = self._reported()
        for _, name, _ in self._sources:  # the caller left early: as `Pipeline.close` says of its streams
            if name not in reported:
                self.ended.append(StreamEnd(name, "stopped", self.rates[name].frames))
        if self._jsonl is not None:
            self._jsonl.close()

    # -- internals ----------------------------------------------------------------------------------
    def _start_mps(self, used: int) -> None:
        from rtpose.pipelines.mps import MpsDaemon, MpsUnavailable

        on_cuda = str(self.options.get("device", "cpu")).startswith("cuda")
        wanted = self.mps == "on" or (self.mps == "auto" and on_cuda and used > 1 and not self.model_server)
        if not wanted:
            return
        daemon = MpsDaemon()
        try:
            daemon.start()
        except MpsUnavailable as exc:
            if self.mps == "on":
                raise
            logger.warning("MPS: %s; the workers take turns on the GPU instead", exc)
            return
        self._mps, self.mps_used = daemon, True

    def _emit(self, result: FrameResult) -> None:
        self.rates.setdefault(result.stream, StreamRate()).add(result.latency, time.monotonic())
        if self._jsonl is not None:
            self._jsonl.write(result.to_json(), plain=True)

    def _reported(self) -> set[str]:
        """The streams whose end is in `ended`."""
        return {end.stream for end in self.ended}

    def _end_streams(self, entries: list[SourceEntry], error: str) -> None:
        done = self._reported()
        for _, name, _ in entries:
            if name not in done:
                self.ended.append(StreamEnd(name, "failed", self.rates[name].frames, error))
