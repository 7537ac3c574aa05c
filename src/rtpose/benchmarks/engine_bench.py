"""Engine benchmark: eager PyTorch against compiled engines, side by side in one run.

    python -m rtpose.benchmarks.engine_bench [--models rtmpose-m rtmdet-nano] [--device cuda]
        [--precisions fp32 fp16 bf16] [--batches 1 8 64 256] [--runs 100] [--ort] [--out runs/bench]

For each model (initialised weights: trained weights do not change speed) and batch size it times
PyTorch eager fp32 and the compiled engine in each precision (CUDA events on the GPU, perf_counter on
the CPU; warm-up, then the median and p99 of N runs), and derives throughput (images/s), achieved
TFLOP/s (FLOPs counted with `torch.utils.flop_counter`; one multiply-add = 2 FLOPs) and the speed-up of
compiled fp16 over eager fp32 at batch 1. ONNX Runtime (CPU) joins with `--ort`. An accuracy check
compares the outputs of every precision with eager fp32 on one input, and for SimCC models the decoded
keypoints (argmax) in pixels of the network input. Writes `engine_bench.json`, `engine_bench.md` and,
where matplotlib is importable, `engine_bench.png`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtpose.benchmarks.bench_report import throughput_panel
from rtpose.engines.compiled import AUTOTUNE_CUDA, CompiledEngine, ensure_engine, weights_digest
from rtpose.models.spec import ModelSpec, get_spec

#: H100 SXM dense peak (TFLOP/s, no sparsity) per precision
H100_PEAK_TFLOPS = {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}


def count_flops(module: torch.nn.Module, spec: ModelSpec, device: torch.device) -> int:
    """FLOPs of one forward at batch 1 (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, *spec.input_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())


def time_call(
    fn: Callable[[torch.Tensor], Any], x: Any, *, device: torch.device, warmup: int, runs: int
) -> list[float]:
    """Per-call latency in milliseconds: CUDA events around each call on the GPU, wall clock on the CPU."""
    for _ in range(warmup):
        fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in pairs]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summarise(times_ms: Sequence[float], batch: int, flops_per_image: int) -> dict[str, float]:
    median = float(np.median(times_ms))
    return {
        "median_ms": round(median, 4),
        "p99_ms": round(float(np.percentile(times_ms, 99)), 4),
        "images_per_s": round(batch / (median / 1e3), 1),
        "tflops": round(flops_per_image * batch / (median / 1e3) / 1e12, 3),
    }


def _as_numpy(array: Any) -> np.ndarray:
    if torch.is_tensor(array):
        return array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def simcc_keypoints(outputs: dict[str, Any], split_ratio: float) -> np.ndarray:
    """(N, K, 2) argmax locations in pixels of the network input."""
    x, y = _as_numpy(outputs["simcc_x"]), _as_numpy(outputs["simcc_y"])
    return np.stack([x.argmax(-1), y.argmax(-1)], axis=-1).astype(np.float32) / split_ratio


def accuracy_row(
    spec: ModelSpec, reference: dict[str, torch.Tensor], outputs: dict[str, Any], label: str
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": spec.name, "backend": label}
    for name, want in reference.items():
        got = torch.from_numpy(_as_numpy(outputs[name]))
        row[f"max_abs_diff_{name}"] = float((got - want.float().cpu()).abs().max())
        row[f"max_abs_{name}"] = float(want.abs().max())
    if spec.extra.get("codec") == "simcc":
        split = float(spec.extra.get("simcc_split_ratio", 2.0))
        distance = np.linalg.norm(
            simcc_keypoints(outputs, split) - simcc_keypoints(reference, split), axis=-1
        )
        row["keypoint_px_max"] = float(distance.max())
        row["keypoint_px_mean"] = float(distance.mean())
        row["keypoints_moved_over_1px"] = float((distance > 1.0).mean())
    return row


def _ort_engine(module: torch.nn.Module, spec: ModelSpec, workdir: Path) -> Any:
    from rtpose.engines.onnx_export import export_onnx
    from rtpose.engines.ort import OrtEngine

    path = export_onnx(module.cpu(), spec, workdir / f"{spec.name}.onnx")
    return OrtEngine(path)


def _initialised(spec: ModelSpec, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The network with seeded random weights, and a weights id naming exactly those weights."""
    torch.manual_seed(0)
    module = spec.build().eval().to(device)
    for param in module.parameters():
        param.requires_grad_(False)
    return module, "init-seed0-" + weights_digest(module)[:16]


def build_engines(args: argparse.Namespace, spec: ModelSpec, device: torch.device) -> None:
    module, weights_id = _initialised(spec, device)
    for precision in args.precisions:
        build = ensure_engine(
            module, spec, weights_id=weights_id, device=device, precision=precision,
            max_batch=max(args.batches), cache_dir=args.cache_dir, progress=True,
            inductor_options=AUTOTUNE_CUDA if args.autotune else None,
        )  # fmt: skip
        state = "built" if build.built else "cached"
        print(f"{spec.name} {precision}: {state} {build.path} {build.stage_seconds}", flush=True)


def bench_model(args: argparse.Namespace, spec: ModelSpec, device: torch.device) -> dict[str, Any]:
    module, weights_id = _initialised(spec, device)
    flops = count_flops(module, spec, device)
    batches = sorted(args.batches)
    rows: list[dict[str, Any]] = []
    builds: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []

    def record(backend: str, precision: str, batch: int, times: list[float]) -> None:
        row = {"model": spec.name, "backend": backend, "precision": precision, "batch": batch}
        row.update(summarise(times, batch, flops))
        if device.type == "cuda":
            row["peak_fraction"] = round(row["tflops"] / H100_PEAK_TFLOPS[precision], 5)
        rows.append(row)
        print(
            f"{spec.name:14s} {backend:9s} {precision:5s} b={batch:<4d} median {row['median_ms']:9.3f} ms  "
            f"p99 {row['p99_ms']:9.3f} ms  {row['images_per_s']:10.1f} img/s  {row['tflops']:7.2f} TFLOP/s",
            flush=True,
        )

    probe = torch.randn(min(8, batches[-1]), 3, *spec.input_size, device=device)
    with torch.inference_mode():
        raw = module(probe)
    from rtpose.engines.onnx_export import output_names_for

    names = tuple(raw) if isinstance(raw, dict) else output_names_for(spec)
    raw_items = (
        list(raw.values()) if isinstance(raw, dict) else ([raw] if torch.is_tensor(raw) else list(raw))
    )
    reference = {n: t.float().cpu() for n, t in zip(names, raw_items, strict=True)}

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def eager(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return module(x)

    for batch in batches:
        x = torch.randn(batch, 3, *spec.input_size, device=device)
        record("eager", "fp32", batch, time_call(eager, x, device=device, warmup=args.warmup, runs=args.runs))

    options = AUTOTUNE_CUDA if args.autotune else None
    for precision in args.precisions:
        started = time.perf_counter()
        build = ensure_engine(
            module,
            spec,
            weights_id=weights_id,
            device=device,
            precision=precision,
            max_batch=batches[-1],
            cache_dir=args.cache_dir,
            progress=True,
            inductor_options=options,
        )
        load_started = time.perf_counter()
        engine = _load_path(build.path)
        builds.append(
            {
                "model": spec.name,
                "precision": precision,
                "built_now": build.built,
                "build_s": round(load_started - started, 2),
                "load_and_capture_s": round(time.perf_counter() - load_started, 2),
                "stage_seconds": build.stage_seconds,
                "engine": str(build.path),
                "bytes": build.path.stat().st_size,
            }
        )
        for batch in batches:
            x = torch.randn(batch, 3, *spec.input_size, device=device)
            record(
                "compiled",
                precision,
                batch,
                time_call(engine, x, device=device, warmup=args.warmup, runs=args.runs),
            )
        accuracy.append(accuracy_row(spec, reference, engine(probe), f"compiled-{precision}"))
        del engine

    if args.static_vs_dynamic:
        precision = args.precisions[-1] if device.type == "cpu" else "fp16"
        for batch in batches:
            build = ensure_engine(
                module,
                spec,
                weights_id=weights_id,
                device=device,
                precision=precision,
                max_batch=batch,
                buckets=(batch,),
                dynamic_batch=False,
                cache_dir=args.cache_dir,
                progress=True,
                inductor_options=options,
            )
            engine = _load_path(build.path)
            x = torch.randn(batch, 3, *spec.input_size, device=device)
            record(
                "static",
                precision,
                batch,
                time_call(engine, x, device=device, warmup=args.warmup, runs=args.runs),
            )
            builds.append(
                {
                    "model": spec.name,
                    "precision": precision,
                    "static_batch": batch,
                    "built_now": build.built,
                    "stage_seconds": build.stage_seconds,
                }
            )
            del engine

    if args.ort:
        with tempfile.TemporaryDirectory() as tmp:
            ort = _ort_engine(module, spec, Path(tmp))
            module.to(device)
            for batch in [b for b in batches if b <= args.ort_max_batch]:
                x_np = np.random.default_rng(0).normal(size=(batch, 3, *spec.input_size)).astype(np.float32)
                record(
                    "ort-cpu",
                    "fp32",
                    batch,
                    time_call(ort, x_np, device=torch.device("cpu"), warmup=2, runs=max(5, args.runs // 10)),
                )
            accuracy.append(accuracy_row(spec, reference, ort(probe.cpu().numpy()), "ort-cpu-fp32"))

    speedup = None
    fp16 = [
        r
        for r in rows
        if r["backend"] == "compiled" and r["precision"] == "fp16" and r["batch"] == batches[0]
    ]
    base = [r for r in rows if r["backend"] == "eager" and r["batch"] == batches[0]]
    if fp16 and base:
        speedup = round(base[0]["median_ms"] / fp16[0]["median_ms"], 2)
    return {
        "model": spec.name,
        "input_size": list(spec.input_size),
        "gflops_per_image": flops / 1e9,
        "gmacs_per_image": flops / 2e9,
        "rows": rows,
        "builds": builds,
        "accuracy": accuracy,
        f"speedup_compiled_fp16_vs_eager_fp32_batch{batches[0]}": speedup,
    }


def _load_path(path: Path) -> CompiledEngine:
    return CompiledEngine(path, progress=True)


def _build_summary(build: dict[str, Any]) -> str:
    static = f"/static b={build['static_batch']}" if "static_batch" in build else ""
    state = "built" if build["built_now"] else "cached"
    return f"{build['precision']}{static}: {state} {build['stage_seconds']}"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Engine benchmark — {report['environment']['device']}", ""]
    for model in report["models"]:
        lines += [
            f"## {model['model']} {model['input_size'][0]}x{model['input_size'][1]} "
            f"({model['gmacs_per_image']:.3f} GMACs per image)",
            "",
            "| backend | precision | batch | median ms | p99 ms | images/s | TFLOP/s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in model["rows"]:
            lines.append(
                f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['median_ms']:.3f} | "
                f"{r['p99_ms']:.3f} | {r['images_per_s']:.0f} | {r['tflops']:.2f} |"
            )
        speedups = {k: v for k, v in model.items() if k.startswith("speedup")}
        for key, value in speedups.items():
            lines += ["", f"{key}: {value}"]
        if model["accuracy"]:
            keys = sorted({k for row in model["accuracy"] for k in row} - {"model", "backend"})
            lines += ["", "| backend | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
            for row in model["accuracy"]:
                lines.append(
                    f"| {row['backend']} | "
                    + " | ".join(f"{row.get(k, float('nan')):.4g}" for k in keys)
                    + " |"
                )
        if model["builds"]:
            lines += ["", "builds: " + "; ".join(_build_summary(b) for b in model["builds"])]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in model["rows"]:
            series.setdefault(f"{r['backend']} {r['precision']}", []).append((r["batch"], r["images_per_s"]))
        throughput_panel(ax, series, model["model"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_type": device.type,
    }
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
        env["matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
    else:
        env["device"] = f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"
    return env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["rtmpose-m", "rtmdet-nano"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precisions", nargs="+", default=None, help="default: fp32 fp16 bf16 (cuda), fp32 (cpu)"
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64, 256])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--ort", action="store_true", help="also time ONNX Runtime on the CPU")
    parser.add_argument("--ort-max-batch", type=int, default=8, help="largest batch timed with ONNX Runtime")
    parser.add_argument(
        "--autotune",
        action="store_true",
        help="Inductor max_autotune over Triton conv/GEMM templates (minutes per model)",
    )
    parser.add_argument(
        "--static-vs-dynamic", action="store_true", help="also build one static engine per batch"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="only build (or find) the engines, e.g. to fill the cache"
    )
    parser.add_argument("--cache-dir", default=None, help="engine cache (default $RTPOSE_CACHE)")
    parser.add_argument("--out", type=Path, default=Path("runs/engine_bench"))
    args = parser.parse_args(argv)
    if args.precisions is None:
        args.precisions = ["fp32", "fp16", "bf16"] if args.device.startswith("cuda") else ["fp32"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    report = {
        "environment": environment(device),
        "args": {k: str(v) for k, v in vars(args).items()},
        "models": [],
    }
    for name in args.models:
        if args.build_only:
            build_engines(args, get_spec(name), device)
            continue
        report["models"].append(bench_model(args, get_spec(name), device))
    if args.build_only:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "engine_bench.md").write_text(markdown(report))
    plotted = plot(report, args.out / "engine_bench.png")
    print(markdown(report))
    print(f"wrote {args.out}/engine_bench.json, .md{', .png' if plotted else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
