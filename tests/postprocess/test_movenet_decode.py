"""MoveNet decoder: conventions on synthetic heads, NumPy == torch, clear errors.

Parity with the TFLite graph's own decoding on real heads is in tests/models/test_movenet.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtpose.errors import RtposeError
from rtpose.models.spec import ModelSpec, get_spec
from rtpose.postprocess.movenet import decode
from rtpose.postprocess.pose_codecs import decode_pose

K = 17


def empty_heads(n: int = 1) -> dict[str, np.ndarray]:
    return {
        "heatmaps": np.full((n, K, 48, 48), 0.01, np.float32),
        "centers": np.full((n, 1, 48, 48), 0.01, np.float32),
        "regression": np.zeros((n, 2 * K, 48, 48), np.float32),
        "offsets": np.zeros((n, 2 * K, 48, 48), np.float32),
    }


def random_heads(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "heatmaps": rng.random((n, K, 48, 48), dtype=np.float32),
        "centers": rng.random((n, 1, 48, 48), dtype=np.float32),
        "regression": rng.normal(0, 8, (n, 2 * K, 48, 48)).astype(np.float32),
        "offsets": rng.normal(0, 1, (n, 2 * K, 48, 48)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return get_spec("movenet-lightning")


@pytest.mark.parametrize("quantized", [False, True])
def test_known_person_decodes_to_known_pixels(spec: ModelSpec, quantized: bool) -> None:
    heads = empty_heads()
    heads["centers"][0, 0, 22, 25] = 0.9
    # keypoint 5 regressed from the centre to about (y 10, x 30), peak there, offset (+0.25, -0.5)
    heads["regression"][0, 10, 22, 25] = -12.0
    heads["regression"][0, 11, 22, 25] = 5.0
    heads["heatmaps"][0, 5, 10, 30] = 0.8
    heads["offsets"][0, 10, 10, 30] = 0.25
    heads["offsets"][0, 11, 10, 30] = -0.5
    keypoints, scores = decode(heads, spec, quantized=quantized)
    assert keypoints.shape == (1, K, 2) and scores.shape == (1, K)
    # (x, y) in pixels of the 192x192 input: (cell + offset) / 48 * 192; the int8 grid costs < 1 px
    np.testing.assert_allclose(
        keypoints[0, 5], [(30 - 0.5) * 4, (10 + 0.25) * 4], atol=0.8 if quantized else 1e-4
    )
    assert scores[0, 5] == pytest.approx(0.8, abs=0.005)


def test_centre_prior_prefers_the_middle(spec: ModelSpec) -> None:
    heads = empty_heads()
    heads["centers"][0, 0, 5, 5] = 0.9  # a slightly stronger person in the corner
    heads["centers"][0, 0, 23, 24] = 0.8  # the person the crop was made for
    heads["regression"][0, 0, 5, 5] = 100.0  # would send keypoint 0 off the map
    heads["heatmaps"][0, 0, 23, 24] = 0.5
    keypoints, _ = decode(heads, spec, quantized=False)
    np.testing.assert_allclose(keypoints[0, 0], [24 * 4, 23 * 4])


def test_heatmap_weighting_prefers_the_regressed_position(spec: ModelSpec) -> None:
    heads = empty_heads()
    heads["centers"][0, 0, 24, 24] = 0.9
    heads["regression"][0, 2 * 3, 24, 24] = 10.0  # keypoint 3 near (34, 24)
    heads["heatmaps"][0, 3, 34, 24] = 0.5
    heads["heatmaps"][0, 3, 2, 2] = 0.7  # a stronger but far-away peak
    keypoints, _ = decode(heads, spec, quantized=False)
    np.testing.assert_allclose(keypoints[0, 3], [24 * 4, 34 * 4])


@pytest.mark.parametrize("quantized", [False, True])
def test_numpy_and_torch_agree_exactly(spec: ModelSpec, quantized: bool) -> None:
    heads = random_heads(3, seed=1)
    kp_np, sc_np = decode(heads, spec, quantized=quantized)
    kp_t, sc_t = decode({k: torch.from_numpy(v) for k, v in heads.items()}, spec, quantized=quantized)
    assert isinstance(kp_t, torch.Tensor) and kp_t.dtype == torch.float32
    np.testing.assert_array_equal(kp_t.numpy(), kp_np)
    np.testing.assert_array_equal(sc_t.numpy(), sc_np)


def test_quantised_decoding_is_the_default_for_the_int8_model(spec: ModelSpec) -> None:
    heads = random_heads(2, seed=2)
    default = decode_pose(spec, heads)
    quantised = decode(heads, spec, quantized=True)
    plain = decode(heads, spec, quantized=False)
    np.testing.assert_array_equal(default[0], quantised[0])
    # output quantisation: coordinates on a grid of 0.004097 x 192 px
    steps = quantised[0] / np.float32(192 * 0.004096854)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert not np.array_equal(plain[0], quantised[0])


def test_bad_outputs_are_clear_errors(spec: ModelSpec) -> None:
    heads = empty_heads()
    with pytest.raises(RtposeError, match="missing"):
        decode({k: v for k, v in heads.items() if k != "offsets"}, spec)
    bad = dict(heads, regression=np.zeros((1, 10, 48, 48), np.float32))
    with pytest.raises(RtposeError, match="regression"):
        decode(bad, spec)
    with pytest.raises(RtposeError, match="heatmaps"):
        decode(dict(heads, heatmaps=np.zeros((1, 5, 48, 48), np.float32)), spec)
    mixed = dict(heads, centers=torch.from_numpy(heads["centers"]))
    with pytest.raises(RtposeError, match="all NumPy"):
        decode(mixed, spec)


@pytest.mark.gpu
@pytest.mark.parametrize("quantized", [False, True])
def test_cuda_matches_numpy(spec: ModelSpec, quantized: bool) -> None:
    heads = random_heads(4, seed=3)
    kp_np, sc_np = decode(heads, spec, quantized=quantized)
    kp_t, sc_t = decode({k: torch.from_numpy(v).cuda() for k, v in heads.items()}, spec, quantized=quantized)
    assert kp_t.device.type == "cuda"
    np.testing.assert_array_equal(kp_t.cpu().numpy(), kp_np)
    np.testing.assert_array_equal(sc_t.cpu().numpy(), sc_np)
