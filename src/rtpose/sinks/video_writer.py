"""Annotated video out: one MP4 per stream, encoded with PyAV.

H.264 (`libx264`) when PyAV's FFmpeg has it, else MPEG-4 Part 2 (`mpeg4`), both in yuv420p so that
every player opens them. The writer opens lazily on the first frame (the size is known then), pads
odd sizes to even ones (yuv420p needs them) and, on `close()`, flushes the encoder and writes the MP4
index, which is what makes the file playable: an interrupted run must still reach `close()`.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rtpose.errors import RtposeError

logger = logging.getLogger("rtpose.video")

_PREFERRED_CODECS: tuple[str, ...] = ("libx264", "mpeg4")


def choose_video_codec(preferred: tuple[str, ...] = _PREFERRED_CODECS) -> str:
    """The first of `preferred` that PyAV's FFmpeg can encode."""
    import av

    for name in preferred:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):
            continue
    raise RtposeError(f"none of the video encoders {', '.join(preferred)} is available in PyAV's FFmpeg")


class Mp4Writer:
    """Writes BGR frames (H, W, 3 uint8) of one stream to an MP4 file."""

    def __init__(self, path: str | os.PathLike[str], fps: float = 30.0, codec: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise RtposeError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        if not fps or fps <= 0:
            raise RtposeError(f"video fps must be positive, not {fps}")
        self.fps = float(fps)
        self.codec = codec or choose_video_codec()
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None  # (height, width) of the input frames

    def _open(self, height: int, width: int) -> None:
        import av

        self._container = av.open(str(self.path), mode="w")
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream(self.codec, rate=rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        else:
            stream.bit_rate = max(1_000_000, int(stream.width * stream.height * self.fps * 0.15))
        self._stream, self._size = stream, (height, width)

    def write(self, image: np.ndarray) -> None:
        import av

        if not (
            isinstance(image, np.ndarray)
            and image.ndim == 3
            and image.shape[2] == 3
            and image.dtype == np.uint8
        ):
            raise RtposeError(
                f"video frames must be (H, W, 3) uint8 BGR, got {getattr(image, 'shape', type(image))}"
            )
        if self._container is None:
            self._open(*image.shape[:2])
        elif image.shape[:2] != self._size:
            raise RtposeError(f"{self.path}: frame size changed from {self._size} to {image.shape[:2]}")
        height, width = image.shape[:2]
        if height % 2 or width % 2:
            image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file; safe to call twice. No frame written: no file."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            for packet in self._stream.encode(None):
                container.mux(packet)
        finally:
            container.close()
        logger.info("%s: %d frames written (%s)", self.path, self.frames, self.codec)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StreamVideoWriters:
    """One `Mp4Writer` per stream in a folder (`<folder>/<stream>.mp4`), opened on a stream's first frame."""

    def __init__(self, folder: str | os.PathLike[str], codec: str | None = None) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RtposeError(f"cannot create output folder {self.folder}: {exc}") from None
        self.codec = codec or choose_video_codec()
        self._writers: dict[str, Mp4Writer] = {}

    def path_for(self, stream: str) -> Path:
        return self.folder / f"{stream}.mp4"

    def write(self, stream: str, image: np.ndarray, fps: float) -> None:
        writer = self._writers.get(stream)
        if writer is None:
            writer = self._writers[stream] = Mp4Writer(self.path_for(stream), fps or 30.0, self.codec)
        writer.write(image)

    def close_stream(self, stream: str) -> None:
        writer = self._writers.pop(stream, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        """Finish every file; one failing file does not keep the others from being finished."""
        for stream in list(self._writers):
            try:
                self.close_stream(stream)
            except Exception:
                logger.exception("%s: could not finish the video file", stream)
