"""The one-kernel crop (`preprocess.crop_triton`) gives exactly the values of `crop_normalize_torch`:
on the GPU (libdevice round-to-nearest operations) and in Triton's CPU interpreter."""

from __future__ import annotations

import pytest
import torch
from tests.triton_interpreter import needs_triton, run_in_interpreter

from rtpose.errors import RtposeError
from rtpose.preprocess.affine import boxes_to_affine_matrices, invert_affine_matrices
from rtpose.preprocess.device_batch import ImagePack, crop_normalize_torch

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
#: boxes inside, across the border, outside, tiny, whole-image: every kind of neighbour validity
BOXES = [
    [5, 5, 40, 45],
    [-10, -5, 30, 60],
    [50, 30, 90, 70],
    [10, 10, 11, 12],
    [0, 0, 70, 50],
    [200, 200, 260, 240],
]


def _compare(device: str, frames_shape: tuple[int, ...], crops: int, out_size: tuple[int, int]) -> None:
    from rtpose.preprocess.crop_triton import crop_normalize_triton

    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, frames_shape, dtype=torch.uint8, generator=generator).to(device)
    height, width = frames_shape[1:3]
    corners = torch.rand((crops, 2), generator=generator, dtype=torch.float64) * torch.tensor([width, height])
    sizes = torch.rand((crops, 2), generator=generator, dtype=torch.float64) * torch.tensor([width, height])
    boxes = torch.cat(
        [torch.tensor(BOXES, dtype=torch.float64), torch.cat([corners - 20, corners + sizes], 1)]
    )
    boxes = boxes.to(device)
    index = torch.randint(0, frames_shape[0], (len(boxes),), generator=generator).to(device)
    matrices = boxes_to_affine_matrices(boxes, out_size, 1.25)
    inverse = invert_affine_matrices(matrices)
    mean, std = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)
    pack = ImagePack.from_batch(frames)
    for order in ("RGB", "BGR"):
        want = crop_normalize_torch(pack, pack.param_table()[index], matrices, out_size, mean, std, order,
                                    inverse=inverse)  # fmt: skip
        out = torch.empty((len(boxes), 3, *out_size), device=device)
        got = crop_normalize_triton(frames, index, inverse, out_size, mean, std, order, out)
        assert got is out
        differ = (got != want).sum().item()
        assert differ == 0, (
            f"{order}: {differ} of {want.numel()} values differ (max {(got - want).abs().max()})"
        )


def _compare_inverse(device: str) -> None:
    """The crop matrices' inverses from boxes in one kernel equal the torch functions' values bit for bit."""
    from rtpose.preprocess.crop_triton import crop_inverse_matrices_triton

    generator = torch.Generator().manual_seed(1)
    corners = torch.rand((500, 2), generator=generator) * 1400 - 60
    sizes = torch.rand((500, 2), generator=generator) ** 3 * 700 + 0.5  # wide, tall, tiny and large boxes
    boxes = torch.cat(
        [torch.tensor([[0.0, 0.0, 1.0, 1.0], *BOXES]), torch.cat([corners, corners + sizes], 1)]
    )
    boxes = boxes.to(torch.float32).to(device)
    for out_size, padding in (((256, 192), 1.25), ((192, 192), 1.0), ((384, 288), 1.25)):
        want = invert_affine_matrices(boxes_to_affine_matrices(boxes.to(torch.float64), out_size, padding))
        got = crop_inverse_matrices_triton(boxes, out_size, padding)
        assert got.dtype == torch.float64
        differ = (got != want).sum().item()  # -0.0 == 0.0 here; the signs are compared below
        assert differ == 0, f"{differ} of {want.numel()} values differ (max {(got - want).abs().max()})"
        assert torch.equal(torch.signbit(got), torch.signbit(want))


@pytest.mark.gpu
def test_one_kernel_crops_equal_the_torch_crops_on_the_gpu() -> None:
    _compare("cuda", (4, 720, 1280, 3), 60, (256, 192))
    _compare("cuda", (2, 50, 70, 3), 10, (32, 24))
    _compare_inverse("cuda")


@needs_triton
def test_one_kernel_crops_equal_the_torch_crops_in_the_interpreter() -> None:
    code = (
        "from tests.preprocess.test_crop_triton import _compare, _compare_inverse; "
        "_compare('cpu', (3, 50, 70, 3), 5, (32, 24)); _compare_inverse('cpu')"
    )
    run_in_interpreter(code)


@needs_triton
def test_wrong_buffers_are_refused() -> None:
    from rtpose.preprocess.crop_triton import crop_normalize_triton

    frames = torch.zeros((1, 10, 10, 3), dtype=torch.uint8)
    inverse = torch.zeros((2, 2, 3))
    index = torch.zeros(2, dtype=torch.int64)
    mean = std = torch.ones(3)
    with pytest.raises(RtposeError, match="does not fit"):
        crop_normalize_triton(frames, index, inverse, (4, 4), mean, std, "RGB", torch.empty((2, 3, 4, 5)))
    with pytest.raises(RtposeError, match="uint8 frames"):
        crop_normalize_triton(
            frames.float(), index, inverse, (4, 4), mean, std, "RGB", torch.empty((2, 3, 4, 4))
        )
    with pytest.raises(RtposeError, match="channel order"):
        crop_normalize_triton(frames, index, inverse, (4, 4), mean, std, "YUV", torch.empty((2, 3, 4, 4)))
