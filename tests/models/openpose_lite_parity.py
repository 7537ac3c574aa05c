"""Parity of our openpose-lite against the OpenVINO runtime on real COCO images.

Imported by test_openpose_lite.py (a handful of images) and run as a script for the numbers on all 60:

    /work/venv/bin/python tests/models/openpose_lite_parity.py [--data DIR] [--images N]

Both sides see the same image: resized to height 256 keeping the ratio (bilinear), padded on the
right with BGR 128 (the mean: the Open Model Zoo and lightweight-OpenPose demos pad with it) or
cropped to width 456. OpenVINO gets the raw 0-255 BGR batch (its graph normalises); ours gets the
batch normalised with the spec's mean/std, as our preprocessing would produce it.

OpenVINO runs in three ways (OPENVINO_MODES): its default INT8 CPU path, FakeQuantize executed in f32
(the semantics our INT8 emulation follows), and the float graph (the oracle of our float mode).
Peaks: per keypoint channel, the argmax after bicubic x8 upsampling, compared where OpenVINO's peak
exceeds 0.1; "within 1 px" at network-input resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from rtpose.models.loading.openvino_ir import load_openvino_ir
from rtpose.models.openpose_lite import OPENPOSE_LITE, OpenPoseLite, build_openpose_lite

IR_RELATIVE = "models/human-pose-estimation-0001_FP16-INT8/human-pose-estimation-0001.xml"
PAF_OUTPUT, HEATMAP_OUTPUT = "Mconv7_stage2_L1", "Mconv7_stage2_L2"


def fit_height(image: np.ndarray, height: int, width: int, pad_value: int = 128) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3): scaled to `height` keeping the ratio, padded/cropped right."""
    scale = height / image.shape[0]
    new_width = max(1, round(image.shape[1] * scale))
    resized = cv2.resize(image, (new_width, height), interpolation=cv2.INTER_LINEAR)[:, :width]
    out = np.full((height, width, 3), pad_value, np.uint8)
    out[:, : resized.shape[1]] = resized
    return out


def raw_batch(images: list[np.ndarray]) -> np.ndarray:
    return np.stack([im.transpose(2, 0, 1) for im in images]).astype(np.float32)


def normalise(raw: np.ndarray) -> torch.Tensor:
    mean = np.asarray(OPENPOSE_LITE.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(OPENPOSE_LITE.std, np.float32).reshape(1, 3, 1, 1)
    return torch.from_numpy((raw - mean) / std)


#: How OpenVINO runs the IR (CPU, f32 inference precision in every mode):
#: "int8": its default, low-precision transformations on: real u8/i8 convolutions (VNNI) with the
#:     FakeQuantize nodes folded into requantisation. The runtime users get.
#: "fq-f32": low-precision transformations off (internal property LP_TRANSFORMS_MODE=NO): f32
#:     convolutions with every FakeQuantize executed as defined. The oracle of our INT8 emulation.
#: "float": the activation FakeQuantize nodes cut out of the graph (weights still dequantised):
#:     the oracle of our float mode.
OPENVINO_MODES = ("int8", "fq-f32", "float")


class OpenVinoRunner:
    """The oracle: the IR compiled by OpenVINO for CPU at f32 inference precision, one per input size."""

    def __init__(self, xml_path: Path, threads: int = 2, mode: str = "int8") -> None:
        import openvino as ov

        if mode not in OPENVINO_MODES:
            raise ValueError(f"mode must be one of {OPENVINO_MODES}")
        self.core = ov.Core()
        self.xml_path = xml_path
        self.threads = threads
        self.mode = mode
        self._compiled: dict[tuple[int, int], object] = {}

    def compiled(self, height: int, width: int):
        if (height, width) not in self._compiled:
            model = self.core.read_model(self.xml_path)
            if self.mode == "float":
                for op in model.get_ordered_ops():
                    if op.get_type_name() != "FakeQuantize":
                        continue
                    if op.input_value(0).get_node().get_type_name() not in ("Convert", "Constant"):
                        op.output(0).replace(op.input_value(0))
            model.reshape({"data": [1, 3, height, width]})
            config: dict[str, object] = {
                "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": self.threads,
            }
            if self.mode == "fq-f32":
                config["LP_TRANSFORMS_MODE"] = "NO"
            self._compiled[(height, width)] = self.core.compile_model(model, "CPU", config)
        return self._compiled[(height, width)]

    def __call__(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, 3, H, W) raw BGR -> (heatmaps, pafs) as float32."""
        compiled = self.compiled(raw.shape[2], raw.shape[3])
        out = compiled({"data": raw})  # type: ignore[operator]
        by_name = {port.get_any_name(): value for port, value in out.items()}
        return np.asarray(by_name[HEATMAP_OUTPUT], np.float32), np.asarray(by_name[PAF_OUTPUT], np.float32)

    def runtime_precisions(self, height: int, width: int) -> dict[str, int]:
        """How OpenVINO runs the convolutions: {'Convolution u8 -> u8 (brgconv_avx512_I8)': count, ...}."""
        counts: dict[str, int] = {}
        for op in self.compiled(height, width).get_runtime_model().get_ordered_ops():  # type: ignore[attr-defined]
            info = op.get_rt_info()
            if info["layerType"].astype(str) != "Convolution":
                continue
            precision, output = info["runtimePrecision"].astype(str), info["outputPrecisions"].astype(str)
            key = f"Convolution {precision} -> {output} ({info['primitiveType'].astype(str)})"
            counts[key] = counts.get(key, 0) + 1
        return counts


def load_ours(xml_path: Path, emulate_int8: bool) -> OpenPoseLite:
    model = build_openpose_lite().eval()
    load_openvino_ir(model, xml_path, emulate_int8=emulate_int8)
    return model


def upsampled_argmax(heatmaps: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) -> per channel (x, y) of the maximum after bicubic x`stride` upsampling, and that peak."""
    up = cv2.resize(heatmaps.transpose(1, 2, 0), None, fx=stride, fy=stride, interpolation=cv2.INTER_CUBIC)
    flat = up.reshape(-1, up.shape[2])
    index = flat.argmax(axis=0)
    ys, xs = np.divmod(index, up.shape[1])
    return np.stack([xs, ys], axis=1).astype(np.float32), flat[index, np.arange(flat.shape[1])]


@dataclass
class ParityStats:
    heatmap_max: float = 0.0
    heatmap_sum: float = 0.0
    paf_max: float = 0.0
    paf_sum: float = 0.0
    elements_heatmap: int = 0
    elements_paf: int = 0
    peaks_compared: int = 0
    peaks_within_1px: int = 0

    def add(
        self, ours: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray], stride: int
    ) -> None:
        heat_diff, paf_diff = np.abs(ours[0] - theirs[0]), np.abs(ours[1] - theirs[1])
        self.heatmap_max = max(self.heatmap_max, float(heat_diff.max()))
        self.paf_max = max(self.paf_max, float(paf_diff.max()))
        self.heatmap_sum += float(heat_diff.sum(dtype=np.float64))
        self.paf_sum += float(paf_diff.sum(dtype=np.float64))
        self.elements_heatmap += heat_diff.size
        self.elements_paf += paf_diff.size
        for ours_maps, their_maps in zip(ours[0], theirs[0], strict=True):
            keypoints = slice(
                0, OPENPOSE_LITE.extra["num_keypoints"]
            )  # the background channel is no keypoint
            ours_xy, _ = upsampled_argmax(ours_maps[keypoints], stride)
            their_xy, their_peak = upsampled_argmax(their_maps[keypoints], stride)
            confident = their_peak > 0.1
            distance = np.linalg.norm(ours_xy - their_xy, axis=1)
            self.peaks_compared += int(confident.sum())
            self.peaks_within_1px += int((distance[confident] <= 1.0).sum())

    @property
    def heatmap_mean(self) -> float:
        return self.heatmap_sum / max(self.elements_heatmap, 1)

    @property
    def paf_mean(self) -> float:
        return self.paf_sum / max(self.elements_paf, 1)

    @property
    def peak_agreement(self) -> float:
        return self.peaks_within_1px / max(self.peaks_compared, 1)

    def summary(self) -> dict[str, float | int]:
        return {
            "heatmap_max_abs": self.heatmap_max, "heatmap_mean_abs": self.heatmap_mean,
            "paf_max_abs": self.paf_max, "paf_mean_abs": self.paf_mean,
            "peaks_compared": self.peaks_compared, "peaks_within_1px": self.peaks_within_1px,
            "peak_agreement": self.peak_agreement,
        }  # fmt: skip


def ours_outputs(model: OpenPoseLite, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        heatmaps, pafs = model(normalise(raw))
    return heatmaps.numpy(), pafs.numpy()


def compare(
    models: dict[str, OpenPoseLite],
    runners: dict[str, OpenVinoRunner],
    images: list[np.ndarray],
    size: tuple[int, int],
) -> dict[str, ParityStats]:
    """Every pair (ours mode vs OpenVINO mode, and OpenVINO int8 vs fq-f32) on the images at `size`."""
    stats: dict[str, ParityStats] = {}
    stride = OPENPOSE_LITE.extra["stride"]
    for image in images:
        raw = raw_batch([fit_height(image, *size, OPENPOSE_LITE.extra["pad_value"])])
        theirs = {name: runner(raw) for name, runner in runners.items()}
        for ours_name, model in models.items():
            ours = ours_outputs(model, raw)
            for their_name, outputs in theirs.items():
                stats.setdefault(f"ours {ours_name} vs OpenVINO {their_name}", ParityStats()).add(
                    ours, outputs, stride
                )
        if "int8" in theirs and "fq-f32" in theirs:
            stats.setdefault("OpenVINO fq-f32 vs OpenVINO int8", ParityStats()).add(
                theirs["fq-f32"], theirs["int8"], stride
            )
    return stats


def coco_images(data_dir: Path, count: int | None = None) -> list[np.ndarray]:
    annotations = json.loads((data_dir / "coco/annotations/person_keypoints_val2017_subset.json").read_text())
    files = sorted(im["file_name"] for im in annotations["images"])[:count]
    return [cv2.imread(str(data_dir / "coco/val2017" / name), cv2.IMREAD_COLOR) for name in files]


def time_forward(fn, repeats: int) -> float:
    """Median wall time of `fn()` in milliseconds, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--images", type=int, default=None, help="first N images (default: all)")
    parser.add_argument("--other-images", type=int, default=20, help="first N images at the other size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--other-size", default="368x640", help="a second input size HxW to compare at")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    xml_path = args.data / IR_RELATIVE
    images = coco_images(args.data, args.images)
    runners = {mode: OpenVinoRunner(xml_path, args.threads, mode) for mode in OPENVINO_MODES}
    models = {"float": load_ours(xml_path, False), "int8-emulation": load_ours(xml_path, True)}
    size = OPENPOSE_LITE.input_size
    other = tuple(int(v) for v in args.other_size.split("x"))
    print(
        f"{len(images)} COCO val images; OpenVINO int8 runs",
        runners["int8"].runtime_precisions(*size),
        flush=True,
    )
    for label, at, subset in ((size, size, images), (other, other, images[: args.other_images])):
        for name, stats in compare(models, runners, subset, at).items():  # type: ignore[arg-type]
            summary = {k: round(v, 6) if isinstance(v, float) else v for k, v in stats.summary().items()}
            print(f"{label[0]}x{label[1]} ({len(subset)} images) {name}: {json.dumps(summary)}", flush=True)
    raw = raw_batch([fit_height(images[0], *size)])
    x = normalise(raw)
    for name, model in models.items():
        with torch.no_grad():
            ms = time_forward(lambda m=model: m(x), 20)
        print(f"PyTorch CPU ({args.threads} threads) {name} 1x3x{size[0]}x{size[1]}: {ms:.1f} ms", flush=True)
    for mode, runner in runners.items():
        ms = time_forward(lambda r=runner: r(raw), 20)
        print(f"OpenVINO CPU {mode} ({args.threads} threads): {ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
