"""Video sources: what a user names (file, image folder, camera, URL) -> decoded BGR frames with times.

Decoding uses PyAV (FFmpeg). `decode` picks where: "cpu" (FFmpeg's software decoders, threaded) or
"nvdec" (FFmpeg's CUDA hwaccel: NVDEC decodes, frames are downloaded to host memory). "auto" decodes on
the CPU: measured on the H100 host (16 cores, the 1280x720 H.264 street video), one stream decoded at
457 frames/s on the CPU against 346 with NVDEC, and every NVDEC stream opens a CUDA context of its own,
which takes turns on the GPU with the models (8 streams of the video pipeline: 184 frames/s in one
process with CPU decoding against 142-158 with NVDEC). NVDEC pays only once its frames stay on the GPU,
which this module does not do yet. The choice is logged once per source open.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rtpose.decode.image import decode_image
from rtpose.errors import RtposeError
from rtpose.settings import environment_count
from rtpose.sources.files import is_image_file

logger = logging.getLogger("rtpose.video")

SourceKind = Literal["file", "folder", "camera", "url", "frames"]
DecodeMode = Literal["auto", "cpu", "nvdec"]
DECODE_MODES: tuple[str, ...] = ("auto", "cpu", "nvdec")
URL_SCHEMES: tuple[str, ...] = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "rtp")
#: frame rate assumed for sources that carry none (image folders, Python iterables)
DEFAULT_FPS = 30.0


class VideoSourceError(RtposeError):
    """A video source cannot be opened or read (missing, corrupt, unreachable, unsupported)."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: `location` is a path, device path or URL; `frames` holds a Python iterable."""

    name: str
    kind: SourceKind
    location: str
    frames: Iterable[np.ndarray] | None = None
    fps: float | None = None

    @property
    def is_live(self) -> bool:
        """Cameras and network streams: they can drop and be reconnected, and have no known length."""
        return self.kind in ("camera", "url")


def _name_for(location: str, kind: SourceKind) -> str:
    if kind == "url":
        trimmed = re.sub(r"^[a-z0-9+.-]+://", "", location, flags=re.IGNORECASE)
        trimmed = re.sub(r"^[^@/]*@", "", trimmed)  # never show credentials in logs and file names
        return re.sub(r"[^A-Za-z0-9._-]+", "_", trimmed).strip("_") or "url"
    if kind == "camera":
        return "cam" + re.sub(r"\D", "", location)
    return Path(location).stem or Path(location).name or "source"


def parse_source(
    source: str | os.PathLike[str] | Iterable[np.ndarray], name: str | None = None, fps: float | None = None
) -> SourceSpec:
    """Classify what the user named. Files and folders must exist; URLs and cameras are checked on open."""
    if not isinstance(source, str | os.PathLike):
        if not isinstance(source, Iterable):
            raise VideoSourceError(
                f"a source must be a path, URL, camera index or iterable of images, not {source!r}"
            )
        return SourceSpec(name or "frames", "frames", "<frames>", frames=source, fps=fps)
    text = os.fspath(source)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme:
        if scheme not in URL_SCHEMES:
            raise VideoSourceError(
                f"{text}: unsupported URL scheme {scheme!r} (known: {', '.join(URL_SCHEMES)})"
            )
        kind: SourceKind = "url"
    elif text.isdigit() or re.fullmatch(r"/dev/video\d+", text):
        kind, text = "camera", text if text.startswith("/dev/") else f"/dev/video{text}"
    elif Path(text).is_dir():
        kind = "folder"
    elif Path(text).is_file():
        kind = "file"
    else:
        raise VideoSourceError(f"{text}: no such file, folder, camera or URL")
    return SourceSpec(name or _name_for(text, kind), kind, text, fps=fps)


# -- decoder choice ---------------------------------------------------------------------------------


def _open_container(location: str, kind: SourceKind, hwaccel: Any, timeout: float | None) -> Any:
    import av

    options: dict[str, Any] = {}
    if kind == "camera":
        options["format"] = "v4l2"
    if kind == "url":
        options["timeout"] = timeout
        if location.lower().startswith(("rtsp://", "rtsps://")):
            options["options"] = {"rtsp_transport": "tcp"}
    return av.open(location, hwaccel=hwaccel, **options)


@dataclass
class OpenedVideo:
    container: Any
    stream: Any
    decoder: Literal["cpu", "nvdec"]
    fps: float
    #: frames the container announces (0 when unknown: live streams, some formats)
    total_frames: int


def open_video(spec: SourceSpec, decode: DecodeMode = "auto", timeout: float | None = 10.0) -> OpenedVideo:
    """Open a file, camera or URL and its first video stream, choosing the decoder as `decode` says."""
    import av
    from av.codec.hwaccel import HWAccel

    if decode not in DECODE_MODES:
        raise VideoSourceError(f"decode must be one of {', '.join(DECODE_MODES)}, not {decode!r}")
    threads = decode_threads()
    container, decoder = None, "cpu"
    if decode == "nvdec":
        try:
            # asked for: no silent fallback to FFmpeg's software decoder
            hwaccel = HWAccel("cuda", allow_software_fallback=False)
            container = _open_container(spec.location, spec.kind, hwaccel, timeout)
            decoder = "nvdec"
        except Exception as exc:  # no GPU, no driver, codec not supported by NVDEC, ...
            reason = f"{type(exc).__name__}: {exc}"
            raise VideoSourceError(
                f"{spec.name}: NVDEC decoding was asked for but failed ({reason})"
            ) from exc
    if container is None:
        try:
            container = _open_container(spec.location, spec.kind, None, timeout)
        except (av.FFmpegError, OSError) as exc:
            raise VideoSourceError(f"{spec.name}: cannot open {spec.location}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoSourceError(f"{spec.name}: {spec.location} has no video stream")
    stream = container.streams.video[0]
    if decoder == "nvdec" and not getattr(stream.codec_context, "is_hwaccel", True):
        decoder = "cpu"  # FFmpeg kept its software decoder for this codec
    if decoder == "cpu":
        stream.thread_type = "AUTO"  # frame + slice threads in FFmpeg's software decoder
        if threads:
            stream.codec_context.thread_count = threads
    fps = float(stream.average_rate or stream.guessed_rate or 0) or spec.fps or DEFAULT_FPS
    total = int(stream.frames or 0)
    if total == 0 and container.duration and not spec.is_live:
        total = round(container.duration / 1_000_000 * fps)
    where = "GPU (NVDEC)" if decoder == "nvdec" else "CPU"
    codec = stream.codec_context
    logger.info(
        "%s: %s, %s %dx%d @ %.2f fps, decoding on %s",
        spec.name, spec.location, codec.name, codec.width, codec.height, fps, where,
    )  # fmt: skip
    return OpenedVideo(container, stream, decoder, fps, total)  # type: ignore[arg-type]


def decode_threads() -> int:
    """Threads per software decoder from RTPOSE_DECODE_THREADS (0 or unset: FFmpeg's own count, about
    one per core for every stream: with many streams on few cores they compete with the model loop)."""
    return environment_count("RTPOSE_DECODE_THREADS", minimum=0) or 0


def iter_decoded(opened: OpenedVideo) -> Iterator[tuple[np.ndarray, float]]:
    """(BGR frame, time in seconds) of every decodable frame; FFmpeg errors propagate as VideoSourceError."""
    import av

    index = 0
    try:
        for frame in opened.container.decode(opened.stream):
            time_s = float(frame.time) if frame.time is not None else index / opened.fps
            yield frame.to_ndarray(format="bgr24"), time_s
            index += 1
    except av.FFmpegError as exc:
        raise VideoSourceError(f"decoding failed after {index} frames: {exc}") from exc


def iter_folder(spec: SourceSpec) -> Iterator[tuple[np.ndarray, float]]:
    """Images of a folder in name order as frames at `spec.fps` (default 30); unreadable ones are skipped."""
    fps = spec.fps or DEFAULT_FPS
    files = sorted(p for p in Path(spec.location).iterdir() if is_image_file(p))
    if not files:
        raise VideoSourceError(f"{spec.name}: folder {spec.location} has no image files")
    for index, path in enumerate(files):
        try:
            image = decode_image(path)
        except RtposeError as exc:
            logger.warning("%s: skipping %s", spec.name, exc)
            continue
        yield image, index / fps


def iter_frames_of(spec: SourceSpec) -> Iterator[tuple[np.ndarray, float]]:
    """Frames of a Python iterable of images, timed at `spec.fps` (default 30)."""
    from rtpose.decode.image import to_bgr8

    fps = spec.fps or DEFAULT_FPS
    assert spec.frames is not None
    for index, image in enumerate(spec.frames):
        yield to_bgr8(np.asarray(image), f"{spec.name} frame {index}"), index / fps
