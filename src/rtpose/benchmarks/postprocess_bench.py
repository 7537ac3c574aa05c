"""Post-processing benchmark: NumPy reference vs torch (CPU or CUDA) on the same inputs, in one run.

(a) top-down heatmap decoding of 64 crops x 17 x 64 x 48 (Gaussian peaks at random sub-pixel spots,
    seeded): DARK and quadratic refinement on the native maps, and the seed's path (bicubic resize to
    the 256x192 input, maximum, quadratic refinement); DARK after resizing (a 45-tap blur of 1088
    256x192 maps) is left out: seconds per call in NumPy, and no more accurate than native DARK;
(b) bottom-up decoding (peaks, PAF scores, matching, grouping) of real 1280x720 street frames, from
    model outputs saved to an .npz by ``python tests/openpose_ir.py`` (so a GPU machine without
    OpenVINO can run it), by every torch decoder: "dynamic" (exact shapes, host syncs), "static" (fixed
    shapes, eager) and, on CUDA, "graph" (the static decode replayed from a CUDA graph) and "compiled"
    (the static decode through torch.compile, replayed from a CUDA graph), each with its speed-up over
    NumPy per frame, its first-call time (capture, compilation) and any fallback to the dynamic path
    (``--max-peaks`` sets the static cap).

Every torch result is checked against the NumPy result before it is timed. GPU times are wall-clock
around a synchronised call (inputs already on the device, as in the pipeline) after warm-up; CUDA-event
times of the same calls are reported beside them.

    python -m rtpose.benchmarks.postprocess_bench --device cuda --npz .gpu/openpose_frames.npz \
        --out runs/postprocess_bench.json [--skip-heatmap] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtpose.errors import RtposeError
from rtpose.postprocess.heatmap import decode_heatmaps
from rtpose.postprocess.paf import DEFAULT_MAX_PEAKS, decode_bottomup


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str, repeats: int, warmup: int) -> dict[str, float]:
    """Median and p90 latency in ms of `fn` (synchronised), plus CUDA-event medians on a GPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, events = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        begin = time.perf_counter()
        fn()
        _sync(device)
        wall.append((time.perf_counter() - begin) * 1e3)
        if device.startswith("cuda"):
            end.record()
            end.synchronize()
            events.append(start.elapsed_time(end))
    out = {"median_ms": float(np.median(wall)), "p90_ms": float(np.percentile(wall, 90)), "repeats": repeats}
    if events:
        out["cuda_event_median_ms"] = float(np.median(events))
    return out


def synthetic_heatmaps(crops: int = 64, keypoints: int = 17, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    rng = np.random.default_rng(0)
    height, width = size
    centres = rng.uniform([3, 3], [width - 3, height - 3], size=(crops, keypoints, 2)).astype(np.float32)
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    dist2 = (gx - centres[..., 0, None, None]) ** 2 + (gy - centres[..., 1, None, None]) ** 2
    maps = np.exp(-dist2 / (2 * 2.0**2)) * rng.uniform(0.3, 1.0, size=(crops, keypoints, 1, 1))
    return (maps + rng.normal(0, 0.01, maps.shape)).astype(np.float32)


def bench_heatmaps(device: str, repeats: int, warmup: int) -> dict[str, Any]:
    maps = synthetic_heatmaps()
    maps_t = torch.from_numpy(maps).to(device)
    results: dict[str, Any] = {"input": list(maps.shape)}
    cases = {
        "native_dark": {"refine": "dark"},
        "native_quadratic": {"refine": "quadratic"},
        "resized_256x192_bicubic_quadratic": {"refine": "quadratic", "resize_to": (256, 192)},
    }
    for name, options in cases.items():
        reference = decode_heatmaps(maps, stride=4, **options)
        with torch.no_grad():
            candidate = decode_heatmaps(maps_t, stride=4, **options)
        diff = float(np.abs(candidate[0].cpu().numpy() - reference[0]).max())
        results[name] = {
            "numpy": time_call(
                lambda o=options: decode_heatmaps(maps, stride=4, **o), "cpu", repeats, warmup
            ),
            "torch": time_call(
                lambda o=options: decode_heatmaps(maps_t, stride=4, **o), device, repeats, warmup
            ),
            "max_abs_keypoint_diff_px": diff,
        }
    return results


def _compare_people(reference: tuple, candidate: tuple) -> dict[str, Any]:
    """Same people as the reference: count, keypoints within 1e-3 px, scores within 1e-4."""
    ref_kp, ref_scores, ref_person, ref_details = reference
    kp, scores, person = (v.cpu().numpy() for v in candidate[:3])
    details = candidate[3]
    out: dict[str, Any] = {
        "people": len(kp),
        "decoder": details.decoder,
        "fallback": details.fallback,
    }
    if kp.shape != ref_kp.shape:
        return {**out, "same_people": False, "max_keypoint_diff_px": None}
    diff = float(np.abs(kp - ref_kp).max()) if len(kp) else 0.0
    same = (
        diff <= 1e-3
        and bool(np.allclose(scores, ref_scores, atol=1e-4))
        and bool(np.allclose(person, ref_person, atol=1e-4))
        and np.array_equal(details.num_keypoints.cpu().numpy(), ref_details.num_keypoints)
        and np.array_equal(details.peak_counts.cpu().numpy(), ref_details.peak_counts)
    )
    return {**out, "same_people": same, "max_keypoint_diff_px": diff}


def count_gpu_kernels(fn: Callable[[], Any], device: str) -> int | None:
    """GPU kernels one call launches, graph replays included (torch profiler); None off CUDA or where the
    profiler cannot tell."""
    if not device.startswith("cuda"):
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for event in prof.events() if event.device_type.name == "CUDA")
    except Exception:  # a profiler problem must not stop the benchmark
        return None


def bottomup_decoders(device: str, compiled: bool = True) -> tuple[str, ...]:
    """torch decoders worth timing on a device: CUDA graphs (eager ops or compiled) only exist on CUDA."""
    if not device.startswith("cuda"):
        return ("dynamic", "static")
    return ("dynamic", "static", "graph", "compiled") if compiled else ("dynamic", "static", "graph")


def bench_bottomup(
    npz: Path,
    device: str,
    repeats: int,
    warmup: int,
    max_peaks: int = DEFAULT_MAX_PEAKS,
    compiled: bool = True,
) -> dict[str, Any]:
    """NumPy reference vs each torch decoder (`bottomup_decoders`) on every saved frame; the first call
    of each decoder (graph capture, compilation) is timed apart."""
    if not npz.is_file():
        raise RtposeError(f"{npz} not found: write it with `python tests/openpose_ir.py --out {npz}`")
    saved = np.load(npz)
    decoders = bottomup_decoders(device, compiled)
    first_call_s: dict[str, float] = {}
    kernels: dict[str, int | None] = {}
    frames = []
    for index, (heatmaps, pafs) in enumerate(zip(saved["heatmaps"], saved["pafs"], strict=True)):
        reference = decode_bottomup(heatmaps, pafs, return_details=True)
        heatmaps_t, pafs_t = torch.from_numpy(heatmaps).to(device), torch.from_numpy(pafs).to(device)
        frame: dict[str, Any] = {
            "frame": int(saved["frames"][index]) if "frames" in saved else index,
            "peaks": int(reference[3].peak_counts.sum()),
            "peak_counts": reference[3].peak_counts.tolist(),
            "people": len(reference[0]),
            "numpy": time_call(lambda h=heatmaps, p=pafs: decode_bottomup(h, p), "cpu", repeats, warmup),
        }
        for decoder in decoders:

            def call(h=heatmaps_t, p=pafs_t, d=decoder) -> tuple:
                return decode_bottomup(h, p, decoder=d, max_peaks=max_peaks, return_details=True)

            if decoder not in first_call_s:
                _sync(device)
                begin = time.perf_counter()
                call()
                _sync(device)
                first_call_s[decoder] = time.perf_counter() - begin
                kernels[decoder] = count_gpu_kernels(call, device)
            check = _compare_people(reference, call())  # checked before it is timed
            frame[decoder] = {**check, **time_call(call, device, repeats, warmup)}
            frame[decoder]["speedup_vs_numpy"] = frame["numpy"]["median_ms"] / frame[decoder]["median_ms"]
        frames.append(frame)
    summary: dict[str, Any] = {
        backend: {
            "median_of_frame_medians_ms": float(np.median([f[backend]["median_ms"] for f in frames])),
            "max_p90_ms": float(np.max([f[backend]["p90_ms"] for f in frames])),
        }
        for backend in ("numpy", *decoders)
    }
    for decoder in decoders:
        speedups = [f[decoder]["speedup_vs_numpy"] for f in frames]
        summary[decoder]["min_speedup_vs_numpy"] = float(np.min(speedups))
        summary[decoder]["median_speedup_vs_numpy"] = float(np.median(speedups))
        summary[decoder]["fallbacks"] = sum(f[decoder]["fallback"] is not None for f in frames)
        summary[decoder]["first_call_s"] = first_call_s[decoder]
        summary[decoder]["gpu_kernels_per_call"] = kernels[decoder]
        summary[decoder]["decoders_used"] = sorted({f[decoder]["decoder"] for f in frames})
    return {
        "input": [list(saved["heatmaps"].shape), list(saved["pafs"].shape)],
        "max_peaks": max_peaks,
        "decoders": list(decoders),
        "all_same_people": all(f[d]["same_people"] for f in frames for d in decoders),
        "summary": summary,
        "frames": frames,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--npz", type=Path, default=Path(".gpu/openpose_frames.npz"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("runs/postprocess_bench.json"))
    parser.add_argument("--skip-bottomup", action="store_true")
    parser.add_argument("--skip-heatmap", action="store_true")
    parser.add_argument("--max-peaks", type=int, default=DEFAULT_MAX_PEAKS, help="static decoders' cap")
    parser.add_argument("--no-compiled", action="store_true", help="skip the torch.compile'd graph decoder")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if not args.skip_heatmap:
        report["heatmap"] = bench_heatmaps(args.device, args.repeats, args.warmup)
    if not args.skip_bottomup:
        report["bottomup"] = bench_bottomup(
            args.npz, args.device, args.repeats, args.warmup, args.max_peaks, not args.no_compiled
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    _print_table(report)
    print(f"wrote {args.out}")
    return report


def _print_table(report: dict[str, Any]) -> None:
    print(f"device {report['device']} ({report['device_name']}), torch {report['torch']}")
    for name, row in report.get("heatmap", {}).items():
        if name == "input":
            continue
        print(
            f"heatmap {name:38s} numpy {row['numpy']['median_ms']:8.2f} ms (p90 {row['numpy']['p90_ms']:.2f})"
            f"  torch {row['torch']['median_ms']:8.2f} ms (p90 {row['torch']['p90_ms']:.2f})"
            f"  max diff {row['max_abs_keypoint_diff_px']:.2e} px"
        )
    if "bottomup" in report:
        bottomup = report["bottomup"]
        for frame in bottomup["frames"]:
            cells = [f"numpy {frame['numpy']['median_ms']:7.2f}"]
            for decoder in bottomup["decoders"]:
                row = frame[decoder]
                flag = "" if row["same_people"] else " DIFFERS"
                flag += f" fallback: {row['fallback']}" if row["fallback"] else ""
                cells.append(f"{decoder} {row['median_ms']:6.2f} (x{row['speedup_vs_numpy']:.1f}{flag})")
            print(
                f"bottom-up frame {frame['frame']:4d}: {frame['peaks']:4d} peaks, {frame['people']:3d} people"
                f"  ms: {'  '.join(cells)}"
            )
        for backend, row in bottomup["summary"].items():
            extra = (
                f"  speedup vs numpy min x{row['min_speedup_vs_numpy']:.1f}"
                f" median x{row['median_speedup_vs_numpy']:.1f}  fallbacks {row['fallbacks']}"
                f"  first call {row['first_call_s']:.2f} s  ran as {row['decoders_used']}"
                f"  GPU kernels {row['gpu_kernels_per_call']}"
                if backend != "numpy"
                else ""
            )
            print(
                f"bottom-up {backend:8s} median {row['median_of_frame_medians_ms']:7.3f} ms"
                f"  max p90 {row['max_p90_ms']:7.3f} ms{extra}"
            )
        print(f"bottom-up: every decoder gives the reference people: {bottomup['all_same_people']}")


if __name__ == "__main__":
    main()
