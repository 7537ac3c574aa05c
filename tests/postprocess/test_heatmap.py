"""Heatmap decoding: resize matches OpenCV/torch, refinements recover sub-pixel peaks, torch == NumPy."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtpose.errors import RtposeError
from rtpose.postprocess.heatmap import (
    decode,
    decode_heatmaps,
    get_heatmap_maximum,
    refine_dark,
    refine_quadratic,
    resize_heatmaps,
)

torch.set_num_threads(1)


def _gaussian_maps(centres: np.ndarray, height: int = 64, width: int = 48, sigma: float = 2.0) -> np.ndarray:
    """(N, K, H, W) maps with one Gaussian per map at float (x, y) centres (N, K, 2)."""
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = gx - centres[..., 0, None, None]
    dy = gy - centres[..., 1, None, None]
    return np.exp(-(dx**2 + dy**2) / (2 * sigma**2)).astype(np.float32)


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.uniform([4, 4], [44, 60], size=(8, 17, 2)).astype(np.float32)
    maps = _gaussian_maps(centres) * rng.uniform(0.3, 1.0, size=(8, 17, 1, 1)).astype(np.float32)
    return maps + rng.normal(0, 0.002, maps.shape).astype(np.float32), centres


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resize_matches_torch_and_opencv(mode: str) -> None:
    maps = np.random.default_rng(1).random((2, 3, 16, 12), dtype=np.float32)
    ours = resize_heatmaps(maps, (64, 48), mode)
    theirs = F.interpolate(torch.from_numpy(maps), size=(64, 48), mode=mode, align_corners=False).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    flag = cv2.INTER_LINEAR if mode == "bilinear" else cv2.INTER_CUBIC
    np.testing.assert_allclose(ours[0, 0], cv2.resize(maps[0, 0], (48, 64), interpolation=flag), atol=1e-4)
    np.testing.assert_allclose(
        resize_heatmaps(torch.from_numpy(maps), (64, 48), mode).numpy(), ours, atol=1e-5
    )


def test_maximum_and_refinements_recover_subpixel_peaks(batch) -> None:
    maps, centres = batch
    locations, values = get_heatmap_maximum(maps)
    assert locations.shape == (8, 17, 2) and values.shape == (8, 17)
    np.testing.assert_array_equal(values, maps.reshape(8, 17, -1).max(-1))
    error_integer = np.abs(locations - centres).mean()
    error_quadratic = np.abs(refine_quadratic(maps, locations) - centres).mean()
    error_dark = np.abs(refine_dark(maps, locations, kernel_size=11) - centres).mean()
    assert error_integer > 0.2  # uniform sub-pixel offsets: ~0.25 on average
    assert error_quadratic < error_integer
    assert error_dark < 0.05 < error_quadratic


@pytest.mark.parametrize("refine", [None, "quadratic", "dark"])
@pytest.mark.parametrize("resize_to", [None, (256, 192)])
def test_torch_cpu_matches_numpy(batch, refine, resize_to) -> None:
    maps, _ = batch
    ref_kp, ref_scores = decode_heatmaps(maps, stride=4, refine=refine, resize_to=resize_to)
    kp, scores = decode_heatmaps(torch.from_numpy(maps), stride=4, refine=refine, resize_to=resize_to)
    assert isinstance(kp, torch.Tensor)
    np.testing.assert_allclose(kp.numpy(), ref_kp, atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("refine", [None, "quadratic", "dark"])
@pytest.mark.parametrize("resize_to", [None, (256, 192)])
def test_cuda_matches_numpy(batch, refine, resize_to) -> None:
    maps, _ = batch
    ref_kp, ref_scores = decode_heatmaps(maps, stride=4, refine=refine, resize_to=resize_to)
    kp, scores = decode_heatmaps(torch.from_numpy(maps).cuda(), stride=4, refine=refine, resize_to=resize_to)
    assert kp.is_cuda
    np.testing.assert_allclose(kp.cpu().numpy(), ref_kp, atol=1e-3)
    np.testing.assert_allclose(scores.cpu().numpy(), ref_scores, atol=1e-5)


def test_resized_and_native_paths_agree_in_input_pixels(batch) -> None:
    maps, centres = batch
    truth = centres * 4  # MMPose convention: heatmap cell j is input pixel j * stride
    native, _ = decode_heatmaps(maps, stride=4, refine="dark")
    resized, _ = decode_heatmaps(maps, stride=4, refine="dark", resize_to=(256, 192))
    assert np.abs(native - truth).mean() < 0.2
    assert np.abs(resized - truth).mean() < 0.5


def test_codec_entry_point_reads_the_spec() -> None:
    centres = np.array([[[10.3, 20.6], [30.0, 40.2]]], np.float32)
    maps = _gaussian_maps(centres)
    spec = SimpleNamespace(name="fake", input_size=(256, 192), extra={"heatmap_stride": 4, "refine": "dark"})
    keypoints, scores = decode({"heatmaps": maps}, spec)
    np.testing.assert_allclose(keypoints, centres * 4, atol=0.4)
    np.testing.assert_allclose(scores, 1.0, atol=0.1)
    with pytest.raises(RtposeError, match="heatmap_stride"):
        decode({"heatmaps": maps}, SimpleNamespace(name="fake", input_size=(256, 192), extra={}))
    with pytest.raises(RtposeError, match="not among"):
        decode({"a": maps, "b": maps}, spec)


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(RtposeError, match="N, K, H, W"):
        decode_heatmaps(np.zeros((17, 64, 48)), stride=4)
    with pytest.raises(RtposeError, match="refinement"):
        decode_heatmaps(np.zeros((1, 17, 64, 48)), stride=4, refine="taylor")
    with pytest.raises(RtposeError, match="NumPy array or a torch tensor"):
        get_heatmap_maximum([[1.0]])
    with pytest.raises(RtposeError, match="resize mode"):
        resize_heatmaps(np.zeros((1, 2, 4, 4)), (8, 8), "nearest")
