"""Constant-velocity Kalman filter on person boxes (the motion model of SORT / ByteTrack).

State (8,): box centre x, y, aspect ratio w/h, height h, and their velocities per frame. Process and
measurement noise scale with the box height, so a far (small) person and a near (large) one are
tracked with the same relative uncertainty. Tracks are predicted together (`predict_many`) once per
frame; updates are per matched track.
"""

from __future__ import annotations

import numpy as np

_DIM = 4


def xyxy_to_xyah(box: np.ndarray) -> np.ndarray:
    """(..., 4) x1y1x2y2 -> (..., 4) centre x, centre y, aspect w/h, height."""
    box = np.asarray(box, dtype=np.float64)
    width = np.maximum(box[..., 2] - box[..., 0], 1e-6)
    height = np.maximum(box[..., 3] - box[..., 1], 1e-6)
    return np.stack(
        [(box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2, width / height, height], -1
    )


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(..., 4) centre x, centre y, aspect, height -> (..., 4) x1y1x2y2."""
    xyah = np.asarray(xyah, dtype=np.float64)
    width = xyah[..., 2] * xyah[..., 3]
    half_w, half_h = width / 2, xyah[..., 3] / 2
    return np.stack(
        [xyah[..., 0] - half_w, xyah[..., 1] - half_h, xyah[..., 0] + half_w, xyah[..., 1] + half_h], -1
    )


class BoxKalmanFilter:
    """Kalman filter with state (x, y, a, h, vx, vy, va, vh) and measurement (x, y, a, h).

    std_position / std_velocity: noise standard deviations as fractions of the box height (per frame).
    """

    def __init__(self, std_position: float = 1.0 / 20, std_velocity: float = 1.0 / 160) -> None:
        self.std_position = float(std_position)
        self.std_velocity = float(std_velocity)
        self.transition = np.eye(2 * _DIM)
        self.transition[:_DIM, _DIM:] = np.eye(_DIM)  # position += velocity (one frame)
        self.observation = np.eye(_DIM, 2 * _DIM)

    def _position_std(self, heights: np.ndarray) -> np.ndarray:
        """(N, 4) std of the position part: x, y, h scale with height; the aspect ratio is nearly fixed."""
        std = np.stack([heights, heights, np.full_like(heights, 1e-2 / self.std_position), heights], -1)
        std *= self.std_position
        return std

    def _velocity_std(self, heights: np.ndarray) -> np.ndarray:
        std = np.stack([heights, heights, np.full_like(heights, 1e-5 / self.std_velocity), heights], -1)
        return std * self.std_velocity

    def initiate(self, measurement_xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A new track at rest: mean (8,), covariance (8, 8)."""
        measurement = np.asarray(measurement_xyah, dtype=np.float64).reshape(_DIM)
        mean = np.concatenate([measurement, np.zeros(_DIM)])
        height = np.array([measurement[3]])
        std = np.concatenate([2 * self._position_std(height)[0], 10 * self._velocity_std(height)[0]])
        return mean, np.diag(std**2)

    def predict_many(self, means: np.ndarray, covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead for N tracks at once: means (N, 8), covariances (N, 8, 8)."""
        means = np.asarray(means, dtype=np.float64).reshape(-1, 2 * _DIM)
        if len(means) == 0:
            return means, np.asarray(covariances, dtype=np.float64).reshape(0, 2 * _DIM, 2 * _DIM)
        heights = means[:, 3]
        noise_std = np.concatenate([self._position_std(heights), self._velocity_std(heights)], axis=1)
        noise = np.einsum("ni,ij->nij", noise_std**2, np.eye(2 * _DIM))
        new_means = means @ self.transition.T
        new_covs = self.transition @ covariances @ self.transition.T + noise
        return new_means, new_covs

    def update(
        self, mean: np.ndarray, covariance: np.ndarray, measurement_xyah: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct one track with one measured box (x, y, a, h)."""
        measurement = np.asarray(measurement_xyah, dtype=np.float64).reshape(_DIM)
        measurement_std = self._position_std(np.array([mean[3]]))[0]
        projected_cov = self.observation @ covariance @ self.observation.T + np.diag(measurement_std**2)
        cross = covariance @ self.observation.T  # (8, 4)
        gain = np.linalg.solve(
            projected_cov, cross.T
        ).T  # cross @ inv(projected_cov); projected_cov symmetric
        innovation = measurement - self.observation @ mean
        new_mean = mean + gain @ innovation
        new_cov = covariance - gain @ projected_cov @ gain.T
        return new_mean, (new_cov + new_cov.T) / 2
