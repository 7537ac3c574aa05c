"""SimCC decoding (NumPy and torch) and the codec registry."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rtpose.errors import RtposeError
from rtpose.postprocess.pose_codecs import CODEC_MODULES, decode_pose
from rtpose.postprocess.simcc import decode_simcc, get_simcc_maximum

SPEC = SimpleNamespace(
    name="fake-rtmpose", input_size=(256, 192), extra={"codec": "simcc", "simcc_split_ratio": 2.0}
)


@pytest.fixture(scope="module")
def official_logits(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = models_dir / "rtmpose_official_arch"
    return np.load(folder / "rtmpose-t_simcc_x.npy"), np.load(folder / "rtmpose-t_simcc_y.npy")


def _loop_reference(simcc_x: np.ndarray, simcc_y: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Plain Python, one keypoint at a time: the definition written out."""
    n, k, _ = simcc_x.shape
    keypoints = np.zeros((n, k, 2))
    scores = np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            xs, ys = list(simcc_x[i, j]), list(simcc_y[i, j])
            keypoints[i, j] = (xs.index(max(xs)) / ratio, ys.index(max(ys)) / ratio)
            scores[i, j] = min(max(xs), max(ys))
    return keypoints, scores


def test_numpy_and_torch_match_the_definition_on_official_logits(official_logits) -> None:
    simcc_x, simcc_y = official_logits
    assert simcc_x.shape == (4, 17, 384) and simcc_y.shape == (4, 17, 512)
    ref_kpts, ref_scores = _loop_reference(simcc_x, simcc_y, 2.0)
    kpts, scores = decode_simcc(simcc_x, simcc_y, 2.0)
    assert isinstance(kpts, np.ndarray) and kpts.shape == (4, 17, 2) and scores.shape == (4, 17)
    np.testing.assert_array_equal(kpts, ref_kpts)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
    kpts_t, scores_t = decode_simcc(torch.from_numpy(simcc_x), torch.from_numpy(simcc_y), 2.0)
    assert isinstance(kpts_t, torch.Tensor)
    np.testing.assert_array_equal(kpts_t.numpy(), kpts)
    np.testing.assert_array_equal(scores_t.numpy(), scores)


def test_known_peaks_and_half_pixel_bins() -> None:
    simcc_x = np.full((1, 2, 384), -1.0, np.float32)
    simcc_y = np.full((1, 2, 512), -1.0, np.float32)
    simcc_x[0, 0, 101], simcc_y[0, 0, 300] = 3.0, 2.0  # keypoint 0 at (50.5, 150), score min(3, 2)
    simcc_x[0, 1, 0], simcc_y[0, 1, 511] = 0.5, 4.0  # keypoint 1 at (0, 255.5), score 0.5
    kpts, scores = decode_simcc(simcc_x, simcc_y, 2.0)
    np.testing.assert_array_equal(kpts[0], [[50.5, 150.0], [0.0, 255.5]])
    np.testing.assert_array_equal(scores[0], [2.0, 0.5])


def test_nonpositive_scores_keep_location_unless_mmpose_mode() -> None:
    simcc_x = np.full((1, 1, 8), -5.0, np.float32)
    simcc_y = np.full((1, 1, 8), -5.0, np.float32)
    simcc_x[0, 0, 6], simcc_y[0, 0, 2] = -0.5, 1.0
    locs, scores = get_simcc_maximum(simcc_x, simcc_y)
    np.testing.assert_array_equal(locs[0, 0], [6, 2])
    assert scores[0, 0] == -0.5
    for xs, ys in ((simcc_x, simcc_y), (torch.from_numpy(simcc_x), torch.from_numpy(simcc_y))):
        locs, scores = get_simcc_maximum(xs, ys, mmpose_invalid=True)
        np.testing.assert_array_equal(np.asarray(locs)[0, 0], [-1, -1])
        assert float(scores[0, 0]) == -0.5


def test_ties_pick_the_first_bin_in_both_kinds() -> None:
    simcc_x = np.zeros((1, 1, 10), np.float32)
    simcc_x[0, 0, [3, 7]] = 1.0
    simcc_y = simcc_x.copy()
    kpts, _ = decode_simcc(simcc_x, simcc_y, 1.0)
    kpts_t, _ = decode_simcc(torch.from_numpy(simcc_x), torch.from_numpy(simcc_y), 1.0)
    np.testing.assert_array_equal(kpts[0, 0], [3, 3])
    np.testing.assert_array_equal(kpts_t.numpy(), kpts)


def test_decode_pose_dispatches_on_the_spec_codec(official_logits) -> None:
    simcc_x, simcc_y = official_logits
    kpts, scores = decode_pose(SPEC, {"simcc_x": simcc_x, "simcc_y": simcc_y})
    ref_kpts, ref_scores = decode_simcc(simcc_x, simcc_y, 2.0)
    np.testing.assert_array_equal(kpts, ref_kpts)
    np.testing.assert_array_equal(scores, ref_scores)
    kpts_t, _ = decode_pose(
        SPEC, {"simcc_x": torch.from_numpy(simcc_x), "simcc_y": torch.from_numpy(simcc_y)}
    )
    assert isinstance(kpts_t, torch.Tensor)


def test_decode_pose_clear_errors(official_logits, monkeypatch: pytest.MonkeyPatch) -> None:
    simcc_x, simcc_y = official_logits
    with pytest.raises(RtposeError, match="missing"):
        decode_pose(SPEC, {"simcc_x": simcc_x})
    wrong_size = SimpleNamespace(name="other", input_size=(384, 288), extra={"codec": "simcc"})
    with pytest.raises(RtposeError, match="needs 576 and 768"):
        decode_pose(wrong_size, {"simcc_x": simcc_x, "simcc_y": simcc_y})
    with pytest.raises(RtposeError, match="no decoder registered for codec 'nope'"):
        decode_pose(SimpleNamespace(name="x", extra={"codec": "nope"}), {})
    with pytest.raises(RtposeError, match="names no codec"):
        decode_pose(SimpleNamespace(name="x", extra={}), {})
    with pytest.raises(RtposeError, match=r"SimCC outputs must be \(N, K, bins\)"):
        decode_simcc(simcc_x[0], simcc_y[0])
    monkeypatch.setitem(CODEC_MODULES, "broken-test-codec", "rtpose.no_such_module_for_test")
    with pytest.raises(RtposeError, match="decoder module of codec 'broken-test-codec'"):
        decode_pose(SimpleNamespace(name="x", extra={"codec": "broken-test-codec"}), {})


@pytest.mark.gpu
def test_cuda_decode_matches_numpy(official_logits) -> None:
    simcc_x, simcc_y = official_logits
    kpts, scores = decode_simcc(simcc_x, simcc_y, 2.0)
    kpts_t, scores_t = decode_simcc(torch.from_numpy(simcc_x).cuda(), torch.from_numpy(simcc_y).cuda(), 2.0)
    assert kpts_t.is_cuda
    np.testing.assert_array_equal(kpts_t.cpu().numpy(), kpts)
    np.testing.assert_array_equal(scores_t.cpu().numpy(), scores)
