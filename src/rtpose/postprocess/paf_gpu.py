"""Static-shape bottom-up (PAF) decoding, replayed from one CUDA graph per heatmap shape.

Why: the dynamic torch decoder (`paf._decode_torch`) is exact but launch-bound on a GPU: about 430 small
kernels and several host syncs (nonzero, counts) per frame cost 5-8 ms while the kernels themselves run
for under 1 ms. Here every tensor shape depends only on the heatmap shape and two limits, and nothing
inside reads a value back to the host, so the whole decode is captured once in a ``torch.cuda.CUDAGraph``
and a frame costs: two input copies, one graph replay, one small device->host copy (people count and two
flags), and one clone of the people rows out of the graph's static buffers.

The same code runs eagerly on the CPU (or on a GPU without graphs), which is how it is tested against the
NumPy reference where there is no GPU. Stages reuse the dynamic decoder's static parts (limb scores, one
matching round, grouping into components); what differs:

- peaks: the first ``max_peaks`` (K) peaks per keypoint type in row-major order, by a top-k of the flat
  pixel index over the NMS mask (instead of nonzero); slots past a type's count are masked;
- matching: a fixed number of mutual-best rounds (the real frames need at most 3);
- people: every person is rooted at one of the 18 * K peak slots, so 18 * K padded rows never overflow;
  they are sorted with non-persons last, and the count tells how many rows are people.

Exactness: more than K peaks of a type, or finite pairs left after the last matching round, are detected
on the device and reported in the one host copy; the frame is then decoded again by the dynamic path and
``BottomUpDetails.fallback`` says why. Results never silently differ from the reference.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch

from rtpose.errors import RtposeError
from rtpose.postprocess.heatmap import ResizeMode, interpolation_matrix
from rtpose.postprocess.paf import (
    DEFAULT_MAX_PEAKS,
    NUM_OPENPOSE_KEYPOINTS,
    BottomUpConfig,
    BottomUpDetails,
    _components_torch,
    _decode_torch,
    _gather_people,
    _limb_scores_torch,
    _local_maxima_torch,
    _match_round,
    _quadratic_offset,
    _to_input_pixels,
)

NUM_COCO = 17
#: columns of a packed person row: keypoints (17 x 2), keypoint scores (17), person score, OpenPose score
#: per keypoint, OpenPose keypoint count
PACKED_WIDTH = NUM_COCO * 3 + 3
_INFO_FLAGS = 3  # info = [people, peak overflow, matching unconverged, 18 peak counts]
MAX_CAPTURED_GRAPHS = 8


@dataclass(frozen=True)
class StaticLimits:
    """Static bounds of the fixed-shape decode (part of the CUDA-graph key)."""

    max_peaks: int = DEFAULT_MAX_PEAKS
    match_rounds: int = 6  # the real street frames need at most 3

    def validate(self) -> None:
        if self.max_peaks < 1 or self.match_rounds < 1:
            raise RtposeError(
                f"max_peaks and match_rounds must be >= 1, got {self.max_peaks}, {self.match_rounds}"
            )


class StaticDecode(NamedTuple):
    """Device tensors of one static decode; shapes depend only on the input shape and the limits."""

    people: torch.Tensor  # (18 * K, PACKED_WIDTH) person rows in output order; the first `people` count
    info: torch.Tensor  # (3 + 18,) long: people, peak overflow, matching unconverged, peaks per type


# ============================================================================ stages
Matrices = tuple[torch.Tensor, torch.Tensor] | None


@lru_cache(maxsize=64)
def _matrix_on(size_in: int, size_out: int, mode: ResizeMode, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(interpolation_matrix(size_in, size_out, mode)).to(device)


def upsampling_matrices(heatmaps: torch.Tensor, cfg: BottomUpConfig) -> Matrices:
    """(rows, cols) interpolation matrices of `heatmap.resize_heatmaps` for these maps (None: upsample 1),
    cached per device; made outside a compiled region (torch.compile would trace their NumPy loops)."""
    if cfg.upsample == 1:
        return None
    height, width = heatmaps.shape[-2:]
    return (
        _matrix_on(height, height * cfg.upsample, cfg.interpolation, heatmaps.device),
        _matrix_on(width, width * cfg.upsample, cfg.interpolation, heatmaps.device),
    )


def _upsampled_static(heatmaps: torch.Tensor, matrices: Matrices) -> torch.Tensor:
    """`heatmap.resize_heatmaps` on (C, H, W) in the same two GEMMs (same rounding), free of NumPy calls."""
    if matrices is None:
        return heatmaps
    rows, cols = matrices
    channels, height, width = heatmaps.shape
    out_h, out_w = rows.shape[0], cols.shape[0]
    along_w = (heatmaps.reshape(channels * height, width) @ cols.T).reshape(channels, height, out_w)
    along_w = along_w.transpose(0, 1).reshape(height, channels * out_w)
    return (rows @ along_w).reshape(out_h, channels, out_w).transpose(0, 1).contiguous()


def find_peaks_static(
    heatmaps: torch.Tensor, cfg: BottomUpConfig, max_peaks: int, matrices: Matrices | str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(peaks (18, K, 3) x, y input pixels and score, zeros past the count; counts (18,) of all peaks).

    K = min(max_peaks, pixels of the upsampled map). Counts are not capped: a count above K is overflow.
    """
    if isinstance(matrices, str):
        matrices = upsampling_matrices(heatmaps, cfg)
    maps = _upsampled_static(heatmaps, matrices)
    height, width = maps.shape[-2:]
    num_pixels = height * width
    capacity = min(max_peaks, num_pixels)
    is_peak = _local_maxima_torch(maps, cfg.peak_thr).flatten(1)  # (18, HW)
    counts = is_peak.sum(1)
    position = torch.arange(num_pixels, device=maps.device)
    # the K smallest flat indices of the peaks, ascending = row-major order (absent: num_pixels)
    first = torch.topk(torch.where(is_peak, position, num_pixels), capacity, dim=1, largest=False).values
    valid = first < num_pixels
    index = first.clamp_max(num_pixels - 1)
    ys = torch.div(index, width, rounding_mode="floor")
    xs = index - ys * width
    flat = maps.flatten(1)
    scores = flat.gather(1, index)
    fx, fy = xs.float(), ys.float()
    if cfg.refine:
        inside_x, inside_y = (xs > 0) & (xs < width - 1), (ys > 0) & (ys < height - 1)
        left = flat.gather(1, index - (xs > 0).long())
        right = flat.gather(1, index + (xs < width - 1).long())
        up = flat.gather(1, index - width * (ys > 0).long())
        down = flat.gather(1, index + width * (ys < height - 1).long())
        fx = fx + _quadratic_offset(left, scores, right, inside_x)
        fy = fy + _quadratic_offset(up, scores, down, inside_y)
    values = torch.stack([_to_input_pixels(fx, cfg), _to_input_pixels(fy, cfg), scores], -1)
    return torch.where(valid[..., None], values, torch.zeros_like(values)), counts


def greedy_match_static(scores: torch.Tensor, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`paf._greedy_match_torch` with a fixed number of rounds: (partner (L, Kb), unconverged flag ())."""
    num_limbs, count_a, count_b = scores.shape
    partner = torch.full((num_limbs, count_b + 1), -1, dtype=torch.long, device=scores.device)
    remaining, rows = scores, torch.arange(count_a, device=scores.device)
    for _ in range(rounds):
        remaining = _match_round(remaining, partner, rows)
    return partner[:, :count_b], (remaining > -torch.inf).any()


def decode_static(
    heatmaps: torch.Tensor,
    pafs: torch.Tensor,
    cfg: BottomUpConfig,
    limits: StaticLimits,
    matrices: Matrices | str = "auto",
) -> StaticDecode:
    """The whole decode with static shapes and no host syncs (capturable in a CUDA graph).

    ``matrices``: `upsampling_matrices` of the input, "auto" to look them up here (eager use).
    """
    peaks, counts = find_peaks_static(heatmaps, cfg, limits.max_peaks, matrices)
    capacity = peaks.shape[1]
    overflow = (counts > capacity).any()
    kept = counts.clamp_max(capacity)
    input_height = heatmaps.shape[-2] * cfg.stride
    scores = _limb_scores_torch(pafs, peaks, kept, cfg, input_height)
    partner, unconverged = greedy_match_static(scores, limits.match_rounds)
    parts = _components_torch(peaks, kept, scores, partner, cfg)
    num_nodes = len(parts.label)

    # one padded row per node; a person's row is its root node's (each type at most once per component)
    row = torch.where(parts.valid, parts.label, num_nodes)
    keypoints, keypoint_scores, mean, key = _gather_people(peaks, row, parts.kind_of, num_nodes, capacity)
    person_scores = mean if cfg.score_mode == "mean" else parts.mean_total
    order = torch.argsort(key, stable=True)
    rank_value = torch.where(parts.is_person, -person_scores, torch.full_like(person_scores, torch.inf))
    order = order[torch.argsort(rank_value[order], stable=True)]  # people by score, then key; others last
    packed = torch.cat(
        [
            keypoints.reshape(num_nodes, NUM_COCO * 2),
            keypoint_scores,
            person_scores[:, None],
            parts.mean_total[:, None],
            parts.size[:, None],
        ],
        1,
    )[order]
    flags = torch.stack([parts.is_person.sum(), overflow.long(), unconverged.long()])
    return StaticDecode(packed, torch.cat([flags, counts]))


# ============================================================================ results
def _unpack(static: StaticDecode, decoder: str) -> tuple[tuple | None, str | None]:
    """People out of the padded rows after ONE device->host copy; (None, reason) when a bound was hit."""
    info = static.info.tolist()  # the only host sync of a frame
    num_people, overflow, unconverged = info[:_INFO_FLAGS]
    if overflow:
        capacity = static.people.shape[0] // NUM_OPENPOSE_KEYPOINTS
        return None, f"peak overflow: {max(info[_INFO_FLAGS:])} peaks of one type > max_peaks={capacity}"
    if unconverged:
        return None, "matching needs more rounds than the static bound"
    rows = static.people[:num_people].clone()  # out of the graph's buffers before the next replay
    details = BottomUpDetails(
        peak_counts=static.info[_INFO_FLAGS:].clone(),
        num_keypoints=rows[:, -1].long(),
        openpose_scores=rows[:, -2],
        decoder=decoder,
    )
    keypoints = rows[:, : NUM_COCO * 2].unflatten(1, (NUM_COCO, 2))
    return (keypoints, rows[:, NUM_COCO * 2 : NUM_COCO * 3], rows[:, NUM_COCO * 3], details), None


# ============================================================================ CUDA graphs
@lru_cache(maxsize=1)
def compiled_decode_static() -> Callable[..., StaticDecode]:
    """`decode_static` through torch.compile (Inductor: fused Triton kernels; static shapes, one graph)."""
    return torch.compile(decode_static, fullgraph=True, dynamic=False)


class CapturedDecoder:
    """`decode_static` captured in a CUDA graph for one (device, heatmap shape, config, limits, compiled).

    ``compiled``: capture the torch.compile'd decode (far fewer, fused kernels; the first use per shape
    compiles, tens of seconds) instead of the eager one. Inputs are copied into static buffers, the graph
    is replayed, and the people are cloned out under a lock, so threads may share one decoder.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        device: torch.device,
        cfg: BottomUpConfig,
        limits: StaticLimits,
        compiled: bool = False,
    ) -> None:
        height, width = shape
        self.name = "compiled" if compiled else "graph"
        self.lock = threading.Lock()
        self.heatmaps = torch.zeros(NUM_OPENPOSE_KEYPOINTS, height, width, device=device)
        self.pafs = torch.zeros(38, height, width, device=device)
        matrices = upsampling_matrices(self.heatmaps, cfg)
        decode = compiled_decode_static() if compiled else decode_static
        with torch.cuda.device(device), torch.no_grad():
            # warm-up on a side stream: compiles, fills the table caches, cuBLAS workspaces and the allocator
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    decode(self.heatmaps, self.pafs, cfg, limits, matrices)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: other pipeline threads may keep using the GPU while this thread captures
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = decode(self.heatmaps, self.pafs, cfg, limits, matrices)

    def __call__(self, heatmaps: torch.Tensor, pafs: torch.Tensor) -> tuple[tuple | None, str | None]:
        with self.lock:
            self.heatmaps.copy_(heatmaps)
            self.pafs.copy_(pafs)
            self.graph.replay()
            return _unpack(self.outputs, self.name)


_captured: OrderedDict[tuple, CapturedDecoder] = OrderedDict()
_uncapturable: set[tuple] = set()
_cache_lock = threading.Lock()


def captured_decoder(
    shape: tuple[int, int],
    device: torch.device,
    cfg: BottomUpConfig,
    limits: StaticLimits,
    compiled: bool = False,
) -> CapturedDecoder | None:
    """The cached graph decoder for this key (captured on first use), or None where capture fails (a
    failed compiled capture tries the eager graph)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    device = torch.device("cuda", index)
    key = (index, tuple(shape), cfg, limits, compiled)
    with _cache_lock:
        decoder = _captured.get(key)
        if decoder is not None:
            _captured.move_to_end(key)
            return decoder
        if key not in _uncapturable:
            try:
                decoder = CapturedDecoder(shape, device, cfg, limits, compiled)
            except Exception as exc:  # no graph support, or a compiler error: say so, decode otherwise
                _uncapturable.add(key)
                what = "torch.compile + CUDA graph" if compiled else "CUDA graph"
                warnings.warn(f"{what} of the bottom-up decoder failed ({exc!r}); falling back", stacklevel=2)
    if decoder is None:
        return captured_decoder(shape, device, cfg, limits) if compiled else None
    with _cache_lock:
        _captured[key] = decoder
        while len(_captured) > MAX_CAPTURED_GRAPHS:
            _captured.popitem(last=False)
    return decoder


def clear_captured() -> None:
    """Drop every captured graph (frees their memory pools)."""
    with _cache_lock:
        _captured.clear()
        _uncapturable.clear()


# ============================================================================ entry point
def decode_static_or_fallback(
    heatmaps: torch.Tensor,
    pafs: torch.Tensor,
    cfg: BottomUpConfig,
    limits: StaticLimits,
    *,
    use_graph: bool,
    compiled: bool = False,
) -> tuple:
    """Prepared (18, H, W) heatmaps and (38, H, W) PAFs -> (keypoints, keypoint scores, person scores,
    details): from a CUDA graph (of the torch.compile'd decode when ``compiled``) when ``use_graph`` and
    the input is on CUDA, else the static decode run eagerly; the dynamic decode when a static bound was
    hit (``details.fallback``)."""
    limits.validate()
    decoder = None
    if use_graph and heatmaps.is_cuda:
        decoder = captured_decoder(tuple(heatmaps.shape[-2:]), heatmaps.device, cfg, limits, compiled)
    if decoder is not None:
        result, reason = decoder(heatmaps, pafs)
    else:
        result, reason = _unpack(decode_static(heatmaps, pafs, cfg, limits), "static")
    if result is not None:
        return result
    fallback = _decode_torch(heatmaps, pafs, cfg)
    fallback[3].fallback = reason
    return fallback
