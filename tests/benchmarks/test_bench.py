"""`rtpose bench`: a tiny real run writes valid JSON/markdown with a row per backend and section; the
staged pipeline finds what `TopDown` finds; options and presets resolve as documented.

Sizes are tiny (RTMPose-t, batches 1-2, two timed runs); no timing is asserted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.benchmarks.bench import Bench, BenchConfig, summarise, write_outputs
from rtpose.benchmarks.bench_models import EngineFactory, load_bench_model, unavailable_reason
from rtpose.benchmarks.bench_pipeline import STAGES, StagedTopDown
from rtpose.benchmarks.cli import add_bench_parser, config_from_args, run_bench
from rtpose.decode.image import decode_image
from rtpose.errors import RtposeError
from rtpose.pipelines.detector import Detector
from rtpose.pipelines.topdown import TopDown

FEW_PEOPLE_IMAGE = "000000117425.jpg"  # 3 annotated people


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


@pytest.fixture(scope="module")
def tiny_report(
    data_dir: Path, coco_val: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    torch.set_num_threads(1)
    config = BenchConfig(
        pose="rtmpose-t", device="cpu", backends=("eager", "ort", "compiled-fp16"), batches=(1, 2),
        det_batches=(1,), pipeline_image=coco_val[1] / FEW_PEOPLE_IMAGE, runs=2, warmup=0, min_runs=1,
        threads=1, data_dir=data_dir, cache_dir=tmp_path_factory.mktemp("cache"),
    )  # fmt: skip
    messages: list[str] = []
    report = Bench(config, log=messages.append).run()
    report["messages"] = messages
    return report


def test_bench_has_a_row_for_every_backend_section_and_batch(tiny_report: dict) -> None:
    rows = tiny_report["rows"]
    keys = {(r["section"], r["backend"], r["batch"]) for r in rows}
    for backend in ("eager", "ort", "compiled-fp16"):
        assert {("pose", backend, 1), ("pose", backend, 2), ("detector", backend, 1)} <= keys
        assert ("pipeline", backend, 1) in keys
    assert len(rows) == 3 * 4
    # fp16 compiled engines do not run on the CPU: skipped with a reason, no numbers
    for row in (r for r in rows if r["backend"] == "compiled-fp16"):
        assert "CPU" in row["skipped"] and row["total_p50_ms"] is None
    for row in (r for r in rows if r["backend"] != "compiled-fp16"):
        assert row["skipped"] is None and row["runs"] == 2
        assert row["total_p50_ms"] > 0 and row["items_per_s"] > 0
    # one progress line per row
    assert len([m for m in tiny_report["messages"] if m.startswith("[bench] ")]) >= len(rows)


def test_pipeline_rows_time_every_stage_and_count_people(tiny_report: dict) -> None:
    pipeline = [r for r in tiny_report["rows"] if r["section"] == "pipeline" and not r["skipped"]]
    assert {r["backend"] for r in pipeline} == {"eager", "ort"}
    for row in pipeline:
        assert set(row["stages"]) == set(STAGES)
        total = sum(stage["p50"] for stage in row["stages"].values())
        assert row["total_p50_ms"] <= total * 1.0001 + 1e-6  # the p50 of sums is at most the sum of p50s
        assert row["persons"] >= 1
    # same weights, same image: both backends find the same number of people
    assert len({r["persons"] for r in pipeline}) == 1


def test_weights_are_labelled(tiny_report: dict) -> None:
    models = tiny_report["models"]
    assert models["rtmpose-t"]["weights"].startswith("random init")
    assert models["rtmdet-nano"]["weights"].startswith("real")
    pose_rows = [r for r in tiny_report["rows"] if r["section"] == "pose"]
    assert all(r["weights"].startswith("random init") for r in pose_rows)


def test_outputs_are_valid_json_and_markdown(tiny_report: dict, tmp_path: Path) -> None:
    written = write_outputs(dict(tiny_report), tmp_path)
    assert {p.name for p in written} >= {"bench.json", "bench.md"}
    loaded = json.loads((tmp_path / "bench.json").read_text())
    assert loaded["rows"] == tiny_report["rows"]
    markdown = (tmp_path / "bench.md").read_text()
    for title in ("Pose model alone", "Detector alone", "Whole top-down pipeline"):
        assert title in markdown
    table_lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert sum(line.startswith(("| eager", "| ort", "| compiled")) for line in table_lines) == 12
    header = next(line for line in table_lines if "decode" in line)
    pipeline_rows = [line for line in table_lines if line.count("|") == header.count("|")]
    assert len(pipeline_rows) >= 4  # header + 3 backends: every row has as many cells as the header
    if loaded["plot"].startswith("skipped"):
        assert "matplotlib" in loaded["plot"]
    else:
        assert (tmp_path / "bench.png").stat().st_size > 0


def test_staged_pipeline_finds_what_topdown_finds(
    data_dir: Path, coco_val: tuple[Path, Path], tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    pose = load_bench_model("rtmpose-t", "pose-topdown", data_dir=data_dir)
    det = load_bench_model("rtmdet-nano", "detector", data_dir=data_dir)
    factory = EngineFactory(device="cpu", workdir=tmp_path, threads=1)
    for backend in ("ort", "eager"):
        pose_engine, det_engine = factory.get(pose, backend), factory.get(det, backend)
        encoded = (coco_val[1] / FEW_PEOPLE_IMAGE).read_bytes()
        staged, timings = StagedTopDown(det_engine, det.spec, pose_engine, pose.spec)(encoded)
        reference = TopDown.from_engines(pose_engine, pose.spec, Detector.from_engine(det_engine, det.spec))(
            decode_image(encoded)
        )
        assert set(timings) == set(STAGES) and all(v > 0 for v in timings.values())
        assert len(staged) == len(reference) >= 1
        for ours, theirs in zip(staged, reference, strict=True):
            np.testing.assert_allclose(ours.bbox, theirs.bbox, atol=1e-4)
            np.testing.assert_allclose(ours.keypoints, theirs.keypoints, atol=1e-3)
            np.testing.assert_allclose(ours.keypoint_scores, theirs.keypoint_scores, atol=1e-5)


def test_summarise_percentiles_and_throughput() -> None:
    samples = [{"pre": 1.0, "infer": float(v)} for v in (10, 20, 30, 40, 1000)]
    summary = summarise(samples, items=10)
    assert summary["stages"]["infer"]["p50"] == 30.0
    assert 40.0 < summary["stages"]["infer"]["p99"] <= 1000.0
    assert summary["total_p50_ms"] == 31.0
    assert summary["ms_per_item"] == pytest.approx(3.1)
    assert summary["items_per_s"] == pytest.approx(10 / 0.031, rel=1e-3)


def test_presets_fill_only_what_is_not_given() -> None:
    config = config_from_args(_parse(["--preset", "cpu"]))
    assert config.device == "cpu" and config.backends == ("eager", "ort")
    assert config.batches == (1, 10) and config.threads == 2
    config = config_from_args(_parse(["--preset", "cpu", "--batches", "1,4", "--threads", "1"]))
    assert config.batches == (1, 4) and config.threads == 1
    config = config_from_args(_parse(["--device", "cpu"]))
    assert config.backends == ("eager", "ort") and config.batches == (1, 8, 64, 256)


@pytest.mark.parametrize(
    "argv",
    [
        ["--backends", "eager,tensorrt"],
        ["--batches", "1,x"],
        ["--batches", "0"],
        ["--sections", "pose,video"],
    ],
)
def test_bad_options_are_clear_errors(argv: list[str]) -> None:
    with pytest.raises(RtposeError):
        config_from_args(_parse(["--device", "cpu", *argv]))


def test_run_bench_writes_files_and_reports_errors(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RTPOSE_DATA", str(data_dir))
    monkeypatch.setenv("RTPOSE_CACHE", str(tmp_path / "cache"))
    argv = ["--device", "cpu", "--sections", "detector", "--backends", "ort", "--runs", "2", "--warmup", "0",
            "--threads", "1", "--out", str(tmp_path / "out")]  # fmt: skip
    assert run_bench(_parse(argv)) == 0
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["rows"][0]["backend"] == "ort"
    assert "Detector alone" in capsys.readouterr().out
    missing = ["--device", "cpu", "--sections", "pipeline", "--pipeline-image", str(tmp_path / "nope.jpg")]
    assert run_bench(_parse(missing)) == 1
    assert "does not exist" in capsys.readouterr().err


def test_unavailable_backends_say_why() -> None:
    assert unavailable_reason("eager", "cpu") is None
    assert unavailable_reason("ort", "cpu") is None
    assert "CPU" in (unavailable_reason("compiled-fp16", "cpu") or "")
    if not torch.cuda.is_available():
        assert "CUDA" in (unavailable_reason("eager", "cuda") or "")


@pytest.mark.gpu
def test_staged_pipeline_on_cuda_matches_the_cpu_reference(
    data_dir: Path, coco_val: tuple[Path, Path], tmp_path: Path
) -> None:
    """Torch processing + eager engines on the GPU against NumPy processing + eager on the CPU."""
    pose = load_bench_model("rtmpose-t", "pose-topdown", data_dir=data_dir)
    det = load_bench_model("rtmdet-nano", "detector", data_dir=data_dir)
    encoded = (coco_val[1] / FEW_PEOPLE_IMAGE).read_bytes()
    results = {}
    for device in ("cpu", "cuda"):
        factory = EngineFactory(device=device, workdir=tmp_path / device)
        results[device], _ = StagedTopDown(
            factory.get(det, "eager"), det.spec, factory.get(pose, "eager"), pose.spec
        )(encoded)
    assert len(results["cpu"]) == len(results["cuda"]) >= 1
    for cpu, gpu in zip(results["cpu"], results["cuda"], strict=True):
        np.testing.assert_allclose(gpu.bbox, cpu.bbox, atol=0.5)
        close = np.linalg.norm(gpu.keypoints - cpu.keypoints, axis=-1) < 2.0
        assert close.mean() >= 0.95


@pytest.mark.gpu
@pytest.mark.slow  # builds two compiled fp16 engines (minutes of autotuning)
def test_bench_on_cuda_runs_every_backend(
    data_dir: Path, coco_val: tuple[Path, Path], tmp_path: Path
) -> None:
    config = BenchConfig(
        pose="rtmpose-t", device="cuda", backends=("eager", "ort", "compiled-fp16"), batches=(1, 4),
        det_batches=(1,), pipeline_image=coco_val[1] / FEW_PEOPLE_IMAGE, runs=3, warmup=1, min_runs=1,
        data_dir=data_dir, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    report = Bench(config, log=lambda _: None).run()
    rows = report["rows"]
    assert all(r["skipped"] is None for r in rows), [r["skipped"] for r in rows if r["skipped"]]
    assert {r["device"] for r in rows if r["backend"] == "ort"} == {"cpu"}
    assert {r["device"] for r in rows if r["backend"] != "ort"} == {"cuda"}
    persons = {r["persons"] for r in rows if r["section"] == "pipeline"}
    assert len(persons) == 1  # fp16 finds the same people as fp32 on this image


def test_topdown_section_times_the_public_pipeline(
    data_dir: Path, coco_val: tuple[Path, Path], tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    config = BenchConfig(
        pose="rtmpose-t", device="cpu", backends=("ort",), batches=(1,), det_batches=(1,),
        sections=("pipeline", "topdown"), pipeline_image=coco_val[1] / FEW_PEOPLE_IMAGE, runs=2, warmup=0,
        min_runs=1, threads=1, data_dir=data_dir, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    report = Bench(config, log=lambda _: None).run()
    staged, public = ([r for r in report["rows"] if r["section"] == s] for s in ("pipeline", "topdown"))
    assert len(public) == 1 and public[0]["skipped"] is None and public[0]["runs"] == 2
    assert set(public[0]["stages"]) == set(STAGES) and public[0]["total_p50_ms"] > 0
    # the same engines, image and thresholds: both pipelines find the same people
    assert public[0]["persons"] == staged[0]["persons"] >= 1
    out = write_outputs(report, tmp_path / "out")
    assert "TopDown.predict_batch" in (tmp_path / "out" / "bench.md").read_text() and out


def test_pipeline_rows_get_their_own_non_spinning_onnx_sessions(data_dir: Path, tmp_path: Path) -> None:
    """As `TopDown` makes them: a pipeline's two sessions take turns, so their threads do not spin; the
    engine rows keep ONNX Runtime's spinning. Non-ORT engines are shared (no second compile)."""
    det = load_bench_model("rtmdet-nano", "detector", data_dir=data_dir)
    factory = EngineFactory(device="cpu", workdir=tmp_path, threads=1)

    def spins(engine) -> str:  # type: ignore[no-untyped-def]
        options = engine.session.get_session_options()
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    alone, shared = factory.get(det, "ort"), factory.get(det, "ort", shared=True)
    assert alone is not shared and spins(alone) == "1" and spins(shared) == "0"
    assert factory.get(det, "ort", shared=True) is shared
    assert factory.get(det, "eager", shared=True) is factory.get(det, "eager")
