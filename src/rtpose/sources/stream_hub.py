"""Many video sources at once: one reader thread per source, bounded buffers, cross-stream batches.

Each source gets a daemon thread that decodes into its own bounded buffer (`queue_size` frames).
Two buffer policies:

- file mode (default): a full buffer blocks the reader (back-pressure), so no frame is ever lost and
  a slow model simply slows decoding down;
- realtime mode: a full buffer drops its *oldest* frame (counted per stream), so results stay close to
  live at the cost of skipped frames.

`next_batch` takes at most one frame per stream (a stream's next frame depends on the result of its
previous one: boxes come from the last poses), from up to `max_frames` streams, waiting at most
`timeout` seconds for slower streams once one frame is ready. Streams are served round-robin when
there are more of them than `max_frames`.

Faults stay inside their stream: a source that cannot be opened, is corrupt or truncated ends with an
error that is logged and reported in the batch's `ended` list, the others go on. Network sources and
cameras that fail or drop are reopened with exponential backoff (`ReconnectPolicy`) before giving up.
A file served over HTTP starts again from its beginning when reopened: frames up to the last one
delivered are skipped, so a recovered stream has no repeats. Live protocols (RTSP, ...) continue.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rtpose.errors import RtposeError
from rtpose.sources.video import (
    DecodeMode,
    SourceSpec,
    VideoSourceError,
    iter_decoded,
    iter_folder,
    iter_frames_of,
    open_video,
    parse_source,
)

logger = logging.getLogger("rtpose.video")

EndReason = Literal["finished", "failed", "removed", "stopped"]
#: a stream announcing N frames that ends before this fraction of N is treated as cut off
_TRUNCATED_FRACTION = 0.98


@dataclass
class Frame:
    stream: str
    #: 0-based, counted over the whole stream (across reconnects)
    index: int
    #: presentation time in seconds
    time: float
    image: np.ndarray
    #: time.monotonic() when the frame was decoded (for latency)
    decoded_at: float


@dataclass
class StreamEnd:
    stream: str
    reason: EndReason
    frames: int
    error: str | None = None


@dataclass
class Batch:
    frames: list[Frame] = field(default_factory=list)
    ended: list[StreamEnd] = field(default_factory=list)


@dataclass(frozen=True)
class ReconnectPolicy:
    """Reopen a dropped live source up to `attempts` times, waiting first_delay * 2^k (<= max_delay)."""

    attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.first_delay * (2.0**attempt))


@dataclass
class StreamStats:
    name: str
    kind: str
    location: str
    decoder: str = "-"
    fps: float = 0.0
    total_frames: int = 0
    decoded: int = 0
    dropped: int = 0
    reconnects: int = 0
    finished: bool = False
    error: str | None = None


def _replays_from_start(spec: SourceSpec) -> bool:
    """Whether reopening gives the same content from its start (a file served over HTTP): then frames
    up to the last one delivered are skipped after a reconnect. Live protocols (RTSP, RTMP, UDP, ...)
    and cameras continue from "now", so everything they send is new."""
    return spec.kind == "url" and spec.location.lower().startswith(("http://", "https://"))


class _Stream:
    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.buffer: collections.deque[Frame] = collections.deque()
        self.stats = StreamStats(spec.name, spec.kind, spec.location if spec.kind != "frames" else "<frames>")
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.end: StreamEnd | None = None
        self.reported = False


class StreamHub:
    """Readers for every source, and the batches their frames form (see the module docstring)."""

    def __init__(
        self,
        *,
        queue_size: int = 8,
        realtime: bool = False,
        decode: DecodeMode = "auto",
        reconnect: ReconnectPolicy | None = None,
        open_timeout: float = 10.0,
        loop: bool = False,
    ) -> None:
        if queue_size < 1:
            raise RtposeError(f"queue_size must be at least 1, not {queue_size}")
        self.queue_size = int(queue_size)
        self.realtime = bool(realtime)
        self.decode = decode
        self.reconnect = reconnect or ReconnectPolicy()
        self.open_timeout = float(open_timeout)
        #: video files start again at their end (frame indices and times go on), for demos and soak tests
        self.loop = bool(loop)
        self._streams: dict[str, _Stream] = {}
        self._cond = threading.Condition()
        self._turn = 0
        self._closed = False

    # -- sources ----------------------------------------------------------------------------------
    def add(
        self,
        source: str | os.PathLike[str] | Iterable[np.ndarray],
        name: str | None = None,
        fps: float | None = None,
    ) -> str:
        """Start reading a source now; returns its stream name (made unique). Bad paths raise at once."""
        spec = parse_source(source, name, fps)
        with self._cond:
            if self._closed:
                raise RtposeError("this pipeline is closed; create a new one")
            unique, count = spec.name, 1
            while unique in self._streams:
                count += 1
                unique = f"{spec.name}-{count}"
            if unique != spec.name:
                spec = SourceSpec(unique, spec.kind, spec.location, spec.frames, spec.fps)
            stream = _Stream(spec)
            self._streams[unique] = stream
        stream.thread = threading.Thread(
            target=self._read, args=(stream,), name=f"rtpose-reader-{unique}", daemon=True
        )
        stream.thread.start()
        return unique

    def remove(self, name: str) -> None:
        """Stop a stream now: its buffered frames are discarded and its end is reported as "removed"."""
        with self._cond:
            stream = self._streams.get(name)
            if stream is None:
                raise RtposeError(f"no stream named {name!r} (streams: {', '.join(self._streams) or 'none'})")
            stream.stop.set()
            stream.buffer.clear()
            if stream.end is None or stream.end.reason != "removed":
                stream.end = StreamEnd(name, "removed", stream.stats.decoded, None)
                stream.reported = False
            self._cond.notify_all()
        logger.info("%s: removed", name)

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, s in self._streams.items() if not s.reported]

    def stats(self) -> dict[str, StreamStats]:
        with self._cond:
            return {n: s.stats for n, s in self._streams.items()}

    def close(self, join_timeout: float = 2.0) -> None:
        """Stop every reader; waits briefly for threads stuck in network reads (they are daemons)."""
        with self._cond:
            self._closed = True
            streams = list(self._streams.values())
            for stream in streams:
                stream.stop.set()
                stream.buffer.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + join_timeout
        for stream in streams:
            if stream.thread is not None:
                stream.thread.join(max(0.0, deadline - time.monotonic()))

    # -- batches ----------------------------------------------------------------------------------
    def next_batch(self, max_frames: int, timeout: float, partial: bool = True) -> Batch | None:
        """Up to `max_frames` frames (one per stream) and the streams that ended; None when no stream
        is left at all. An empty batch means nothing arrived within `timeout` seconds (partial=False:
        nothing is taken unless a frame of every live stream, up to `max_frames`, or an end is there)."""
        if max_frames < 1:
            raise RtposeError(f"batch size must be at least 1, not {max_frames}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                ended = [
                    s for s in self._streams.values() if s.end is not None and not s.reported and not s.buffer
                ]
                live = [s for s in self._streams.values() if not s.reported and (s.end is None or s.buffer)]
                ready = [s for s in live if s.buffer]
                now = time.monotonic()
                full = len(ready) >= min(max_frames, len(live))
                if ended or (ready and (full or (partial and now >= deadline))):
                    break
                if not live:
                    return None
                if now >= deadline:
                    return Batch()
                self._cond.wait(deadline - now)
            if len(ready) > max_frames:  # round-robin over streams
                start = self._turn % len(ready)
                ready = (ready[start:] + ready[:start])[:max_frames]
                self._turn += 1
            frames = [s.buffer.popleft() for s in ready]
            for stream in ended:
                stream.reported = True
            # forget finished streams, so adding and removing sources forever keeps memory flat
            for stream in ended:
                if stream.stats.name in self._streams and (
                    stream.thread is None or not stream.thread.is_alive()
                ):
                    del self._streams[stream.stats.name]
            self._cond.notify_all()
            return Batch(frames, [s.end for s in ended if s.end is not None])

    # -- reader thread ----------------------------------------------------------------------------
    def _push(self, stream: _Stream, frame: Frame) -> bool:
        with self._cond:
            while not self.realtime and len(stream.buffer) >= self.queue_size and not stream.stop.is_set():
                self._cond.wait(0.1)
            if stream.stop.is_set():
                return False
            if len(stream.buffer) >= self.queue_size:
                stream.buffer.popleft()
                stream.stats.dropped += 1
            stream.buffer.append(frame)
            stream.stats.decoded += 1
            self._cond.notify_all()
            return True

    def _frames(self, stream: _Stream) -> tuple[Iterator[tuple[np.ndarray, float]], object | None]:
        spec = stream.spec
        if spec.kind == "folder":
            stream.stats.decoder, stream.stats.fps = "CPU (images)", spec.fps or 30.0
            return iter_folder(spec), None
        if spec.kind == "frames":
            stream.stats.decoder, stream.stats.fps = "-", spec.fps or 30.0
            return iter_frames_of(spec), None
        opened = open_video(spec, self.decode, self.open_timeout)
        stream.stats.decoder = "NVDEC" if opened.decoder == "nvdec" else "CPU"
        stream.stats.fps, stream.stats.total_frames = opened.fps, opened.total_frames
        return iter_decoded(opened), opened.container

    def _read(self, stream: _Stream) -> None:
        spec, stats = stream.spec, stream.stats
        index, attempt, last_time = 0, 0, -float("inf")
        offset, pass_start = 0.0, 0  # looping: time added to this pass, first index of this pass
        error: str | None = None
        try:
            while not stream.stop.is_set():
                container = None
                try:
                    frames, container = self._frames(stream)
                    resume = index > pass_start and _replays_from_start(spec)
                    for image, time_s in frames:
                        time_s += offset
                        if resume and time_s <= last_time:
                            continue
                        attempt = 0
                        if not self._push(stream, Frame(spec.name, index, time_s, image, time.monotonic())):
                            break
                        index, last_time = index + 1, time_s
                    if stream.stop.is_set():
                        break
                    played = index - pass_start
                    if stats.total_frames and played < _TRUNCATED_FRACTION * stats.total_frames:
                        raise VideoSourceError(f"ended after {played} of {stats.total_frames} frames")
                    if self.loop and spec.kind == "file" and played > 0:
                        offset, pass_start = last_time + 1.0 / (stats.fps or 30.0), index
                        continue  # from the start again
                    break  # a clean end
                except VideoSourceError as exc:
                    if not spec.is_live or attempt >= self.reconnect.attempts or stream.stop.is_set():
                        if spec.is_live and attempt >= self.reconnect.attempts:
                            error = f"{exc}; gave up after {attempt} reconnect attempts"
                        else:
                            error = str(exc)
                        break
                    delay = self.reconnect.delay(attempt)
                    attempt += 1
                    stats.reconnects += 1
                    logger.warning(
                        "%s: source lost (%s); reconnect attempt %d of %d in %.1f s",
                        spec.name, exc, attempt, self.reconnect.attempts, delay,
                    )  # fmt: skip
                    stream.stop.wait(delay)
                finally:
                    if container is not None:
                        container.close()  # type: ignore[attr-defined]
        except Exception as exc:  # a bug in one reader must not stop the others
            logger.exception("%s: reader crashed", spec.name)
            error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._finish(stream, index, error)

    def _finish(self, stream: _Stream, frames: int, error: str | None) -> None:
        name = stream.spec.name
        with self._cond:
            stream.stats.finished, stream.stats.error = True, error
            if stream.end is None:
                if error is not None:
                    stream.end = StreamEnd(name, "failed", frames, error)
                else:
                    stream.end = StreamEnd(name, "stopped" if stream.stop.is_set() else "finished", frames)
            if stream.reported and self._streams.get(name) is stream:
                del self._streams[name]  # removed earlier while this thread was still reading
            self._cond.notify_all()
        if error is not None:
            logger.error("%s: stream ended with an error after %d frames: %s", name, frames, error)
        else:
            logger.info("%s: stream ended after %d frames", name, frames)
