"""SimCC decoding (RTMPose): one 1-D classification per keypoint and axis -> (x, y) and a score.

Follows MMPose's `get_simcc_maximum` + `SimCCLabel.decode` (normalize=False, no DARK): the location is
the argmax bin on each axis divided by the split ratio (bins per input pixel), the score is the smaller
of the two raw maximum logits, min(max_x, max_y).

One deliberate difference: MMPose overwrites the location of every keypoint whose score is <= 0 with
-1. We keep the argmax location and report the (low) score as it is, because a -1 location turns into
an arbitrary point of the image once mapped back through the crop, while the honest score already
tells every consumer (drawing, rescoring, thresholds) to ignore that keypoint. COCO AP is unaffected
in practice (trained models put score <= 0 only on invisible keypoints). `mmpose_invalid=True`
reproduces MMPose exactly, for parity checks.

NumPy in -> NumPy out; torch in -> torch out on the same device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtpose.errors import RtposeError
from rtpose.preprocess.affine import is_torch

Array = Any  # np.ndarray or torch.Tensor


def get_simcc_maximum(simcc_x: Array, simcc_y: Array, *, mmpose_invalid: bool = False) -> tuple[Array, Array]:
    """(N, K, Wx) and (N, K, Wy) logits -> bin locations (N, K, 2) float32 and scores (N, K) float32."""
    if simcc_x.ndim != 3 or simcc_y.ndim != 3 or tuple(simcc_x.shape[:2]) != tuple(simcc_y.shape[:2]):
        raise RtposeError(
            f"SimCC outputs must be (N, K, bins) with the same N and K; got {tuple(simcc_x.shape)} "
            f"and {tuple(simcc_y.shape)}"
        )
    if is_torch(simcc_x):
        import torch

        max_x, x_locs = simcc_x.float().max(dim=-1)
        max_y, y_locs = simcc_y.float().max(dim=-1)
        locations = torch.stack([x_locs, y_locs], dim=-1).to(torch.float32)
        scores = torch.minimum(max_x, max_y)
        if mmpose_invalid:
            locations = torch.where((scores <= 0).unsqueeze(-1), torch.full_like(locations, -1.0), locations)
        return locations, scores

    simcc_x = np.asarray(simcc_x, dtype=np.float32)
    simcc_y = np.asarray(simcc_y, dtype=np.float32)
    locations = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    if mmpose_invalid:
        locations[scores <= 0] = -1.0
    return locations, scores


def decode_simcc(
    simcc_x: Array, simcc_y: Array, split_ratio: float = 2.0, *, mmpose_invalid: bool = False
) -> tuple[Array, Array]:
    """Keypoints in network-input pixels (N, K, 2) and scores (N, K)."""
    locations, scores = get_simcc_maximum(simcc_x, simcc_y, mmpose_invalid=mmpose_invalid)
    return locations / split_ratio, scores


def decode(outputs: dict[str, Array], spec: Any) -> tuple[Array, Array]:
    """Codec entry point (`extra["codec"] == "simcc"`): outputs `simcc_x`, `simcc_y`.

    spec.extra: `simcc_split_ratio` (default 2.0). The bin counts must equal input size x split ratio.
    """
    missing = [name for name in ("simcc_x", "simcc_y") if name not in outputs]
    if missing:
        raise RtposeError(
            f"SimCC decoding needs outputs simcc_x and simcc_y; missing {missing} in {sorted(outputs)}"
        )
    ratio = float(spec.extra.get("simcc_split_ratio", 2.0))
    height, width = spec.input_size
    simcc_x, simcc_y = outputs["simcc_x"], outputs["simcc_y"]
    expected = (round(width * ratio), round(height * ratio))
    if (simcc_x.shape[-1], simcc_y.shape[-1]) != expected:
        raise RtposeError(
            f"{spec.name}: SimCC outputs have {simcc_x.shape[-1]} x-bins and {simcc_y.shape[-1]} y-bins; "
            f"input {width}x{height} with split ratio {ratio} needs {expected[0]} and {expected[1]}"
        )
    return decode_simcc(simcc_x, simcc_y, ratio)
