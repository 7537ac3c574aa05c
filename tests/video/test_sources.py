"""Sources and the stream hub: kinds, decoder choice, back-pressure, drops, faults, add/remove."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fakes import scene_frame
from loopback import ThrottledFileServer

from rtpose.errors import RtposeError
from rtpose.sources.stream_hub import Batch, ReconnectPolicy, StreamEnd, StreamHub
from rtpose.sources.video import VideoSourceError, iter_decoded, open_video, parse_source


def _drain(hub: StreamHub, max_frames: int = 4, slow: float = 0.0) -> tuple[dict[str, list], list[StreamEnd]]:
    frames: dict[str, list] = {}
    ended: list[StreamEnd] = []
    while (batch := hub.next_batch(max_frames, 0.5)) is not None:
        for frame in batch.frames:
            frames.setdefault(frame.stream, []).append(frame)
        ended += batch.ended
        time.sleep(slow)
    return frames, ended


def test_parse_source_kinds_and_errors(scene_dir: Path, tmp_path: Path) -> None:
    assert parse_source(scene_dir / "two_movers.mp4").kind == "file"
    assert parse_source(scene_dir / "two_movers.mp4").name == "two_movers"
    assert parse_source(tmp_path).kind == "folder"
    camera = parse_source("0")
    assert (camera.kind, camera.location, camera.name) == ("camera", "/dev/video0", "cam0")
    url = parse_source("rtsp://user:secret@10.0.0.5:554/live")
    assert url.kind == "url" and url.is_live and "secret" not in url.name
    assert parse_source(iter([]), name="mine").kind == "frames"
    with pytest.raises(VideoSourceError, match="no such file"):
        parse_source(tmp_path / "missing.mp4")
    with pytest.raises(VideoSourceError, match="unsupported URL scheme"):
        parse_source("gopher://x/y")


def test_auto_decode_is_the_cpu_and_says_so(scene_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = parse_source(scene_dir / "one_mover.mp4")
    with caplog.at_level(logging.INFO, logger="rtpose.video"):
        opened = open_video(spec, "auto")
    opened.container.close()
    assert opened.decoder == "cpu"
    assert "decoding on CPU" in caplog.text
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(VideoSourceError, match="NVDEC"):
            open_video(spec, "nvdec")
    assert opened.total_frames == 40 and opened.fps == pytest.approx(25.0)
    with pytest.raises(VideoSourceError, match="decode must be"):
        open_video(spec, "gpu")  # type: ignore[arg-type]


def test_decoder_threads_follow_rtpose_decode_threads(
    scene_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = parse_source(scene_dir / "one_mover.mp4")
    monkeypatch.setenv("RTPOSE_DECODE_THREADS", "2")
    opened = open_video(spec, "cpu")
    assert opened.stream.codec_context.thread_count == 2
    assert len(list(iter_decoded(opened))) == 40
    for bad in ("two", "-1"):
        monkeypatch.setenv("RTPOSE_DECODE_THREADS", bad)
        with pytest.raises(RtposeError, match="RTPOSE_DECODE_THREADS"):
            open_video(spec, "cpu")


def test_file_mode_loses_no_frame_under_a_slow_consumer(scene_dir: Path) -> None:
    hub = StreamHub(queue_size=2)
    hub.add(scene_dir / "one_mover.mp4")
    hub.add(scene_dir / "two_movers.mp4")
    frames, ended = _drain(hub, slow=0.002)
    assert {name: [f.index for f in got] for name, got in frames.items()} == {
        "one_mover": list(range(40)), "two_movers": list(range(60))
    }  # fmt: skip
    assert sorted((e.stream, e.reason, e.frames) for e in ended) == [
        ("one_mover", "finished", 40), ("two_movers", "finished", 60)
    ]  # fmt: skip
    # the pixels are the scene's (lossy codec: close, not equal)
    diff = np.abs(frames["two_movers"][10].image.astype(int) - scene_frame(10).astype(int))
    assert diff.mean() < 3


def test_looped_file_starts_again_with_indices_and_times_going_on(scene_dir: Path) -> None:
    hub = StreamHub(queue_size=4, loop=True)
    name = hub.add(scene_dir / "one_mover.mp4")
    got = []
    while len(got) < 100 and (batch := hub.next_batch(1, 0.5)) is not None:
        got += batch.frames
    hub.remove(name)
    hub.close()
    assert [f.index for f in got] == list(range(100))  # 40-frame file: two and a half passes
    times = [f.time for f in got]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert np.abs(got[45].image.astype(int) - got[5].image.astype(int)).mean() < 1  # the same frame again


def test_realtime_mode_drops_oldest_and_counts(scene_dir: Path) -> None:
    hub = StreamHub(queue_size=2, realtime=True)
    name = hub.add(scene_dir / "two_movers.mp4")
    while hub.stats()[name].decoded < 60 and not hub.stats()[name].finished:
        time.sleep(0.01)  # let the reader run ahead of a consumer that is not reading
    dropped = hub.stats()[name].dropped
    frames, _ = _drain(hub)
    got = [f.index for f in frames[name]]
    assert dropped > 0 and len(got) + dropped == 60
    assert got == sorted(got) and got[-1] == 59  # the newest frames survive


def test_batches_take_one_frame_per_stream_round_robin() -> None:
    hub = StreamHub(queue_size=4)
    for i in range(3):
        hub.add([np.full((8, 8, 3), i, np.uint8)] * 5, name=f"s{i}")
    batches: list[Batch] = []
    while (batch := hub.next_batch(2, 1.0)) is not None:
        batches.append(batch)
        streams = [f.stream for f in batch.frames]
        assert len(streams) == len(set(streams)) <= 2
    counts: dict[str, int] = {}
    for batch in batches:
        for frame in batch.frames:
            counts[frame.stream] = counts.get(frame.stream, 0) + 1
    assert counts == {"s0": 5, "s1": 5, "s2": 5}


def test_corrupt_and_truncated_files_fail_alone(scene_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    hub = StreamHub()
    for name in ("garbage", "truncated", "one_mover"):
        hub.add(scene_dir / f"{name}.mp4")
    with caplog.at_level(logging.WARNING, logger="rtpose.video"):
        frames, ended = _drain(hub)
    by_name = {e.stream: e for e in ended}
    assert by_name["garbage"].reason == "failed" and "cannot open" in (by_name["garbage"].error or "")
    assert by_name["one_mover"].reason == "finished" and len(frames["one_mover"]) == 40
    # half an MP4 (its index at the end is gone) cannot be opened, or decodes short: either way, said so
    assert by_name["truncated"].reason == "failed" and by_name["truncated"].error
    assert "garbage" in caplog.text and "truncated" in caplog.text


def test_folder_of_images_is_a_stream(tmp_path: Path) -> None:
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), scene_frame(i))
    (tmp_path / "004.png").write_bytes(b"broken")
    hub = StreamHub()
    name = hub.add(tmp_path, fps=10)
    frames, ended = _drain(hub)
    assert [f.time for f in frames[name]] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert ended[0].reason == "finished"


def test_remove_and_add_while_running(scene_dir: Path) -> None:
    hub = StreamHub(queue_size=2)
    first = hub.add(scene_dir / "two_movers.mp4")
    seen: dict[str, int] = {}
    ended: list[StreamEnd] = []
    added = None
    while (batch := hub.next_batch(4, 0.5)) is not None:
        for frame in batch.frames:
            seen[frame.stream] = seen.get(frame.stream, 0) + 1
        ended += batch.ended
        if seen.get(first) == 10 and added is None:
            hub.remove(first)
            added = hub.add(scene_dir / "one_mover.mp4")
    assert seen[first] <= 12 and seen[added] == 40
    assert {(e.stream, e.reason) for e in ended} == {(first, "removed"), (added, "finished")}
    with pytest.raises(RtposeError, match="no stream named"):
        hub.remove("nope")


def test_network_source_killed_mid_stream_reconnects_then_gives_up(
    scene_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = StreamHub(reconnect=ReconnectPolicy(attempts=3, first_delay=0.05, max_delay=0.2), open_timeout=2.0)
    with ThrottledFileServer(scene_dir / "stream.ts", chunk=2048, interval=0.01) as server:
        url_stream = hub.add(server.url)
        file_stream = hub.add(scene_dir / "two_movers.mp4")
        counts: dict[str, int] = {}
        ended: list[StreamEnd] = []
        with caplog.at_level(logging.INFO, logger="rtpose.video"):
            while (batch := hub.next_batch(4, 0.5)) is not None:
                for frame in batch.frames:
                    counts[frame.stream] = counts.get(frame.stream, 0) + 1
                ended += batch.ended
                if counts.get(url_stream, 0) >= 30 and not server.killed.is_set():
                    server.kill()
    by_name = {e.stream: e for e in ended}
    assert 30 <= counts[url_stream] < 200
    assert (
        by_name[url_stream].reason == "failed"
        and "gave up after 3 reconnect attempts" in by_name[url_stream].error
    )
    assert [f"reconnect attempt {i} of 3" in caplog.text for i in (1, 2, 3)] == [True] * 3
    assert by_name[file_stream].reason == "finished" and counts[file_stream] == 60  # unaffected


def test_network_hiccup_is_recovered_without_losing_or_repeating_frames(scene_dir: Path) -> None:
    hub = StreamHub(reconnect=ReconnectPolicy(attempts=3, first_delay=0.05), open_timeout=2.0)
    with ThrottledFileServer(
        scene_dir / "stream.ts", chunk=4096, interval=0.001, cut_first_after=30000
    ) as server:
        name = hub.add(server.url)
        frames, ended = _drain(hub)
    times = [f.time for f in frames[name]]
    assert len(times) == 200 and len(set(times)) == 200 and times == sorted(times)
    assert ended[0].reason == "finished" and server.requests >= 2


def test_next_batch_without_partial_batches_takes_nothing_until_every_stream_has_a_frame() -> None:
    release = []

    def slow() -> Iterator[np.ndarray]:
        while not release:
            time.sleep(0.01)
        yield scene_frame(0)

    hub = StreamHub()
    try:
        hub.add([scene_frame(i) for i in range(2)], name="quick", fps=25)
        hub.add(slow(), name="slow", fps=25)
        deadline = time.monotonic() + 5
        while not hub.stats()["quick"].decoded and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hub.next_batch(2, 0.05, partial=False) == Batch()  # only one of two streams ready
        release.append(True)
        batch = hub.next_batch(2, 2.0, partial=False)
        assert batch is not None and sorted(f.stream for f in batch.frames) == ["quick", "slow"]
    finally:
        hub.close()
