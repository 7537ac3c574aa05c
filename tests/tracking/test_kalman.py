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
