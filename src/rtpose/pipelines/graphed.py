"""Whole top-down stages replayed as CUDA graphs: one launch per stage instead of hundreds.

Why: profiling `TopDown.predict_batch` on the H100 (compiled FP16 engines, a 1280x720 frame with 10
people) gave 2.2 ms of GPU work for ~670 kernels, each launched from Python by an eager torch op, and
6.7 ms per frame of host time. Here the device work of each stage is captured once per shape and then
replayed (the functions inside are the very ones of the eager torch path, so results are the same):

* `DetectStep` (per image count and size): letterbox + normalise into the detector's input, the detector
  network (`CompiledEngine.run_for_capture`), box selection with a fixed candidate width and a fixed
  number of NMS rounds (`select_detections_fixed`; greedy NMS in one Triton kernel where Triton is
  installed, `postprocess.nms_triton`), boxes back to image pixels, compacted into person slots
  (image-major, best first). One small copy brings back the counts per image.
* `PoseStep` (per image count and size and pose-engine bucket): crops of up to `bucket` persons (their
  matrices and the crops as two Triton kernels where Triton is installed, `preprocess.crop_triton`;
  RTPOSE_TRITON=0 turns them off), the pose network, keypoint decoding, inverse affine, one row per
  person (box, score, keypoints). More persons than the largest bucket run in several replays; one copy
  brings back all rows.

Steps are made on the second call with a batch shape and kept for the 4 most recent shapes
(`StepCache`): photo folders of many sizes run op by op instead of capturing graphs for every size.
Where the fixed sizes cannot give the eager answer (more candidates than the width, NMS not converged in
its rounds) the detector step returns None and the caller runs the eager path for that call. Without
CUDA (the unit tests) the steps run as plain functions.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rtpose import triton_exact
from rtpose.engines.base import Engine
from rtpose.errors import RtposeError
from rtpose.models.spec import ModelSpec
from rtpose.pipelines.detector import unletterbox_torch
from rtpose.postprocess import simcc_triton
from rtpose.postprocess.detection import FixedSelection, select_detections_fixed
from rtpose.postprocess.pose_codecs import codec_name, decode_pose
from rtpose.preprocess import crop_triton
from rtpose.preprocess.affine import boxes_to_affine_matrices, invert_affine_matrices, transform_points
from rtpose.preprocess.device_batch import ImagePack, crop_normalize_torch, letterbox_normalize_torch
from rtpose.preprocess.letterbox import letterbox_size
from rtpose.preprocess.normalize import normalization_tensors

Network = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def graph_network(engine: Engine) -> Network | None:
    """The engine as a function that may run inside a CUDA graph capture, or None when it cannot.

    A compiled engine with CUDA graphs can (`run_for_capture`); on the CPU every engine can, since there
    is nothing to capture (the steps then run eagerly, for tests)."""
    runner = getattr(engine, "run_for_capture", None)
    if callable(runner) and getattr(engine, "use_cuda_graphs", False):
        return runner
    if str(engine.device) == "cpu" and getattr(engine, "backend", "") in ("torch", "compiled"):
        from rtpose.pipelines.processing import outputs_as

        return lambda batch: outputs_as("torch", engine(batch), "cpu")
    return None


def engine_buckets(engine: Engine) -> tuple[int, ...] | None:
    """Batch sizes a step may run the engine at (a compiled engine's buckets; None: any size)."""
    buckets = getattr(engine, "buckets", None)
    return tuple(buckets) if buckets else None


class _Replay:
    """`body` captured as a CUDA graph on `device` (run eagerly elsewhere). Its inputs and outputs must be
    tensors allocated before the capture, which the body reads and writes in place."""

    def __init__(self, body: Callable[[], None], device: torch.device, pool: Any = None) -> None:
        self.body = body
        self.graph: torch.cuda.CUDAGraph | None = None
        if device.type != "cuda":
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture (allocator, cuBLAS/cuDNN handles, lazy init)
                body()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            body()

    def __call__(self) -> None:
        if self.graph is None:
            self.body()
        else:
            self.graph.replay()


class OneKernel:
    """A step's choice between one of our Triton kernels and the torch functions it equals: the kernel
    where `triton_exact.wanted`, and the torch version from its first failure on (e.g. Triton cannot
    compile here), with one warning; the graphs stay on either way."""

    def __init__(self, what: str, device: torch.device) -> None:
        self.what = what
        self.on = triton_exact.wanted(device)

    def __call__(self, kernel: Callable[[], Any], torch_version: Callable[[], Any]) -> Any:
        if self.on:
            try:
                return kernel()
            except Exception as exc:
                warnings.warn(f"the one-kernel {self.what} failed ({exc}); using the torch version",
                              RuntimeWarning, stacklevel=3)  # fmt: skip
                self.on = False
        return torch_version()


class StepCache:
    """Graph steps per batch shape (B, H, W). A step is made on the `after`-th call with its shape, so
    shapes seen once (a folder of photos of many sizes, COCO evaluation) never pay a capture; at most
    `size` shapes are kept, the least recently used one is dropped with its graphs and their memory."""

    def __init__(self, after: int = 2, size: int = 4) -> None:
        self.after, self.size = after, size
        self.items: OrderedDict[tuple[int, int, int], Any] = OrderedDict()
        self._seen: OrderedDict[tuple[int, int, int], int] = OrderedDict()

    def get(self, key: tuple[int, int, int], make: Callable[[], Any], now: bool = False) -> Any:
        """The step of `key` (None while the shape is too new, or where `make` gave None); now: make it
        at once, however new the shape (a pre-capture of shapes known to come)."""
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        count = self._seen.pop(key, 0) + 1
        if count < self.after and not now:
            self._seen[key] = count
            if len(self._seen) > 256:
                self._seen.popitem(last=False)
            return None
        self.items[key] = make()
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return self.items[key]


class FrameBuffer:
    """The step input for B images of one size: a (B, H, W, 3) uint8 device tensor that images are
    copied into (host images through one pinned staging buffer and a non-blocking copy; host images in
    pinned memory already are copied from where they lie). The pose steps
    that read it hang on it (`pose_steps`, per bucket), so they go when it goes."""

    def __init__(self, batch: int, height: int, width: int, device: torch.device) -> None:
        self.images = torch.zeros((batch, height, width, 3), dtype=torch.uint8, device=device)
        self.device = device
        self.pose_steps: dict[int, Any] = {}
        self._staging: torch.Tensor | None = None

    @property
    def key(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[:3])  # type: ignore[return-value]

    def load(self, images: Sequence[Any]) -> None:
        if len(images) != self.images.shape[0]:
            raise RtposeError(f"frame buffer holds {self.images.shape[0]} images, got {len(images)}")
        host = [i for i, image in enumerate(images) if not isinstance(image, torch.Tensor)]
        for index, image in enumerate(images):
            if isinstance(image, torch.Tensor):
                self.images[index].copy_(image)
        if host:
            if self.device.type != "cuda":
                for index in host:
                    self.images[index].copy_(torch.from_numpy(np.asarray(images[index])))
                return
            staged = []
            for index in host:
                array = np.asarray(images[index])
                source = (
                    torch.from_numpy(array) if array.flags.writeable and array.flags.c_contiguous else None
                )
                if source is not None and source.is_pinned():  # e.g. a model server's registered memory
                    self.images[index].copy_(source, non_blocking=True)
                else:
                    staged.append(index)
            if not staged:
                return
            if self._staging is None:
                self._staging = torch.empty(self.images.shape, dtype=torch.uint8).pin_memory()
            # the previous call's copies are finished: every step ends with a device-to-host copy
            for index in staged:
                self._staging[index].numpy()[...] = images[index]
            if len(staged) == len(images):
                self.images.copy_(self._staging, non_blocking=True)
            else:
                for index in staged:
                    self.images[index].copy_(self._staging[index], non_blocking=True)


def uniform_key(images: Sequence[Any]) -> tuple[int, int, int] | None:
    """(B, H, W) when all images are (H, W, 3) of one size, else None (the steps need one size)."""
    if not images:
        return None
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    return (len(images), int(shape[0]), int(shape[1])) if len(shape) == 3 and shape[2] == 3 else None


@dataclass
class PersonSlots:
    """Persons of a batch in image-major order, best first: device tensors with at least `total` rows."""

    boxes: torch.Tensor  # (S, 4) float32 x1y1x2y2, image pixels
    scores: torch.Tensor  # (S,) float32
    image_index: torch.Tensor  # (S,) int64
    counts: list[int]  # persons per image

    @property
    def total(self) -> int:
        return sum(self.counts)

    def per_image(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(boxes, scores) of each image, copied out of the slots (the next replay overwrites them)."""
        total = self.total
        boxes, scores = self.boxes[:total].clone(), self.scores[:total].clone()
        return list(zip(torch.split(boxes, self.counts), torch.split(scores, self.counts), strict=True))


class DetectStep:
    """Detector stage for the images of a `FrameBuffer`: returns `PersonSlots`, or None when the eager
    path must answer (see the module docstring)."""

    def __init__(
        self,
        frames: FrameBuffer,
        network: Network,
        spec: ModelSpec,
        *,
        bucket: int,
        score_thr: float,
        iou_thr: float,
        pre_top_k: int,
        max_det: int,
        pad_value: Any,
        candidates: int = 256,
        rounds: int = 12,
    ) -> None:
        batch, height, width = frames.key
        if bucket < batch:
            raise RtposeError(f"detector bucket {bucket} is smaller than the batch of {batch} images")
        device = frames.device
        self.frames = frames
        in_h, in_w = spec.input_size
        new_h, new_w = letterbox_size((height, width), spec.input_size)
        scale = (new_w / width, new_h / height)
        mean, std = normalization_tensors(spec, device)
        network_input = torch.zeros((bucket, 3, in_h, in_w), dtype=torch.float32, device=device)
        width_kept = min(candidates, pre_top_k)
        slots = batch * min(max_det, width_kept)
        self._slot_boxes = torch.zeros((slots + 1, 4), dtype=torch.float32, device=device)  # + a spill row
        self._slot_scores = torch.zeros(slots + 1, dtype=torch.float32, device=device)
        self._slot_image = torch.zeros(slots + 1, dtype=torch.int64, device=device)
        self._info = torch.zeros(batch + 1, dtype=torch.int64, device=device)  # counts, then exact
        # where `launch` copies the counts to, without waiting (`collect` waits)
        self._info_host = self._info.cpu().pin_memory() if device.type == "cuda" else None
        self._copied = torch.cuda.Event() if device.type == "cuda" else None
        nms = OneKernel("NMS", device)

        def select(scores: torch.Tensor, boxes: torch.Tensor) -> FixedSelection:
            options = (score_thr, iou_thr, pre_top_k, max_det, candidates, rounds)
            return nms(  # the same boxes either way, in one kernel instead of ~80
                lambda: select_detections_fixed(scores, boxes, *options, one_kernel=True),
                lambda: select_detections_fixed(scores, boxes, *options),
            )

        def body() -> None:
            letterbox_normalize_torch(frames.images, spec.input_size, pad_value, mean, std,
                                      spec.channel_order, out=network_input[:batch])  # fmt: skip
            outputs = network(network_input)
            found = select(outputs["scores"][:batch], outputs["boxes"][:batch])
            boxes = unletterbox_torch(found.boxes, scale, (height, width))  # as the op-by-op detector
            keep = found.keep.reshape(-1)
            target = torch.where(keep, torch.cumsum(keep, 0) - 1, slots)  # dropped candidates: spill row
            self._slot_boxes.index_copy_(0, target, boxes.reshape(-1, 4))
            self._slot_scores.index_copy_(0, target, found.scores.reshape(-1).to(torch.float32))
            columns = found.keep.shape[1]
            images = torch.arange(batch, device=device).view(batch, 1).expand(batch, columns).reshape(-1)
            self._slot_image.index_copy_(0, target, images)
            self._info[:batch] = found.keep.sum(1)
            self._info[batch] = found.exact

        self._replay = _Replay(body, device)

    def run(self) -> PersonSlots | None:
        """The stage on the images loaded into the frame buffer already."""
        self.launch()
        return self.collect()

    def launch(self) -> None:
        """Start the stage on the images loaded already; `collect` waits for it. The host may work on
        meanwhile, but must not load other images into the frame buffer before `collect`."""
        self._replay()
        if self._info_host is not None and self._copied is not None:
            self._info_host.copy_(self._info, non_blocking=True)
            self._copied.record()

    def collect(self) -> PersonSlots | None:
        """The persons found by the launched stage (None: the eager path must answer)."""
        if self._info_host is not None and self._copied is not None:
            self._copied.synchronize()  # the one host sync of the stage
            info = self._info_host.tolist()
        else:
            info = self._info.tolist()
        if not info[-1]:
            return None
        return PersonSlots(self._slot_boxes, self._slot_scores, self._slot_image, info[:-1])


class PoseStep:
    """Pose stage for up to `bucket` persons on the images of a `FrameBuffer`: the (m, 5 + 3K) float32
    rows of `topdown._pack_rows`, on the device."""

    def __init__(
        self,
        frames: FrameBuffer,
        network: Network,
        spec: ModelSpec,
        *,
        bucket: int,
        bbox_padding: float,
    ) -> None:
        device = frames.device
        self.bucket = bucket
        input_size = spec.input_size
        mean, std = normalization_tensors(spec, device)
        pack = ImagePack.from_batch(frames.images)
        param_table = pack.param_table()
        self.boxes = torch.zeros((bucket, 4), dtype=torch.float32, device=device)
        self.boxes[:, 2:] = 1.0  # rows past n hold any valid box (their results are never read)
        self.scores = torch.zeros(bucket, dtype=torch.float32, device=device)
        self.image_index = torch.zeros(bucket, dtype=torch.int64, device=device)
        network_input = torch.zeros((bucket, 3, *input_size), dtype=torch.float32, device=device)
        self._rows: torch.Tensor | None = None  # made by the first (warm-up) run: its width is 5 + 3K
        one_kernel_crop = OneKernel("crop", device)

        def crop_inputs() -> torch.Tensor:
            """The crops of `self.boxes` into the network input; returns the crop -> image matrices."""

            def two_kernels() -> torch.Tensor:  # the same values as below, in two kernels instead of ~85
                inverse = crop_triton.crop_inverse_matrices_triton(self.boxes, input_size, bbox_padding)
                crop_triton.crop_normalize_triton(frames.images, self.image_index, inverse, input_size, mean,
                                                  std, spec.channel_order, network_input)  # fmt: skip
                return inverse

            def with_torch() -> torch.Tensor:
                matrices = boxes_to_affine_matrices(self.boxes.to(torch.float64), input_size, bbox_padding)
                inverse = invert_affine_matrices(matrices)
                crop_normalize_torch(pack, param_table[self.image_index], matrices, input_size, mean, std,
                                     spec.channel_order, out=network_input, inverse=inverse)  # fmt: skip
                return inverse

            return one_kernel_crop(two_kernels, with_torch)

        one_kernel_decode = OneKernel("SimCC decoding", device)
        ratio = float(spec.extra.get("simcc_split_ratio", 2.0))
        bins = (round(input_size[1] * ratio), round(input_size[0] * ratio))  # (x, y), as `simcc.decode`
        simcc = codec_name(spec) == "simcc"

        def rows_with_torch(outputs: dict[str, torch.Tensor], inverse: torch.Tensor) -> torch.Tensor:
            from rtpose.pipelines.topdown import _pack_rows

            keypoints, keypoint_scores = decode_pose(spec, outputs)
            keypoints = transform_points(keypoints, inverse)
            # the boxes go into the float32 rows as they came (the float64 copy only feeds the matrices)
            return _pack_rows(torch, self.boxes, self.scores, keypoints, keypoint_scores.to(torch.float32))

        def body() -> None:
            inverse = crop_inputs()
            outputs = network(network_input)
            simcc_x, simcc_y = outputs.get("simcc_x"), outputs.get("simcc_y")
            if (
                simcc
                and simcc_x is not None
                and simcc_y is not None
                and (simcc_x.shape[-1], simcc_y.shape[-1]) == bins
            ):  # else the torch decoder says what is wrong
                rows = one_kernel_decode(  # decoding, back-transform and rows: one kernel instead of ~25
                    lambda: simcc_triton.simcc_rows_triton(simcc_x, simcc_y, ratio, inverse, self.boxes,
                                                           self.scores, out=self._rows),
                    lambda: rows_with_torch(outputs, inverse),
                )  # fmt: skip
            else:
                rows = rows_with_torch(outputs, inverse)
            if self._rows is None:
                self._rows = torch.empty_like(rows)
            if rows is not self._rows:
                self._rows.copy_(rows)

        self._replay = _Replay(body, device)

    def run(self, boxes: torch.Tensor, scores: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Rows (m, 5 + 3K) for m <= bucket persons given as device tensors (boxes (m, 4) float32 in image
        pixels, scores (m,), image_index (m,) into the frame buffer, loaded already). The rows are a view
        of the step's output buffer: copy them before the next replay."""
        m = int(boxes.shape[0])
        if m > self.bucket:
            raise RtposeError(f"pose step of bucket {self.bucket} got {m} persons")
        self.boxes[:m].copy_(boxes)
        self.scores[:m].copy_(scores)
        self.image_index[:m].copy_(image_index)
        self._replay()
        assert self._rows is not None
        return self._rows[:m]


def step_bucket(buckets: tuple[int, ...] | None, n: int) -> int | None:
    """The smallest bucket holding n (n itself when any size goes; None when none is large enough)."""
    if buckets is None:
        return n
    return next((b for b in buckets if b >= n), None)
