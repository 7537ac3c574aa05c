"""The box Kalman filter: conversions, learning a constant velocity, extrapolating through a gap."""

from __future__ import annotations

import numpy as np

from rtpose.tracking.kalman import BoxKalmanFilter, xyah_to_xyxy, xyxy_to_xyah


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
    assert np.all(np.linalg.eigvalsh(cov) > 0)  # still a valid covariance


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
    assert kalman.predict_many(np.zeros((0, 8)), np.zeros((0, 8, 8)))[0].shape == (0, 8)


def _reference_update(
    kalman: BoxKalmanFilter, mean: np.ndarray, covariance: np.ndarray, measurement: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One track's correction in textbook matrix form (the filter's former per-track code)."""
    std = kalman._position_std(np.array([mean[3]]))[0]
    projected_cov = kalman.observation @ covariance @ kalman.observation.T + np.diag(std**2)
    gain = np.linalg.solve(projected_cov, (covariance @ kalman.observation.T).T).T
    new_mean = mean + gain @ (measurement - kalman.observation @ mean)
    new_cov = covariance - gain @ projected_cov @ gain.T
    return new_mean, (new_cov + new_cov.T) / 2


def test_update_many_equals_per_track_textbook_update() -> None:
    kalman = BoxKalmanFilter()
    rng = np.random.default_rng(1)
    means, covs, measured = [], [], []
    for _ in range(12):
        mean, cov = kalman.initiate(rng.uniform([0, 0, 0.2, 30], [1000, 700, 0.8, 300]))
        for _ in range(int(rng.integers(0, 6))):  # tracks of different ages: different covariances
            mean, cov = (v[0] for v in kalman.predict_many(mean[None], cov[None]))
            mean, cov = _reference_update(kalman, mean, cov, mean[:4] + rng.normal(0, 2, 4))
        means.append(mean)
        covs.append(cov)
        measured.append(mean[:4] + rng.normal(0, 3, 4))
    got_means, got_covs = kalman.update_many(np.array(means), np.array(covs), np.array(measured))
    for i in range(len(means)):
        want_mean, want_cov = _reference_update(kalman, means[i], covs[i], measured[i])
        np.testing.assert_allclose(got_means[i], want_mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_covs[i], want_cov, rtol=1e-12, atol=1e-12)
        one_mean, one_cov = kalman.update(means[i], covs[i], measured[i])
        np.testing.assert_array_equal(one_mean, got_means[i])
        np.testing.assert_array_equal(one_cov, got_covs[i])
    empty = kalman.update_many(np.zeros((0, 8)), np.zeros((0, 8, 8)), np.zeros((0, 4)))
    assert empty[0].shape == (0, 8) and empty[1].shape == (0, 8, 8)
