"""Bottom-up decoding: keypoint heatmaps + part affinity fields (PAFs) -> people (OpenPose style).

Stages, each with a NumPy reference and a torch version (CPU or CUDA, no Python loop over candidates):

1. Peaks. The 18 OpenPose keypoint heatmaps are upsampled (default x4, bicubic: the original demo's
   choice; at stride 8 a 3x3 local maximum on the raw 32x57 grid merges joints closer than ~16 input
   pixels and quantises to 8 px, while x4 bicubic keeps peaks sharp on a 2 px grid at the cost of one
   small batched matmul). A peak is a 3x3 local maximum above ``peak_thr`` (NMS; one pixel per
   plateau), refined to sub-pixel by a 1D quadratic fit per axis (``refine``, on by default: on our 60 COCO
   val images openpose-lite scores 34.3 AP with it against 30.9 on the 2 px grid, and its peaks no longer
   jump a whole grid step when reduced precision nudges two neighbours). Peaks are ordered per keypoint
   type in row-major order in both backends.
2. Limb scores. For every candidate pair of every limb, ``num_samples`` points along the segment are
   sampled bilinearly from the PAF at its native resolution (the same as sampling a bilinearly upsampled
   PAF, without materialising 38 upsampled maps) and dotted with the segment's unit vector. OpenPose's
   criteria: more than ``min_success`` of the samples above ``paf_thr``, and mean + distance prior
   ``min(0.5 * input_height / length - 1, 0)`` > 0; that value is the connection score.
3. Matching. Per limb, greedy one-to-one matching in descending score (ties: lower candidate index
   first). The torch version takes, repeatedly and for all limbs at once, every pair that is the best of
   both its row and its column; under a strict total order that is exactly the greedy matching.
4. Grouping. The reference follows OpenPose: limbs in the OpenPose-18 order (breadth first from the neck),
   each connection extends the person record holding one of its ends or starts a new one; the two
   redundant ear-shoulder limbs only merge two records that hold no keypoint type twice. The torch
   version gets the same people as connected components: a label pass per tree limb (a loop over limb
   types, vectorised over connections; in this order it equals the sequential merge), then one vectorised
   conflict-free label merge per redundant limb.
5. People: records of at least ``min_keypoints`` OpenPose keypoints whose OpenPose score (peak scores +
   connection scores) per keypoint is at least ``min_mean_score``; mapped to COCO-17 order (the neck is
   dropped) in network-input pixels.

Torch decoders (``decoder=``): "dynamic" is the one described above (exact shapes, a few host syncs);
"static", "graph" and "compiled" (`paf_gpu`) run the same stages with shapes fixed by the heatmap size
and a cap on peaks per type, so that a CUDA graph replays the whole decode in one launch. A frame beyond
a static bound is decoded again by the dynamic path (``BottomUpDetails.fallback``): all give the
reference's people. On CUDA the default is "graph"; on the CPU "dynamic".

Coordinates: upsampled heatmap pixel ``i`` is heatmap coordinate ``(i + 0.5) / upsample - 0.5``; heatmap
cell ``j`` is input pixel ``j * stride + (stride / 2 - 0.5)`` (the centre of the cell, as lightweight
OpenPose places its training Gaussians), so input pixel = ``(i + 0.5) * stride / upsample - 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from rtpose.errors import RtposeError
from rtpose.keypoint_layouts import COCO_FROM_OPENPOSE as COCO_FROM_OPENPOSE
from rtpose.keypoint_layouts import OPENPOSE_KEYPOINT_NAMES as OPENPOSE_KEYPOINT_NAMES
from rtpose.keypoint_layouts import OPENPOSE_LIMBS as OPENPOSE_LIMBS
from rtpose.keypoint_layouts import OPENPOSE_PAF_CHANNELS as OPENPOSE_PAF_CHANNELS
from rtpose.postprocess.heatmap import ResizeMode, is_torch, resize_heatmaps

Array = Any  # np.ndarray or torch.Tensor

NUM_OPENPOSE_KEYPOINTS = 18
#: OPENPOSE_LIMBS[:NUM_TREE_LIMBS] form a tree rooted at the neck; the rest are redundant
NUM_TREE_LIMBS = 17


def _tree_depth() -> int:
    depth = {1: 0}
    for a, b in OPENPOSE_LIMBS[:NUM_TREE_LIMBS]:
        depth[b] = depth[a] + 1
    return max(depth.values())


#: longest parent chain of the tree limbs (neck -> shoulder -> elbow -> wrist: 3)
TREE_DEPTH = _tree_depth()

ScoreMode = Literal["mean", "openpose"]
#: torch decoders: "dynamic" exact shapes (host syncs); "static" fixed shapes (`paf_gpu`); "graph" the static
#: decode captured in a CUDA graph; "compiled" the static decode through torch.compile, captured in a CUDA
#: graph (the first frame of a shape compiles); on the CPU "graph" and "compiled" run the static decode
#: eagerly. "auto": compiled on CUDA, dynamic on CPU (where fixed shapes only add work).
Decoder = Literal["auto", "dynamic", "static", "graph", "compiled"]
DECODERS: tuple[str, ...] = ("auto", "dynamic", "static", "graph", "compiled")
#: default cap on peaks per keypoint type for the static decoders (the street video needs at most 12)
DEFAULT_MAX_PEAKS = 32


@dataclass(frozen=True)
class BottomUpConfig:
    """Decoding settings; defaults follow lightweight OpenPose (thresholds) and OpenPose (criteria)."""

    stride: int = 8
    upsample: int = 4
    interpolation: ResizeMode = "bicubic"
    peak_thr: float = 0.1
    refine: bool = True
    paf_thr: float = 0.05
    num_samples: int = 10
    min_success: float = 0.8
    min_keypoints: int = 3
    min_mean_score: float = 0.2
    score_mode: ScoreMode = "mean"

    def validate(self) -> None:
        if self.stride <= 0 or self.upsample < 1:
            raise RtposeError(f"stride must be > 0 and upsample >= 1, got {self.stride}, {self.upsample}")
        if self.num_samples < 2:
            raise RtposeError(f"num_samples must be at least 2, got {self.num_samples}")
        if self.score_mode not in ("mean", "openpose"):
            raise RtposeError(f"unknown score_mode {self.score_mode!r}; use 'mean' or 'openpose'")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise RtposeError(f"unknown interpolation {self.interpolation!r}")


@dataclass
class BottomUpDetails:
    """Diagnostics of one decode: peaks per OpenPose keypoint type, and per person its OpenPose-18
    keypoint count and OpenPose score (sum of peak and connection scores)."""

    peak_counts: Array
    num_keypoints: Array
    openpose_scores: Array
    #: the path that produced the people: "numpy", "dynamic" (torch, exact shapes), "static" (torch, fixed
    #: shapes, eager) or "graph" (the static decode replayed from a CUDA graph)
    decoder: str = "numpy"
    #: why a requested static/graph decode was redone by the dynamic path (None when it was not)
    fallback: str | None = None


def _prepare(heatmaps: Array, pafs: Array) -> tuple[Array, Array]:
    for name, value in (("heatmaps", heatmaps), ("pafs", pafs)):
        if not isinstance(value, np.ndarray | torch.Tensor):
            raise RtposeError(f"{name} must be a NumPy array or a torch tensor, got {type(value).__name__}")
    if is_torch(heatmaps) != is_torch(pafs):
        raise RtposeError("heatmaps and pafs must both be NumPy arrays or both torch tensors")
    if heatmaps.ndim == 4 and heatmaps.shape[0] == 1:
        heatmaps = heatmaps[0]
    if pafs.ndim == 4 and pafs.shape[0] == 1:
        pafs = pafs[0]
    if heatmaps.ndim != 3 or heatmaps.shape[0] < NUM_OPENPOSE_KEYPOINTS:
        raise RtposeError(f"heatmaps must be (>=18, H, W) for one image, got {tuple(heatmaps.shape)}")
    if pafs.ndim != 3 or pafs.shape[0] != 2 * len(OPENPOSE_LIMBS):
        raise RtposeError(f"pafs must be (38, H, W) for one image, got {tuple(pafs.shape)}")
    if tuple(pafs.shape[1:]) != tuple(heatmaps.shape[1:]):
        raise RtposeError(f"heatmaps {tuple(heatmaps.shape)} and pafs {tuple(pafs.shape)} differ in size")
    if is_torch(heatmaps):
        return heatmaps[:NUM_OPENPOSE_KEYPOINTS].float(), pafs.float()
    return np.asarray(heatmaps[:NUM_OPENPOSE_KEYPOINTS], np.float32), np.asarray(pafs, np.float32)


def _to_input_pixels(index: Array, cfg: BottomUpConfig) -> Array:
    return (index + 0.5) * (cfg.stride / cfg.upsample) - 0.5


# ============================================================================ NumPy reference
def _upsampled(heatmaps: np.ndarray | torch.Tensor, cfg: BottomUpConfig) -> Array:
    if cfg.upsample == 1:
        return heatmaps
    height, width = heatmaps.shape[-2:]
    return resize_heatmaps(heatmaps, (height * cfg.upsample, width * cfg.upsample), cfg.interpolation)


def _quadratic_offset(left: Array, center: Array, right: Array, inside: Array) -> Array:
    """Vertex of the parabola through three samples, in [-0.5, 0.5]; 0 on the border."""
    curvature = left - 2 * center + right
    lib = torch if is_torch(center) else np
    safe = lib.where(curvature < 0, curvature, -lib.ones_like(curvature))
    offset = 0.5 * (left - right) / safe
    offset = offset.clamp(-0.5, 0.5) if is_torch(offset) else np.clip(offset, -0.5, 0.5)
    return lib.where(inside & (curvature < 0), offset, lib.zeros_like(offset))


def _local_maxima(maps: Array, padded: Array, threshold: float) -> Array:
    """3x3 non-maximum suppression: >= all 8 neighbours and above the threshold.

    On a plateau (equal neighbours, e.g. a peak exactly between two upsampled pixels) only the first pixel
    in row-major order survives: a peak must be strictly above its 4 earlier neighbours. Same slicing code
    for NumPy and torch (``padded`` is ``maps`` padded by one pixel of -inf).
    """
    height, width = maps.shape[-2:]
    is_peak = maps > threshold
    for dy in range(3):
        for dx in range(3):
            if dy == 1 and dx == 1:
                continue
            neighbour = padded[:, dy : dy + height, dx : dx + width]
            earlier = dy == 0 or (dy == 1 and dx == 0)
            is_peak = is_peak & ((maps > neighbour) if earlier else (maps >= neighbour))
    return is_peak


def find_peaks_numpy(heatmaps: np.ndarray, cfg: BottomUpConfig) -> list[np.ndarray]:
    """Per OpenPose keypoint type, an (n, 3) float32 array of peaks: x, y in input pixels, score."""
    maps = _upsampled(heatmaps, cfg)
    height, width = maps.shape[-2:]
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    is_peak = _local_maxima(maps, padded, cfg.peak_thr)
    peaks = []
    for kind in range(NUM_OPENPOSE_KEYPOINTS):
        ys, xs = np.nonzero(is_peak[kind])
        scores = maps[kind, ys, xs]
        fx, fy = xs.astype(np.float32), ys.astype(np.float32)
        if cfg.refine and len(xs):
            m = maps[kind]
            fx = fx + _quadratic_offset(
                m[ys, np.maximum(xs - 1, 0)], scores, m[ys, np.minimum(xs + 1, width - 1)],
                (xs > 0) & (xs < width - 1),
            )  # fmt: skip
            fy = fy + _quadratic_offset(
                m[np.maximum(ys - 1, 0), xs], scores, m[np.minimum(ys + 1, height - 1), xs],
                (ys > 0) & (ys < height - 1),
            )  # fmt: skip
        peaks.append(
            np.stack([_to_input_pixels(fx, cfg), _to_input_pixels(fy, cfg), scores], 1).astype(np.float32)
        )
    return peaks


def _bilinear_numpy(field: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Sample (C, H, W) at float grid positions (...), clamped to the grid; returns (C, ...)."""
    height, width = field.shape[-2:]
    gx = np.clip(gx, 0, width - 1).astype(np.float32)
    gy = np.clip(gy, 0, height - 1).astype(np.float32)
    x0 = np.minimum(np.floor(gx).astype(np.int64), width - 2) if width > 1 else np.zeros(gx.shape, np.int64)
    y0 = np.minimum(np.floor(gy).astype(np.int64), height - 2) if height > 1 else np.zeros(gy.shape, np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    wx, wy = gx - x0.astype(np.float32), gy - y0.astype(np.float32)
    top = (1 - wx) * field[:, y0, x0] + wx * field[:, y0, x1]
    bottom = (1 - wx) * field[:, y1, x0] + wx * field[:, y1, x1]
    return (1 - wy) * top + wy * bottom


def _limb_scores_numpy(
    pafs: np.ndarray,
    peaks_a: np.ndarray,
    peaks_b: np.ndarray,
    limb: int,
    cfg: BottomUpConfig,
    input_height: float,
) -> np.ndarray:
    """(na, nb) connection scores of one limb; -inf where OpenPose's criteria reject the pair."""
    pa = peaks_a[:, None, :2]
    pb = peaks_b[None, :, :2]
    vec = (pb - pa).astype(np.float32)  # (na, nb, 2)
    length = np.sqrt((vec**2).sum(-1))
    unit = vec / np.maximum(length, 1e-6)[..., None]
    steps = np.linspace(0, 1, cfg.num_samples, dtype=np.float32)
    points = pa[..., None, :] + vec[..., None, :] * steps[:, None]  # (na, nb, S, 2)
    offset = cfg.stride / 2 - 0.5
    grid = (points - offset) / cfg.stride
    channels = pafs[list(OPENPOSE_PAF_CHANNELS[limb])]
    field = _bilinear_numpy(channels, grid[..., 0], grid[..., 1])  # (2, na, nb, S)
    samples = field[0] * unit[..., 0, None] + field[1] * unit[..., 1, None]
    prior = np.minimum(0.5 * input_height / np.maximum(length, 1e-6) - 1, 0)
    score = samples.mean(-1) + prior
    success = (samples > cfg.paf_thr).sum(-1) > cfg.min_success * cfg.num_samples
    ok = success & (score > 0) & (length > 1e-3)
    return np.where(ok, score, -np.inf).astype(np.float32)


def _greedy_match_numpy(scores: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one matching by descending score; ties resolved by lower flat index."""
    flat = scores.ravel()
    order = np.argsort(-flat, kind="stable")
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches = []
    for index in order:
        if not np.isfinite(flat[index]):
            break
        a, b = divmod(int(index), scores.shape[1])
        if a in used_a or b in used_b:
            continue
        used_a.add(a)
        used_b.add(b)
        matches.append((a, b, float(flat[index])))
    return matches


def _group_numpy(
    peaks: list[np.ndarray], connections: list[list[tuple[int, int, float]]]
) -> list[tuple[np.ndarray, float]]:
    """OpenPose-style person records: (18,) peak index per type or -1, and OpenPose score."""
    records: list[np.ndarray] = []
    totals: list[float] = []
    for limb, (kind_a, kind_b) in enumerate(OPENPOSE_LIMBS):
        for a, b, score in connections[limb]:
            holder_a = next((r for r, rec in enumerate(records) if rec[kind_a] == a), None)
            holder_b = next((r for r, rec in enumerate(records) if rec[kind_b] == b), None)
            if holder_a is None and holder_b is None:
                record = np.full(NUM_OPENPOSE_KEYPOINTS, -1, np.int64)
                record[kind_a], record[kind_b] = a, b
                records.append(record)
                totals.append(float(peaks[kind_a][a, 2] + peaks[kind_b][b, 2]) + score)
            elif holder_a is not None and holder_b is not None:
                if holder_a == holder_b:
                    continue
                first, second = records[holder_a], records[holder_b]
                if np.any((first >= 0) & (second >= 0)):
                    continue  # the two records share a keypoint type: not the same person
                records[holder_a] = np.where(first >= 0, first, second)
                totals[holder_a] += totals[holder_b] + score
                del records[holder_b], totals[holder_b]
            else:
                holder, kind, index = (
                    (holder_a, kind_b, b) if holder_a is not None else (holder_b, kind_a, a)
                )  # fmt: skip
                if records[holder][kind] >= 0:
                    continue  # the slot holds another peak already
                records[holder][kind] = index
                totals[holder] += float(peaks[kind][index, 2]) + score
    return list(zip(records, totals, strict=True))


def _people_from_records(
    peaks: list[Array], records: list[tuple[np.ndarray, float]], cfg: BottomUpConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    kept = []
    for record, total in records:
        count = int((record >= 0).sum())
        if count < max(cfg.min_keypoints, 2) or total / count < cfg.min_mean_score:
            continue
        xy = np.zeros((NUM_OPENPOSE_KEYPOINTS, 2), np.float32)
        kscores = np.zeros(NUM_OPENPOSE_KEYPOINTS, np.float32)
        for kind in np.nonzero(record >= 0)[0]:
            xy[kind] = peaks[kind][record[kind], :2]
            kscores[kind] = peaks[kind][record[kind], 2]
        coco_scores = kscores[list(COCO_FROM_OPENPOSE)]
        present = coco_scores > 0
        mean = float(coco_scores[present].mean()) if present.any() else 0.0
        person_score = mean if cfg.score_mode == "mean" else total / count
        first = int(np.nonzero(record >= 0)[0][0])
        key = first * (1 << 20) + int(record[first])
        kept.append((person_score, key, xy, kscores, count, total / count))
    kept.sort(key=lambda item: (-item[0], item[1]))
    coco = list(COCO_FROM_OPENPOSE)
    keypoints = np.array([k[2][coco] for k in kept], np.float32).reshape(-1, 17, 2)
    keypoint_scores = np.array([k[3][coco] for k in kept], np.float32).reshape(-1, 17)
    person_scores = np.array([k[0] for k in kept], np.float32)
    counts = np.array([k[4] for k in kept], np.int64)
    openpose_scores = np.array([k[5] for k in kept], np.float32)
    return keypoints, keypoint_scores, person_scores, counts, openpose_scores


def _decode_numpy(heatmaps: np.ndarray, pafs: np.ndarray, cfg: BottomUpConfig) -> tuple:
    peaks = find_peaks_numpy(heatmaps, cfg)
    input_height = heatmaps.shape[-2] * cfg.stride
    connections = []
    for limb, (kind_a, kind_b) in enumerate(OPENPOSE_LIMBS):
        if len(peaks[kind_a]) == 0 or len(peaks[kind_b]) == 0:
            connections.append([])
            continue
        scores = _limb_scores_numpy(pafs, peaks[kind_a], peaks[kind_b], limb, cfg, input_height)
        connections.append(_greedy_match_numpy(scores))
    records = _group_numpy(peaks, connections)
    *people, counts, openpose_scores = _people_from_records(peaks, records, cfg)
    peak_counts = np.array([len(p) for p in peaks], np.int64)
    return (*people, BottomUpDetails(peak_counts, counts, openpose_scores))


# ============================================================================ torch (CPU / CUDA)
@lru_cache(maxsize=64)
def _node_tables(device: torch.device, max_count: int) -> dict[str, torch.Tensor]:
    """Index tables over the 18 * max_count peak slots ("nodes"), made once per size (fewer kernels)."""
    num_nodes = NUM_OPENPOSE_KEYPOINTS * max_count
    slot = torch.arange(max_count, device=device)
    kind_of = torch.arange(NUM_OPENPOSE_KEYPOINTS, device=device).repeat_interleave(max_count)
    tree = _tables(device)["tree"]
    return {
        "slot": slot,
        "true": torch.ones((), dtype=torch.bool, device=device),
        "ids": torch.arange(num_nodes + 1, device=device),  # node ids and a spare one
        "kind_of": kind_of,
        "tree_b": (tree[:, 1, None] * max_count + slot).reshape(-1),  # child node of each tree pair
        "tree_a_base": tree[:, 0, None] * max_count,  # first node of each tree limb's parent type
        # people are ordered by their first (type, index), as in the reference
        "order_key": kind_of * (1 << 20) + slot.repeat(NUM_OPENPOSE_KEYPOINTS),
    }


@lru_cache(maxsize=8)
def _tables(device: torch.device) -> dict[str, torch.Tensor]:
    """Limb and mapping tables on a device, made once (each fresh copy would cost a host sync)."""
    return {
        "limbs": torch.tensor(OPENPOSE_LIMBS, device=device),
        "tree": torch.tensor(OPENPOSE_LIMBS[:NUM_TREE_LIMBS], device=device),
        "channels": torch.tensor(OPENPOSE_PAF_CHANNELS, device=device),
        "coco": torch.tensor(COCO_FROM_OPENPOSE, device=device),
    }


def _local_maxima_torch(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """`_local_maxima` with max-pools (fewer kernels on a GPU): >= the 3x3 maximum, and > the maximum of
    the 4 earlier neighbours (the 3 pixels of the row above and the left one)."""
    height, width = maps.shape[-2:]
    padded = F.pad(maps, (1, 1, 1, 1), value=-torch.inf)
    is_peak = (maps > threshold) & (maps >= F.max_pool2d(padded[None], 3, stride=1)[0])
    above = F.max_pool2d(padded[None, :, :height], (1, 3), stride=1)[0]
    return is_peak & (maps > torch.maximum(above, padded[:, 1 : height + 1, :width]))


def _find_peaks_torch(heatmaps: torch.Tensor, cfg: BottomUpConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded peaks (18, Kmax, 3) (x, y input pixels, score; zeros past the count) and counts (18,)."""
    maps = _upsampled(heatmaps, cfg)
    height, width = maps.shape[-2:]
    is_peak = _local_maxima_torch(maps, cfg.peak_thr)
    found = torch.nonzero(is_peak)  # (n, 3) kind, y, x in row-major order per kind
    kinds, ys, xs = found.unbind(1)
    scores = maps[kinds, ys, xs]
    fx, fy = xs.float(), ys.float()
    if cfg.refine and len(found):
        fx = fx + _quadratic_offset(
            maps[kinds, ys, (xs - 1).clamp_min(0)], scores, maps[kinds, ys, (xs + 1).clamp_max(width - 1)],
            (xs > 0) & (xs < width - 1),
        )  # fmt: skip
        fy = fy + _quadratic_offset(
            maps[kinds, (ys - 1).clamp_min(0), xs], scores, maps[kinds, (ys + 1).clamp_max(height - 1), xs],
            (ys > 0) & (ys < height - 1),
        )  # fmt: skip
    counts = torch.bincount(kinds, minlength=NUM_OPENPOSE_KEYPOINTS)
    max_count = int(counts.max()) if len(found) else 0
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(found), device=maps.device) - starts[kinds]
    padded = torch.zeros(NUM_OPENPOSE_KEYPOINTS, max_count, 3, device=maps.device)
    values = torch.stack([_to_input_pixels(fx, cfg), _to_input_pixels(fy, cfg), scores], 1)
    padded[kinds, rank] = values
    return padded, counts


def _limb_scores_torch(
    pafs: torch.Tensor, peaks: torch.Tensor, counts: torch.Tensor, cfg: BottomUpConfig, input_height: float
) -> torch.Tensor:
    """(19, Kmax, Kmax) connection scores of every candidate pair of every limb in one gather."""
    device = pafs.device
    limbs, channels = _tables(device)["limbs"], _tables(device)["channels"]
    max_count = peaks.shape[1]
    pa = peaks[limbs[:, 0], :, None, :2]  # (L, K, 1, 2)
    pb = peaks[limbs[:, 1], None, :, :2]  # (L, 1, K, 2)
    vec = pb - pa
    length = torch.sqrt((vec**2).sum(-1))  # (L, K, K)
    unit = vec / length.clamp_min(1e-6)[..., None]
    steps = torch.linspace(0, 1, cfg.num_samples, device=device)
    points = pa[..., None, :] + vec[..., None, :] * steps[:, None]  # (L, K, K, S, 2)
    grid = (points - (cfg.stride / 2 - 0.5)) / cfg.stride
    height, width = pafs.shape[-2:]
    gx = grid[..., 0].clamp(0, width - 1)
    gy = grid[..., 1].clamp(0, height - 1)
    x0 = torch.floor(gx).long().clamp_max(max(width - 2, 0))
    y0 = torch.floor(gy).long().clamp_max(max(height - 2, 0))
    x1, y1 = (x0 + 1).clamp_max(width - 1), (y0 + 1).clamp_max(height - 1)
    wx, wy = gx - x0, gy - y0
    plane = channels[:, None, None, None, :]  # (L, 1, 1, 1, 2) -> broadcast over pairs and samples

    def tap(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return pafs[plane, y[..., None], x[..., None]]  # (L, K, K, S, 2)

    top = (1 - wx)[..., None] * tap(y0, x0) + wx[..., None] * tap(y0, x1)
    bottom = (1 - wx)[..., None] * tap(y1, x0) + wx[..., None] * tap(y1, x1)
    field = (1 - wy)[..., None] * top + wy[..., None] * bottom
    samples = field[..., 0] * unit[..., 0, None] + field[..., 1] * unit[..., 1, None]  # (L, K, K, S)
    prior = torch.clamp_max(0.5 * input_height / length.clamp_min(1e-6) - 1, 0)
    score = samples.mean(-1) + prior
    success = (samples > cfg.paf_thr).sum(-1) > cfg.min_success * cfg.num_samples
    index = torch.arange(max_count, device=device)
    exists = (index[None, :, None] < counts[limbs[:, 0], None, None]) & (
        index[None, None, :] < counts[limbs[:, 1], None, None]
    )
    ok = success & (score > 0) & (length > 1e-3) & exists
    return torch.where(ok, score, torch.full_like(score, -torch.inf))


def _match_round(remaining: torch.Tensor, partner: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """One round of the matrix greedy: accept every pair that is the best of its row and of its column.

    ``remaining`` (L, Ka, Kb) holds the scores of still free pairs (-inf elsewhere; never NaN or +inf);
    ``partner`` (L, Kb + 1) gets the a index (``rows`` = 0..Ka-1) of each accepted b in place; rows
    without a pair write to the spare last column (masked scatter instead of nonzero(): no host sync).
    Returns ``remaining`` without the rows and columns taken so far. Max keeps the lower index on ties,
    which is the greedy's tie rule. Eleven kernels: the round is repeated, so every one counts on a GPU.
    """
    count_b = remaining.shape[2]
    row_value, row_best = remaining.max(2)  # (L, Ka)
    col_best = remaining.argmax(1)  # (L, Kb)
    mutual = (col_best.gather(1, row_best) == rows) & (row_value > -torch.inf)  # (L, Ka)
    partner.scatter_(1, torch.where(mutual, row_best, count_b), rows.expand_as(row_best))
    taken = partner[:, None, :count_b] >= 0  # every matched column, earlier rounds' included
    return remaining.masked_fill(mutual[..., None] | taken, -torch.inf)


def _greedy_match_torch(scores: torch.Tensor) -> torch.Tensor:
    """(L, Ka, Kb) scores -> (L, Kb) index of the matched a candidate, or -1 (all limbs at once).

    Repeats `_match_round` until no finite pair is left; under a strict total order that is exactly the
    sequential greedy. Each round with a finite pair left accepts at least the global best one.
    """
    num_limbs, count_a, count_b = scores.shape
    partner = torch.full((num_limbs, count_b + 1), -1, dtype=torch.long, device=scores.device)
    if count_a == 0 or count_b == 0:
        return partner[:, :count_b]
    remaining, rows = scores, torch.arange(count_a, device=scores.device)
    for step in range(min(count_a, count_b)):
        remaining = _match_round(remaining, partner, rows)
        # an iteration without mutual pairs changes nothing: look (host sync) only every other one
        if step % 2 == 1 and not bool(torch.isfinite(remaining).any()):
            break
    return partner[:, :count_b]


class Components(NamedTuple):
    """People as connected components over the (18 * K) peak slots ("nodes"), all static in shape."""

    label: torch.Tensor  # (N,) root node of each node's component (itself for absent slots)
    valid: torch.Tensor  # (N,) bool: the slot holds a peak
    kind_of: torch.Tensor  # (N,) OpenPose keypoint type of each node
    slot: torch.Tensor  # (K,) 0..K-1
    size: torch.Tensor  # (N,) float: keypoints of the component rooted at a node (0 elsewhere)
    mean_total: torch.Tensor  # (N,) OpenPose score per keypoint of the component rooted at a node
    is_person: torch.Tensor  # (N,) bool: root of a component kept as a person


def _components_torch(
    peaks: torch.Tensor,
    counts: torch.Tensor,
    scores: torch.Tensor,
    partner: torch.Tensor,
    cfg: BottomUpConfig,
) -> Components:
    """Grouping without host syncs or data-dependent shapes: the same people as `_group_numpy`."""
    device = peaks.device
    max_count = peaks.shape[1]
    matched = partner >= 0
    connection_score = scores.gather(1, partner.clamp_min(0)[:, None, :])[:, 0, :]  # (L, K)
    connection_score = torch.where(matched, connection_score, torch.zeros_like(connection_score))

    num_nodes = NUM_OPENPOSE_KEYPOINTS * max_count
    nodes = _node_tables(device, max_count)
    slot, kind_of, ids = nodes["slot"], nodes["kind_of"], nodes["ids"]
    valid = (slot[None, :] < counts[:, None]).reshape(-1)  # (num_nodes,)
    # Tree limbs: every keypoint type but the neck is the child (b) of exactly one tree limb, so each
    # node has at most one parent; the label of a node is the root of its parent chain, reached by
    # pointer jumping (the chains are at most TREE_DEPTH long). Equal to the sequential merge in the
    # breadth-first limb order, where each child takes its parent's final label.
    nodes_b = nodes["tree_b"]
    nodes_a = (nodes["tree_a_base"] + partner[:NUM_TREE_LIMBS].clamp_min(0)).reshape(-1)
    tree_matched = matched[:NUM_TREE_LIMBS].reshape(-1)
    label = ids[:num_nodes].clone()
    label[nodes_b] = torch.where(tree_matched, nodes_a, nodes_b)
    for _ in range(math.ceil(math.log2(TREE_DEPTH + 1))):
        label = label[label]
    edge_score = torch.zeros(num_nodes, device=device)  # connection scores, booked on the b node
    edge_score[nodes_b] = connection_score[:NUM_TREE_LIMBS].reshape(-1)
    merge_score = torch.zeros(num_nodes, device=device)
    for limb in range(NUM_TREE_LIMBS, len(OPENPOSE_LIMBS)):
        kind_a, kind_b = OPENPOSE_LIMBS[limb]
        label_a = label[kind_a * max_count + partner[limb].clamp_min(0)]
        label_b = label[kind_b * max_count + slot]
        # which keypoint types each component holds; absent peaks land in a spare row (no mask, no sync)
        occupancy = torch.zeros(num_nodes + 1, NUM_OPENPOSE_KEYPOINTS, dtype=torch.bool, device=device)
        # a device tensor as the value: a Python True would be copied from the host (breaks graph capture)
        occupancy.index_put_((torch.where(valid, label, num_nodes), kind_of), nodes["true"])
        clash = (occupancy[label_a] & occupancy[label_b]).any(1) | (label_a == label_b)
        merge = matched[limb] & ~clash
        low, high = torch.minimum(label_a, label_b), torch.maximum(label_a, label_b)
        remap = ids.clone()
        remap[torch.where(merge, high, num_nodes)] = torch.where(merge, low, num_nodes)
        label = remap[label]
        merge_score[kind_b * max_count + slot] += torch.where(merge, connection_score[limb], 0.0)

    flat_scores = peaks[..., 2].reshape(-1)
    ones = valid.float()
    size = torch.zeros(num_nodes, device=device).index_add_(0, label, ones)
    total = torch.zeros(num_nodes, device=device).index_add_(
        0, label, flat_scores * ones + edge_score + merge_score
    )
    mean_total = total / size.clamp_min(1)
    is_person = valid & (label == ids[:num_nodes])  # one root node per component
    is_person &= (size >= max(cfg.min_keypoints, 2)) & (mean_total >= cfg.min_mean_score)
    return Components(label, valid, kind_of, slot, size, mean_total, is_person)


def _gather_people(
    peaks: torch.Tensor, row: torch.Tensor, kind_of: torch.Tensor, num_rows: int, max_count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks (K, max_count, 3) into one row each (`row`; `num_rows` is a spare row for non-members).

    Per row, in COCO-17 order: keypoints (R, 17, 2), keypoint scores (R, 17), the mean score of the
    keypoints present (R,), and the row's canonical order key (R,).
    """
    device = peaks.device
    table = torch.zeros(num_rows + 1, NUM_OPENPOSE_KEYPOINTS, 3, device=device)
    table[row, kind_of] = peaks.reshape(-1, 3)
    # canonical order key: the first (type, index) of the person, as in the reference
    node_key = _node_tables(device, max_count)["order_key"]
    key = torch.full((num_rows + 1,), 1 << 40, dtype=torch.long, device=device)
    key = key.scatter_reduce(0, row, node_key, reduce="amin")[:num_rows]

    coco = _tables(device)["coco"]
    keypoints, keypoint_scores = table[:num_rows, coco, :2], table[:num_rows, coco, 2]
    present = (keypoint_scores > 0).float()
    mean = (keypoint_scores * present).sum(1) / present.sum(1).clamp_min(1)
    return keypoints, keypoint_scores, mean, key


def _decode_torch(heatmaps: torch.Tensor, pafs: torch.Tensor, cfg: BottomUpConfig) -> tuple:
    device = heatmaps.device
    peaks, counts = _find_peaks_torch(heatmaps, cfg)
    max_count = peaks.shape[1]
    input_height = heatmaps.shape[-2] * cfg.stride
    nothing = torch.zeros(0, device=device)
    no_counts = torch.zeros(0, dtype=torch.long, device=device)
    empty = (
        nothing.view(0, 17, 2),
        nothing.view(0, 17),
        nothing,
        BottomUpDetails(counts, no_counts, nothing, decoder="dynamic"),
    )
    if max_count == 0:
        return empty
    scores = _limb_scores_torch(pafs, peaks, counts, cfg, input_height)
    partner = _greedy_match_torch(scores)  # (L, K): for each b candidate, its a candidate or -1
    label, valid, kind_of, _, size, mean_total, is_person = _components_torch(
        peaks, counts, scores, partner, cfg
    )
    num_nodes = len(label)
    roots = torch.nonzero(is_person)[:, 0]
    num_people = len(roots)
    if num_people == 0:
        return empty
    person_of_root = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
    person_of_root[roots] = torch.arange(num_people, device=device)
    # person row of every node; non-members write into a spare last row (no boolean mask, no sync)
    person = torch.where(valid, person_of_root[label], torch.full_like(label, -1))
    row = torch.where(person >= 0, person, num_people)
    keypoints, keypoint_scores, mean, key = _gather_people(peaks, row, kind_of, num_people, max_count)
    openpose_scores = mean_total[roots]
    person_scores = mean if cfg.score_mode == "mean" else openpose_scores
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(-person_scores[order], stable=True)]
    details = BottomUpDetails(counts, size[roots].long()[order], openpose_scores[order], decoder="dynamic")
    return keypoints[order], keypoint_scores[order], person_scores[order], details


# ============================================================================ public API
def decode_bottomup(
    heatmaps: Array,
    pafs: Array,
    *,
    stride: int = 8,
    upsample: int = 4,
    peak_thr: float = 0.1,
    interpolation: ResizeMode = "bicubic",
    refine: bool = True,
    paf_thr: float = 0.05,
    num_samples: int = 10,
    min_success: float = 0.8,
    min_keypoints: int = 3,
    min_mean_score: float = 0.2,
    score_mode: ScoreMode = "mean",
    return_details: bool = False,
    decoder: Decoder = "auto",
    max_peaks: int = DEFAULT_MAX_PEAKS,
) -> tuple:
    """Heatmaps (19 or 18, H, W) and PAFs (38, H, W) of one image (a leading batch of 1 is accepted) ->
    (keypoints (P, 17, 2) COCO order in network-input pixels, keypoint scores (P, 17), person scores (P,)),
    plus ``BottomUpDetails`` when ``return_details``. Missing keypoints have score 0 and position (0, 0).

    NumPy in -> NumPy reference out; torch in -> torch out on the input's device, by ``decoder`` (see
    `Decoder`). The static decoders keep at most ``max_peaks`` peaks per keypoint type; a frame with more
    (or whose matching needs more rounds than the static bound) is decoded again by the exact dynamic
    path, and ``details.fallback`` says why: every decoder gives the reference's people.
    """
    cfg = BottomUpConfig(
        stride=stride, upsample=upsample, interpolation=interpolation, peak_thr=peak_thr, refine=refine,
        paf_thr=paf_thr, num_samples=num_samples, min_success=min_success, min_keypoints=min_keypoints,
        min_mean_score=min_mean_score, score_mode=score_mode,
    )  # fmt: skip
    cfg.validate()
    if decoder not in DECODERS:
        raise RtposeError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    if isinstance(max_peaks, bool) or not isinstance(max_peaks, int) or max_peaks < 1:
        raise RtposeError(f"max_peaks must be a positive integer, got {max_peaks!r}")
    heatmaps, pafs = _prepare(heatmaps, pafs)
    if is_torch(heatmaps):
        if decoder == "auto":
            # H100, 2026-11-22: compiled 0.46 ms vs NumPy 8.5 ms per street frame (x18), the fewest
            # kernels per replay; the first call per heatmap shape compiles (~17 s). "graph" (the eager
            # decode captured) needs no compiler and captures in ~1 s.
            decoder = "compiled" if heatmaps.is_cuda else "dynamic"
        with torch.no_grad():
            if decoder == "dynamic":
                result = _decode_torch(heatmaps, pafs, cfg)
            else:
                from rtpose.postprocess.paf_gpu import StaticLimits, decode_static_or_fallback

                limits = StaticLimits(max_peaks=max_peaks)
                result = decode_static_or_fallback(
                    heatmaps, pafs, cfg, limits, use_graph=decoder != "static", compiled=decoder == "compiled"
                )
    else:
        result = _decode_numpy(heatmaps, pafs, cfg)
    return result if return_details else result[:3]


def peak_counts(
    heatmaps: Array,
    *,
    stride: int = 8,
    upsample: int = 4,
    peak_thr: float = 0.1,
    interpolation: ResizeMode = "bicubic",
) -> Array:
    """Number of peaks per OpenPose keypoint type (18,): a cheap diagnostic of the heatmaps."""  # fmt: skip
    cfg = BottomUpConfig(stride=stride, upsample=upsample, peak_thr=peak_thr, interpolation=interpolation)
    cfg.validate()
    if isinstance(heatmaps, np.ndarray | torch.Tensor) and heatmaps.ndim == 4 and heatmaps.shape[0] == 1:
        heatmaps = heatmaps[0]
    if not isinstance(heatmaps, np.ndarray | torch.Tensor) or heatmaps.ndim != 3 or len(heatmaps) < 18:
        raise RtposeError("heatmaps must be a (>=18, H, W) NumPy array or torch tensor")
    if is_torch(heatmaps):
        with torch.no_grad():
            return _find_peaks_torch(heatmaps[:NUM_OPENPOSE_KEYPOINTS].float(), cfg)[1]
    peaks = find_peaks_numpy(np.asarray(heatmaps[:NUM_OPENPOSE_KEYPOINTS], np.float32), cfg)
    return np.array([len(p) for p in peaks], np.int64)
