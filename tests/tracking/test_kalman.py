"""The box Kalman filter: conversions, learning a constant velocity, extrapolating through a gap, and its
2x2-block arithmetic against the textbook 8x8 matrix form."""

from __future__ import annotations

import numpy as np

from rtpose.tracking.kalman import BoxKalmanFilter, covariance_matrices, xyah_to_xyxy, xyxy_to_xyah


def test_box_conversions_round_trip() -> None:
    boxes = np.array([[10, 20, 50, 120], [0, 0, 1, 3]], np.float64)
    xyah = xyxy_to_xyah(boxes)
    np.testing.assert_allclose(xyah[0], [30, 70, 0.4, 100])
    np.testing.assert_allclose(xyah_to_xyxy(xyah), boxes)


def test_filter_learns_velocity_and_extrapolates_through_a_gap() -> None:
    kalman = BoxKalmanFilter()
    rng = np.random.default_rng(0)

    def truth(t: int) -> np.ndarray:
        return np.array([100 + 3.0 * t, 50 - 1.0 * t, 0.5, 80 + 0.2 * t])

    mean, cov = kalman.initiate(truth(0))
    for t in range(1, 40):
        mean, cov = (v[0] for v in kalman.predict_many(mean[None], cov[None]))
        noisy = truth(t) + rng.normal(0, [1.0, 1.0, 0.0, 0.5])
        mean, cov = kalman.update(mean, cov, noisy)
    np.testing.assert_allclose(mean[4:6], [3.0, -1.0], atol=0.3)
    for _ in range(10):  # 10 frames without measurements
        mean, cov = (v[0] for v in kalman.predict_many(mean[None], cov[None]))
    np.testing.assert_allclose(mean[:2], truth(49)[:2], atol=4.0)
    assert np.all(np.linalg.eigvalsh(covariance_matrices(cov[None])[0]) > 0)  # still a valid covariance


def test_predict_many_equals_one_by_one() -> None:
    kalman = BoxKalmanFilter()
    states = [kalman.initiate(np.array([10.0 * i, 5.0, 0.5, 40.0 + i])) for i in range(3)]
    means = np.stack([m for m, _ in states])
    means[:, 4] = [1.0, -2.0, 0.5]
    covs = np.stack([c for _, c in states])
    together = kalman.predict_many(means, covs)
    for i in range(3):
        alone = kalman.predict_many(means[i : i + 1], covs[i : i + 1])
        np.testing.assert_allclose(together[0][i], alone[0][0])
        np.testing.assert_allclose(together[1][i], alone[1][0])
    assert kalman.predict_many(np.zeros((0, 8)), np.zeros((0, 4, 3)))[0].shape == (0, 8)


_TRANSITION = np.block([[np.eye(4), np.eye(4)], [np.zeros((4, 4)), np.eye(4)]])
_OBSERVATION = np.eye(4, 8)


def _noise_std(height: float, fraction: float, aspect_std: float) -> np.ndarray:
    return np.array([fraction * height, fraction * height, aspect_std, fraction * height])


def _reference_predict(kalman: BoxKalmanFilter, mean: np.ndarray, covariance: np.ndarray):
    """One track's prediction in textbook 8x8 form (full covariance)."""
    noise = np.concatenate(
        [_noise_std(mean[3], kalman.std_position, 1e-2), _noise_std(mean[3], kalman.std_velocity, 1e-5)]
    )
    return _TRANSITION @ mean, _TRANSITION @ covariance @ _TRANSITION.T + np.diag(noise**2)


def _reference_update(
    kalman: BoxKalmanFilter, mean: np.ndarray, covariance: np.ndarray, measurement: np.ndarray
):
    """One track's correction in textbook 8x8 form (full covariance)."""
    std = _noise_std(mean[3], kalman.std_position, 1e-2)
    projected_cov = _OBSERVATION @ covariance @ _OBSERVATION.T + np.diag(std**2)
    gain = covariance @ _OBSERVATION.T @ np.linalg.inv(projected_cov)
    new_mean = mean + gain @ (measurement - _OBSERVATION @ mean)
    new_cov = covariance - gain @ projected_cov @ gain.T
    return new_mean, (new_cov + new_cov.T) / 2


def test_block_filter_equals_the_textbook_matrix_form() -> None:
    """Tracks of different ages, predicted and corrected by the 2x2-block filter (batched, and one by one)
    and by the 8x8 textbook equations: the same means and covariances up to rounding."""
    kalman = BoxKalmanFilter()
    rng = np.random.default_rng(1)
    means, blocks, full, measured = [], [], [], []
    for _ in range(12):
        mean, block = kalman.initiate(rng.uniform([0, 0, 0.2, 30], [1000, 700, 0.8, 300]))
        cov = covariance_matrices(block[None])[0]
        initial_std = np.concatenate(
            [2 * _noise_std(mean[3], 1 / 20, 1e-2), 10 * _noise_std(mean[3], 1 / 160, 1e-5)]
        )
        np.testing.assert_allclose(np.diag(cov), initial_std**2)
        reference = (mean, cov)
        for _ in range(int(rng.integers(0, 6))):  # tracks of different ages: different covariances
            mean, block = (v[0] for v in kalman.predict_many(mean[None], block[None]))
            reference = _reference_predict(kalman, *reference)
            np.testing.assert_allclose(mean, reference[0], rtol=1e-12)
            np.testing.assert_allclose(
                covariance_matrices(block[None])[0], reference[1], rtol=1e-12, atol=1e-12
            )
            measurement = mean[:4] + rng.normal(0, 2, 4)
            mean, block = kalman.update(mean, block, measurement)
            reference = _reference_update(kalman, *reference, measurement)
        means.append(mean)
        blocks.append(block)
        full.append(reference[1])
        measured.append(mean[:4] + rng.normal(0, 3, 4))
    got_means, got_blocks = kalman.update_many(np.array(means), np.array(blocks), np.array(measured))
    got_full = covariance_matrices(got_blocks)
    for i in range(len(means)):
        want_mean, want_cov = _reference_update(kalman, means[i], full[i], measured[i])
        np.testing.assert_allclose(got_means[i], want_mean, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(got_full[i], want_cov, rtol=1e-10, atol=1e-10)
        one_mean, one_block = kalman.update(means[i], blocks[i], measured[i])
        np.testing.assert_array_equal(one_mean, got_means[i])
        np.testing.assert_array_equal(one_block, got_blocks[i])
    empty = kalman.update_many(np.zeros((0, 8)), np.zeros((0, 4, 3)), np.zeros((0, 4)))
    assert empty[0].shape == (0, 8) and empty[1].shape == (0, 4, 3)
