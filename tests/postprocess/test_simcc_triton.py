"""SimCC decoding + back-transform + row packing in one kernel (`postprocess.simcc_triton`) gives exactly
the rows of the torch functions it replaces: on the GPU and in Triton's CPU interpreter."""

from __future__ import annotations

import pytest
import torch
from tests.triton_interpreter import needs_triton, run_in_interpreter

from rtpose.errors import RtposeError
from rtpose.pipelines.topdown import _pack_rows
from rtpose.postprocess.simcc import decode_simcc
from rtpose.preprocess.affine import boxes_to_affine_matrices, invert_affine_matrices, transform_points


def _compare(device: str) -> None:
    from rtpose.postprocess.simcc_triton import simcc_rows_triton

    generator = torch.Generator().manual_seed(0)
    n, k = 13, 17
    simcc_x = torch.randn((n, k, 384), generator=generator)
    simcc_y = torch.randn((n, k, 512), generator=generator)
    simcc_x[:4] = torch.round(simcc_x[:4])  # few distinct values: ties, where the first bin must win
    simcc_y[:4] = torch.round(simcc_y[:4])
    corners = torch.rand((n, 2), generator=generator) * 1200
    boxes = torch.cat([corners, corners + torch.rand((n, 2), generator=generator) * 400 + 1], 1)
    scores = torch.rand(n, generator=generator)
    simcc_x, simcc_y, boxes, scores = (t.to(device) for t in (simcc_x, simcc_y, boxes, scores))
    inverse = invert_affine_matrices(boxes_to_affine_matrices(boxes.to(torch.float64), (256, 192), 1.25))
    keypoints, keypoint_scores = decode_simcc(simcc_x, simcc_y, 2.0)
    want = _pack_rows(torch, boxes, scores, transform_points(keypoints, inverse), keypoint_scores)
    got = simcc_rows_triton(simcc_x, simcc_y, 2.0, inverse, boxes, scores)
    differ = (got != want).sum().item()
    assert differ == 0, f"{differ} of {want.numel()} values differ (max {(got - want).abs().max()})"


@pytest.mark.gpu
def test_one_kernel_simcc_rows_equal_the_torch_rows_on_the_gpu() -> None:
    _compare("cuda")


@needs_triton
def test_one_kernel_simcc_rows_equal_the_torch_rows_in_the_interpreter() -> None:
    code = "from tests.postprocess.test_simcc_triton import _compare; _compare('cpu')"
    run_in_interpreter(code)


@needs_triton
def test_wrong_inputs_are_refused() -> None:
    from rtpose.postprocess.simcc_triton import simcc_rows_triton

    x, y = torch.zeros((2, 17, 384)), torch.zeros((2, 17, 512))
    with pytest.raises(RtposeError, match="float64"):
        simcc_rows_triton(x, y, 2.0, torch.zeros((2, 2, 3)), torch.zeros((2, 4)), torch.zeros(2))
    with pytest.raises(RtposeError, match="does not fit"):
        simcc_rows_triton(x, y, 2.0, torch.zeros((2, 2, 3), dtype=torch.float64), torch.zeros((2, 4)),
                          torch.zeros(2), out=torch.zeros((2, 7)))  # fmt: skip
