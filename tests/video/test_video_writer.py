"""MP4 writer: decoded back with PyAV, frame count, size and content match what was written."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from fakes import scene_frame

from rtpose.errors import RtposeError
from rtpose.sinks.video_writer import Mp4Writer, StreamVideoWriters, choose_video_codec


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def test_written_video_decodes_back_with_the_same_frames(tmp_path: Path) -> None:
    frames = [scene_frame(i) for i in range(25)]
    with Mp4Writer(tmp_path / "out.mp4", fps=25) as writer:
        for frame in frames:
            writer.write(frame)
    decoded = _decode(tmp_path / "out.mp4")
    assert len(decoded) == 25 and decoded[0].shape == (120, 160, 3)
    errors = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(decoded, frames, strict=True)]
    assert max(errors) < 3  # lossy, but the same pictures
    assert choose_video_codec() in ("libx264", "mpeg4")


def test_odd_sizes_are_padded_and_mpeg4_works(tmp_path: Path) -> None:
    frame = np.random.default_rng(0).integers(0, 255, (31, 45, 3), dtype=np.uint8)
    with Mp4Writer(tmp_path / "odd.mp4", fps=10, codec="mpeg4") as writer:
        for _ in range(3):
            writer.write(frame)
    decoded = _decode(tmp_path / "odd.mp4")
    assert len(decoded) == 3 and decoded[0].shape == (32, 46, 3)


def test_bad_frames_and_places_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RtposeError, match="does not exist"):
        Mp4Writer(tmp_path / "nope" / "x.mp4")
    writer = Mp4Writer(tmp_path / "x.mp4")
    with pytest.raises(RtposeError, match="uint8"):
        writer.write(np.zeros((10, 10), np.float32))
    writer.write(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(RtposeError, match="size changed"):
        writer.write(np.zeros((12, 10, 3), np.uint8))
    writer.close()
    writer.close()  # twice is fine


def test_stream_writers_make_one_file_per_stream(tmp_path: Path) -> None:
    writers = StreamVideoWriters(tmp_path / "videos")
    for i in range(4):
        writers.write("a", scene_frame(i), 25)
        writers.write("b", scene_frame(i), 25)
    writers.close_stream("a")
    writers.close()
    assert (
        len(_decode(tmp_path / "videos" / "a.mp4")) == 4 and len(_decode(tmp_path / "videos" / "b.mp4")) == 4
    )
