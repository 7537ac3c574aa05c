"""Real heatmaps and PAFs from the original runtime: OpenVINO running human-pose-estimation-0001.

Tests and scripts only (src never imports openvino). As a script it writes model outputs of a few
frames of the street video to a git-ignored .npz that the post-processing benchmark loads on machines
without OpenVINO:

    python tests/openpose_ir.py [--frames 0 40 80 120 160] [--out .gpu/openpose_frames.npz]
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

IR_RELATIVE = Path("models/human-pose-estimation-0001_FP16-INT8/human-pose-estimation-0001.xml")
VIDEO_RELATIVE = Path("video/openpose_video.avi")
NET_HEIGHT, NET_WIDTH, STRIDE, PAD_VALUE = 256, 456, 8, 128


@lru_cache(maxsize=2)
def _compiled(xml: str):  # openvino's CompiledModel; its type stays out of the signature
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(xml), "CPU", {"INFERENCE_NUM_THREADS": 1})


def letterbox_right(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Resize to the net height keeping the ratio, pad right/bottom to 256x456 with 128 (the demo)."""
    scale = NET_HEIGHT / image.shape[0]
    width = min(round(image.shape[1] * scale), NET_WIDTH)
    resized = cv2.resize(image, (width, NET_HEIGHT), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((NET_HEIGHT, NET_WIDTH, 3), PAD_VALUE, np.uint8)
    canvas[:, :width] = resized
    return canvas, scale


def run_ir(data_dir: Path, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(heatmaps (19, 32, 57), pafs (38, 32, 57), scale image->network) for one BGR image."""
    compiled = _compiled(str(data_dir / IR_RELATIVE))
    canvas, scale = letterbox_right(image_bgr)
    batch = canvas.transpose(2, 0, 1)[None].astype(np.float32)
    outputs = {k.get_any_name(): v for k, v in compiled([batch]).items()}
    return outputs["Mconv7_stage2_L2"][0], outputs["Mconv7_stage2_L1"][0], scale


def read_frames(data_dir: Path, indices: list[int]) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(data_dir / VIDEO_RELATIVE))
    frames, wanted, index = [], set(indices), 0
    while len(frames) < len(wanted):
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            frames.append(frame)
        index += 1
    capture.release()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 40, 80, 120, 160])
    parser.add_argument("--out", type=Path, default=Path(".gpu/openpose_frames.npz"))
    args = parser.parse_args()
    heatmaps, pafs, scales = [], [], []
    for frame in read_frames(args.data, args.frames):
        h, p, s = run_ir(args.data, frame)
        heatmaps.append(h)
        pafs.append(p)
        scales.append(s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out, heatmaps=np.stack(heatmaps), pafs=np.stack(pafs), scales=np.array(scales, np.float32),
        frames=np.array(args.frames[: len(heatmaps)]), stride=STRIDE,
    )  # fmt: skip
    print(f"wrote {args.out}: {len(heatmaps)} frames")


if __name__ == "__main__":
    main()
