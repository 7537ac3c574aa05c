"""`rtpose bench`: every backend side by side in one run, per stage and per batch size.

Three sections, each measured for every requested backend (PyTorch eager fp32, compiled fp32/fp16/bf16,
ONNX Runtime on the CPU):

(a) "pose": the pose model alone at each batch size: inference latency, images/s, ms per person;
(b) "detector": the detector alone on letterboxed batches;
(c) "pipeline": the whole top-down pipeline on one image (by default a 1280x720 street frame with about
    ten people): decode, pre, infer and post latency per image (`bench_pipeline.StagedTopDown`);
(d) "topdown": the same image through the public `TopDown.predict_batch` hot path, timed by its own
    stage timer (not in the default sections).

Latencies are wall-clock milliseconds of synchronised calls (inputs already where the backend wants
them for (a) and (b); the encoded image in memory for (c)), p50 and p99 over the measured runs after
warm-up. A row stops early once it has spent `max_seconds` (at least `min_runs` runs), so slow CPU rows
do not take hours; the run count is in every row. A backend that cannot run on this device, or fails
to build, becomes a row with the reason instead of numbers.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from rtpose.benchmarks.bench_models import (
    BenchModel,
    EngineFactory,
    engine_device,
    load_bench_model,
    parse_backend,
    unavailable_reason,
)
from rtpose.benchmarks.bench_pipeline import STAGES, StagedTopDown
from rtpose.errors import RtposeError

DEFAULT_FRAME_INDEX = 20  # 10 people with rtmdet-nano (frame 0 has 12)


@dataclass
class BenchConfig:
    pose: str = "rtmpose-m"
    det: str = "rtmdet-nano"
    device: str = "cpu"
    backends: tuple[str, ...] = ("eager", "ort")
    batches: tuple[int, ...] = (1, 8, 64, 256)
    det_batches: tuple[int, ...] = (1,)
    #: an image file for (c); None: frame `frame_index` of the street video in the data dir
    pipeline_image: Path | None = None
    frame_index: int = DEFAULT_FRAME_INDEX
    sections: tuple[str, ...] = ("pose", "detector", "pipeline")
    runs: int = 50
    warmup: int = 5
    min_runs: int = 3
    max_seconds: float = 20.0
    #: torch intra-op threads and ONNX Runtime intra-op threads; None leaves the libraries' defaults
    threads: int | None = None
    #: largest batch timed with ONNX Runtime (CPU): bigger batches only repeat the per-image cost
    ort_max_batch: int = 256
    data_dir: Path | None = None
    cache_dir: Path | None = None
    out: Path = Path("runs/bench")
    preset: str | None = None


@dataclass
class Row:
    """One measurement (or one skipped backend) of one section."""

    section: str
    model: str
    backend: str
    precision: str
    device: str
    batch: int
    weights: str
    runs: int = 0
    #: stage -> {"p50": ms, "p99": ms}
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    total_p50_ms: float | None = None
    total_p99_ms: float | None = None
    items_per_s: float | None = None
    ms_per_item: float | None = None
    #: persons in the pipeline image (section "pipeline")
    persons: int | None = None
    skipped: str | None = None


def _log(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream or sys.stderr, flush=True)


#: a whole pipeline under test: encoded image -> (people, ms per stage)
PipelineRun = Callable[[bytes], tuple[list, dict[str, float]]]


def _sync_for(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def measure(
    call: Callable[[], dict[str, float]], config: BenchConfig, sync: Callable[[], None]
) -> list[dict[str, float]]:
    """Per-run stage times (ms): `call` returns its own stage times; warm-up runs are discarded."""
    for _ in range(config.warmup):
        call()
    sync()
    samples: list[dict[str, float]] = []
    started = time.perf_counter()
    while len(samples) < config.runs:
        samples.append(call())
        spent = time.perf_counter() - started
        if len(samples) >= config.min_runs and spent > config.max_seconds:
            break
    return samples


def summarise(samples: list[dict[str, float]], items: int) -> dict[str, Any]:
    """p50/p99 per stage and of the per-run total; throughput and ms per item from the total p50."""
    stages = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        stages[name] = {
            "p50": round(float(np.median(values)), 4),
            "p99": round(float(np.percentile(values, 99)), 4),
        }
    totals = [sum(s.values()) for s in samples]
    p50 = float(np.median(totals))
    return {
        "runs": len(samples),
        "stages": stages,
        "total_p50_ms": round(p50, 4),
        "total_p99_ms": round(float(np.percentile(totals, 99)), 4),
        "items_per_s": round(items / (p50 / 1e3), 2) if p50 > 0 else None,
        "ms_per_item": round(p50 / items, 4) if items else None,
    }


def _timed_infer(engine: Any, batch: Any, sync: Callable[[], None]) -> Callable[[], dict[str, float]]:
    def call() -> dict[str, float]:
        start = time.perf_counter()
        engine(batch)
        sync()
        return {"infer": (time.perf_counter() - start) * 1e3}

    return call


def _engine_input(model: BenchModel, batch: int, backend: str, device: str) -> Any:
    """A seeded normal batch, where the backend takes it: NumPy for ONNX Runtime, a device tensor else."""
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, *model.spec.input_size, generator=generator)
    if parse_backend(backend)[0] == "ort":
        return x.numpy()
    return x.to(device)


class Bench:
    """One `rtpose bench` run: models, engines and rows."""

    def __init__(self, config: BenchConfig, log: Callable[[str], None] = _log) -> None:
        self.config = config
        self.log = log
        self.rows: list[Row] = []
        self.models: dict[str, BenchModel] = {}
        #: (encoded pipeline image, its label), made once for the pipeline and topdown sections
        self._pipeline_input: tuple[bytes, str] | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="rtpose-bench-")
        self.engines = EngineFactory(
            device=config.device,
            workdir=Path(self._workdir.name),
            threads=config.threads,
            max_batch=max([*config.batches, *config.det_batches, 1]),
            cache_dir=config.cache_dir,
        )
        self._sync = _sync_for(config.device)

    # -- sections -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        config = self.config
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if config.device.startswith("cuda") and torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
        started = time.perf_counter()
        try:
            if "pose" in config.sections:
                self._model_section("pose", self._model(config.pose, "pose-topdown"), config.batches)
            if "detector" in config.sections:
                self._model_section("detector", self._model(config.det, "detector"), config.det_batches)
            if "pipeline" in config.sections:
                self._pipeline_section()
            if "topdown" in config.sections:
                self._topdown_section()
        finally:
            self._workdir.cleanup()
        return self.report(time.perf_counter() - started)

    def _model(self, name: str, task: str) -> BenchModel:
        if name not in self.models:
            model = load_bench_model(name, task, data_dir=self.config.data_dir)  # type: ignore[arg-type]
            self.log(f"[bench] {name}: {model.weights_label}")
            self.models[name] = model
        return self.models[name]

    def _skip(self, section: str, model: BenchModel, backend: str, batch: int, reason: str) -> None:
        precision = parse_backend(backend)[1]
        device = engine_device(backend, self.config.device)
        self.rows.append(Row(section, model.spec.name, backend, precision, device, batch, model.weights_label,
                             skipped=reason))  # fmt: skip
        self.log(f"[bench] {section:8s} {model.spec.name} {backend:13s} b={batch:<4d} skipped: {reason}")

    def _engine_or_reason(
        self, model: BenchModel, backend: str, shared: bool = False
    ) -> tuple[Any, str | None]:
        reason = unavailable_reason(backend, self.config.device)
        if reason is not None:
            return None, reason
        try:
            return self.engines.get(model, backend, shared=shared), None
        except RtposeError as exc:
            return None, f"engine failed: {str(exc).splitlines()[0]}"

    def _record(
        self, section: str, model: BenchModel, backend: str, batch: int, samples: list, **extra: Any
    ) -> Row:
        precision = parse_backend(backend)[1]
        device = engine_device(backend, self.config.device)
        row = Row(section, model.spec.name, backend, precision, device, batch, model.weights_label,
                  **summarise(samples, batch), **extra)  # fmt: skip
        self.rows.append(row)
        stages = "  ".join(f"{k} {v['p50']:.2f}/{v['p99']:.2f}" for k, v in row.stages.items())
        self.log(
            f"[bench] {section:8s} {model.spec.name} {backend:13s} b={batch:<4d} n={row.runs:<3d} "
            f"{stages} ms  total p50 {row.total_p50_ms:.2f} ms  {row.items_per_s} /s  "
            f"{row.ms_per_item} ms/item"
        )
        return row

    def _model_section(self, section: str, model: BenchModel, batches: Sequence[int]) -> None:
        config = self.config
        for backend in config.backends:
            engine, reason = self._engine_or_reason(model, backend)
            for batch in batches:
                if reason is not None:
                    self._skip(section, model, backend, batch, reason)
                    continue
                if parse_backend(backend)[0] == "ort" and batch > config.ort_max_batch:
                    self._skip(section, model, backend, batch, f"ONNX Runtime timed up to batch "
                               f"{config.ort_max_batch} (--ort-max-batch)")  # fmt: skip
                    continue
                device = engine_device(backend, config.device)
                sync = _sync_for(device)
                x = _engine_input(model, batch, backend, device)
                try:
                    samples = measure(_timed_infer(engine, x, sync), config, sync)
                except (RtposeError, RuntimeError) as exc:
                    self._skip(section, model, backend, batch, f"run failed: {str(exc).splitlines()[0]}")
                    continue
                self._record(section, model, backend, batch, samples)

    def _pipeline_section(self) -> None:
        def staged(pose: BenchModel, det: BenchModel, pose_engine: Any, det_engine: Any) -> PipelineRun:
            max_batch = max(self.config.batches)
            return StagedTopDown(det_engine, det.spec, pose_engine, pose.spec, max_batch=max_batch)

        self._whole_pipeline_section("pipeline", staged)

    def _topdown_section(self) -> None:
        """The public pipeline, `TopDown.predict_batch`, the hot path users get (unlike the staged one).

        Rows: "topdown" on the encoded image (GPU decode where available) with its own stage timer
        (`profile=True`, a sync per stage); "topdown-wall", the same without the stage timer on an image
        already decoded where the pipeline runs (wall time per call, no decode: the latency a video
        caller sees); on CUDA also "topdown-eager", the stage-timed run without CUDA-graph stages."""
        from rtpose.pipelines.detector import Detector
        from rtpose.pipelines.topdown import TopDown

        def public(graphs: bool | None, profile: bool) -> Callable[..., PipelineRun]:
            def make(pose: BenchModel, det: BenchModel, pose_engine: Any, det_engine: Any) -> PipelineRun:
                topdown = TopDown.from_engines(
                    pose_engine, pose.spec, Detector.from_engine(det_engine, det.spec, graphs=graphs),
                    max_batch=max(self.config.batches), profile=profile, graphs=graphs,
                )  # fmt: skip
                if profile:

                    def run(encoded: bytes) -> tuple[list, dict[str, float]]:
                        people = topdown.predict_batch([encoded])[0]
                        return people, {stage: topdown.last_timings.get(stage, 0.0) for stage in STAGES}

                    return run
                loaded: dict[bytes, Any] = {}

                def run_wall(encoded: bytes) -> tuple[list, dict[str, float]]:
                    if encoded not in loaded:
                        loaded[encoded] = topdown.load_image(encoded)
                    started = time.perf_counter()
                    people = topdown.predict_batch([loaded[encoded]])[0]  # ends with a device-to-host copy
                    return people, {"pre+infer+post": (time.perf_counter() - started) * 1e3}

                return run_wall

            return make

        self._whole_pipeline_section("topdown", public(None, profile=True))
        self._whole_pipeline_section("topdown-wall", public(None, profile=False))
        if self.config.device.startswith("cuda"):
            compiled = [b for b in self.config.backends if parse_backend(b)[0] == "compiled"]
            self._whole_pipeline_section("topdown-eager", public(False, profile=True), compiled)

    def _whole_pipeline_section(
        self,
        section: str,
        make_run: Callable[[BenchModel, BenchModel, Any, Any], PipelineRun],
        backends: Sequence[str] | None = None,
    ) -> None:
        """One row per backend (default: all configured): `make_run(pose, det, pose engine, det engine)`
        gives a callable mapping the encoded pipeline image to (people, stage ms)."""
        config = self.config
        if self._pipeline_input is None:
            self._pipeline_input = pipeline_image_bytes(config)
        encoded = self._pipeline_input[0]
        pose, det = self._model(config.pose, "pose-topdown"), self._model(config.det, "detector")
        for backend in config.backends if backends is None else backends:
            pose_engine, reason = self._engine_or_reason(pose, backend, shared=True)
            det_engine, det_reason = self._engine_or_reason(det, backend, shared=True)
            reason = reason or det_reason
            if reason is not None:
                self._skip(section, pose, backend, 1, reason)
                continue
            run = make_run(pose, det, pose_engine, det_engine)
            people, _ = run(encoded)

            def call(run: PipelineRun = run) -> dict[str, float]:
                return run(encoded)[1]

            samples = measure(call, config, lambda: None)
            self._record(section, pose, backend, 1, samples, persons=len(people))

    # -- report ---------------------------------------------------------------------------------------
    def report(self, seconds: float) -> dict[str, Any]:
        config = self.config
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "environment": environment(config),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "models": {
                name: {"task": m.spec.task, "input_size": list(m.spec.input_size), "weights": m.weights_label}
                for name, m in self.models.items()
            },
            "pipeline_image": self._pipeline_input[1] if self._pipeline_input else None,
            "stages": list(STAGES),
            "rows": [asdict(r) for r in self.rows],
            "seconds": round(seconds, 1),
        }


def pipeline_image_bytes(config: BenchConfig) -> tuple[bytes, str]:
    """The encoded image of section (c) and a label saying what it is."""
    import cv2

    from rtpose.benchmarks.bench_models import default_data_dir

    if config.pipeline_image is not None:
        path = Path(config.pipeline_image)
        if not path.is_file():
            raise RtposeError(f"--pipeline-image {path} does not exist")
        return path.read_bytes(), str(path)
    video = (config.data_dir or default_data_dir()) / "video" / "openpose_video.avi"
    if not video.is_file():
        raise RtposeError(
            f"default pipeline image: {video} not found; set RTPOSE_DATA or pass --pipeline-image"
        )
    capture = cv2.VideoCapture(str(video))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, config.frame_index)
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok:
        raise RtposeError(f"cannot read frame {config.frame_index} of {video}")
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RtposeError("JPEG encoding of the pipeline frame failed")
    return (
        jpeg.tobytes(),
        f"{video.name} frame {config.frame_index} ({frame.shape[1]}x{frame.shape[0]}, JPEG q95)",
    )


def environment(config: BenchConfig) -> dict[str, Any]:
    import onnxruntime

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ort_threads": config.threads,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    if config.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    """bench.json, bench.md and (when matplotlib is importable) bench.png; returns what was written."""
    from rtpose.benchmarks.bench_report import markdown, plot

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "bench.json", out / "bench.md"]
    png = out / "bench.png"
    plotted = plot(report, png)
    report["plot"] = str(png) if plotted else "skipped: matplotlib is not installed (it is not a dependency)"
    written[0].write_text(json.dumps(report, indent=2))
    written[1].write_text(markdown(report))
    if plotted:
        written.append(png)
    return written
