"""`rtpose video` through its handler: real models on a real clip next to a broken file; the status line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pytest
from fakes import BlobModel

from rtpose.pipelines.video import Pipeline
from rtpose.pipelines.video_cli import StatusPrinter, main, status_line


@pytest.mark.parametrize("workers", ["1", "2"])  # 2: the streams run in two worker processes
def test_cli_runs_real_models_and_survives_a_broken_source(
    data_dir: Path, models_dir: Path, scene_dir: Path, tmp_path: Path, rtpose_env: dict,
    capsys: pytest.CaptureFixture[str], workers: str,
) -> None:  # fmt: skip
    weights = models_dir / "rtmpose_official_arch" / "rtmpose-t_random_official_format.pth"
    code = main([
        "video", str(data_dir / "video" / "mmpose_demo.mp4"), str(scene_dir / "garbage.mp4"),
        str(tmp_path / "missing.mp4"), "--pose-weights", str(weights), "--out", str(tmp_path / "v"),
        "--jsonl", str(tmp_path / "o.jsonl"), "--det-interval", "2", "--quiet", "--workers", workers,
    ])  # fmt: skip
    assert code == 1  # one stream failed; the healthy one is complete
    err = capsys.readouterr().err
    assert (
        "missing.mp4: no such file" in err
        and "garbage: failed" in err
        and "mmpose_demo: finished after 5" in err
    )
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3, 4] and {r["stream"] for r in records} == {
        "mmpose_demo"
    }
    with av.open(str(tmp_path / "v" / "mmpose_demo.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_status_line_shows_rate_latency_drops_and_progress(scene_dir: Path) -> None:
    with Pipeline(model=BlobModel()) as pipeline:
        name = pipeline.add_source(scene_dir / "two_movers.mp4")
        for result in pipeline:
            if result.frame == 29:
                line = status_line(pipeline, pipeline.stream_stats())
                break
    assert line.startswith(f"{name}:") and " fps " in line and " ms" in line and " 50%" in line
    out = io.StringIO()
    printer = StatusPrinter(out, interval=0.0)
    printer.update("long line here")
    printer.update("short")
    printer.finish()
    assert out.getvalue() == "\rlong line here\rshort         \n"


def test_mps_asked_for_where_it_cannot_run_is_a_clear_error(
    data_dir: Path, tmp_path: Path, rtpose_env: dict, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from rtpose.cli import main as rtpose_main

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control here
    clip = str(data_dir / "video" / "mmpose_demo.mp4")
    args = ["video", clip, clip, "--workers", "2", "--mps", "on", "--pose-weights", "random", "--quiet"]
    code = rtpose_main([*args, "--jsonl", str(tmp_path / "o.jsonl")])
    assert code == 1 and "error: nvidia-cuda-mps-control is not on PATH" in capsys.readouterr().err


def test_worker_count_auto_is_one_process_per_stream_on_a_gpu_and_one_on_the_cpu() -> None:
    from rtpose.errors import RtposeError
    from rtpose.pipelines.video_cli import worker_count

    assert worker_count("auto", "cpu", 8, cores=16) == 1
    assert worker_count("auto", "cuda", 8, cores=16) == 8
    assert worker_count("auto", "cuda:1", 3, cores=16) == 3
    assert worker_count("auto", "cuda", 20, cores=16) == 8  # half the cores, at most 8
    assert worker_count("auto", "cuda", 8, cores=6) == 3
    assert worker_count("auto", "cuda", 1, cores=2) == 1
    assert worker_count("4", "cpu", 1) == 4
    for bad in ("0", "many"):
        with pytest.raises(RtposeError, match="--workers"):
            worker_count(bad, "cuda", 2)
