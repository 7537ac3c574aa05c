"""INT8 engines for the CPU: static post-training quantisation of our ONNX exports.

On the CPU a float32 RTMPose-m already runs its convolutions near the FMA peak of two cores (ONNX Runtime,
batched: ~21 ms per crop, 89% of it in Conv), so batching alone cannot cut the per-person cost much.
8-bit convolutions (AVX-512 VNNI / AVX2 on x86) can: this module turns the float32 ONNX file that
`engines.factory` exports into an INT8 one, the way the TensorRT builder makes INT8 engines:

1. calibration inputs: real images turned into network inputs by the model's own preprocessing
   (letterbox for detectors and bottom-up models, affine crops of whole images and of image tiles for
   top-down pose models: natural image statistics at the crop scale);
2. ONNX Runtime's quantiser (`onnxruntime.quantization.quantize_static`, a well-kept tool, rather than
   our own): per-channel int8 weights, uint8 activations with ranges at the 99.999th percentile of the
   calibration activations, QDQ format (ONNX Runtime fuses it into integer kernels); the first
   convolution and the last `FLOAT_TAIL` convolutions/matmuls (the heads) stay float. Measured on COCO
   val (`precision_check`, 2026-11-22): MinMax ranges cost openpose-lite 7.5 AP and MoveNet 2.0;
   percentile ranges with float heads 0.0-0.2 and 1.4 (MoveNet then equals Google's own INT8 file).
   Where ONNX Runtime cannot build the percentile histograms (an activation of near-zero range, as in
   randomly initialised networks), MinMax ranges are used, and the sidecar says so;
3. the file is written next to the float32 export (`<export>.int8.onnx`) atomically, with a JSON sidecar
   naming the calibration images, and reused from then on.

INT8 changes the numbers: measure the accuracy of every model you quantise (`python -m
rtpose.benchmarks.precision_check --device cpu` compares with float32 on COCO val images).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rtpose.decode.image import decode_image
from rtpose.errors import EngineError
from rtpose.models.spec import ModelSpec
from rtpose.preprocess.affine import boxes_to_affine_matrices, warp_crops_numpy
from rtpose.preprocess.letterbox import letterbox_numpy
from rtpose.preprocess.normalize import normalize_numpy
from rtpose.sources.files import IMAGE_EXTENSIONS

#: images used for calibration at most; each top-down image gives `len(TILES)` crops
MAX_CALIBRATION_IMAGES = 32
#: convolutions / matmuls at the end of the graph that stay float (output heads are the most sensitive)
FLOAT_TAIL = 4
QUANTISED_OPS = ("Conv", "MatMul", "Gemm")
#: crop boxes per image for top-down models, as fractions (x1, y1, x2, y2) of the image
TILES = ((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0), (0.25, 0.1, 0.75, 0.9))
CALIBRATION_ENV = "RTPOSE_CALIB_DIR"


def int8_path(fp32_path: Path) -> Path:
    """Where the INT8 version of an exported float32 ONNX file lives."""
    return fp32_path.with_name(fp32_path.stem + ".int8.onnx")


def calibration_images(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """Calibration image files: `folder`, else $RTPOSE_CALIB_DIR, else the sample COCO train2017 images
    (not the val2017 images that accuracy is measured on)."""
    chosen = folder or os.environ.get(CALIBRATION_ENV)
    if chosen:
        root = Path(chosen)
        files = (
            sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if root.is_dir() else []
        )
        if not files:
            raise EngineError(f"no calibration images in {root}")
        return files[:MAX_CALIBRATION_IMAGES]
    from rtpose.errors import RtposeError
    from rtpose.sources.files import sample_images

    try:
        return sample_images(MAX_CALIBRATION_IMAGES, "INT8 calibration", split="train2017")
    except RtposeError:
        raise EngineError(
            f"INT8 needs calibration images: pass a folder of typical images (rtpose build NAME --device cpu "
            f"--precision int8 --calib DIR) or set {CALIBRATION_ENV}"
        ) from None


def calibration_inputs(spec: ModelSpec, images: Sequence[Path]) -> Iterator[np.ndarray]:
    """(1, 3, H, W) float32 network inputs made from `images` by the model's own preprocessing."""
    height, width = spec.input_size
    for path in images:
        image = decode_image(path)
        if spec.task == "pose-topdown":
            h, w = image.shape[:2]
            boxes = np.array([[x1 * w, y1 * h, x2 * w, y2 * h] for x1, y1, x2, y2 in TILES], np.float64)
            padding = float(spec.extra.get("bbox_padding", 1.25))
            crops = warp_crops_numpy(
                image, boxes_to_affine_matrices(boxes, (height, width), padding), (height, width)
            )
            for crop in crops:
                yield normalize_numpy(crop[None], spec.mean, spec.std, spec.channel_order)
        else:
            canvas, _ = letterbox_numpy(image, (height, width), 114)
            yield normalize_numpy(canvas[None], spec.mean, spec.std, spec.channel_order)


def quantize_onnx(
    fp32_path: Path, spec: ModelSpec, images: Sequence[Path], target: Path | None = None
) -> Path:
    """Write the INT8 version of `fp32_path` (default `int8_path(fp32_path)`), calibrated on `images`."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = target or int8_path(fp32_path)
    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration_inputs(spec, images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".int8-") as tmp:
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            compute = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in QUANTISED_OPS]
            # (a toy graph of a few layers is quantised whole: there is no body to speak of)
            keep_float = compute[:1] + compute[-FLOAT_TAIL:] if len(compute) > 4 * FLOAT_TAIL else []
            method = "percentile 99.999"
            try:
                _quantize(prepared, out, Reader(), CalibrationMethod.Percentile, keep_float)
            except ValueError as exc:  # histograms of activations with a (near) zero range: MinMax copes
                if "bins" not in str(exc):
                    raise
                method = "minmax (percentile histograms failed: a constant activation)"
                _quantize(prepared, out, Reader(), CalibrationMethod.MinMax, keep_float)
        except Exception as exc:  # the quantiser raises many types; say which model and why
            raise EngineError(f"{spec.name}: INT8 quantisation failed: {type(exc).__name__}: {exc}") from exc
        os.replace(out, target)
    sidecar = {
        "source": fp32_path.name, "calibration_images": [p.name for p in images], "tiles": len(TILES),
        "calibration": method, "float_nodes": keep_float,
    }  # fmt: skip
    target.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    return target


def _quantize(source: Path, target: Path, reader: object, method: object, keep_float: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
        nodes_to_exclude=keep_float,
    )  # fmt: skip


def ensure_int8(
    fp32_path: Path, spec: ModelSpec, calibration: str | os.PathLike[str] | None = None, force: bool = False
) -> Path:
    """The INT8 file of an export, quantised now when missing (or when `force`)."""
    target = int8_path(fp32_path)
    if force or not target.is_file():
        quantize_onnx(fp32_path, spec, calibration_images(calibration), target)
    return target
