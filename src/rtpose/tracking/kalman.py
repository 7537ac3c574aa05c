"""Constant-velocity Kalman filter on person boxes (the motion model of SORT / ByteTrack).

State (8,): box centre x, y, aspect ratio w/h, height h, and their velocities per frame. Process and
measurement noise scale with the box height, so a far (small) person and a near (large) one are
tracked with the same relative uncertainty. Tracks are predicted together (`predict_many`) once per
frame, and the matched tracks are corrected together (`update_many`).
"""

from __future__ import annotations

import numpy as np

_DIM = 4
_DIAGONAL = np.arange(_DIM)


def xyxy_to_xyah(box: np.ndarray) -> np.ndarray:
    """(..., 4) x1y1x2y2 -> (..., 4) centre x, centre y, aspect w/h, height."""
    box = np.asarray(box, dtype=np.float64)
    width = np.maximum(box[..., 2] - box[..., 0], 1e-6)
    height = np.maximum(box[..., 3] - box[..., 1], 1e-6)
    out = np.empty((*box.shape[:-1], 4))
    out[..., 0] = (box[..., 0] + box[..., 2]) / 2
    out[..., 1] = (box[..., 1] + box[..., 3]) / 2
    out[..., 2] = width / height
    out[..., 3] = height
    return out


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(..., 4) centre x, centre y, aspect, height -> (..., 4) x1y1x2y2."""
    xyah = np.asarray(xyah, dtype=np.float64)
    width = xyah[..., 2] * xyah[..., 3]
    half_w, half_h = width / 2, xyah[..., 3] / 2
    out = np.empty((*xyah.shape[:-1], 4))
    out[..., 0] = xyah[..., 0] - half_w
    out[..., 1] = xyah[..., 1] - half_h
    out[..., 2] = xyah[..., 0] + half_w
    out[..., 3] = xyah[..., 1] + half_h
    return out


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
        measurement = np.asarray(measurement_xyah, dtype=np.float64).reshape(1, _DIM)
        new_means, new_covs = self.update_many(
            np.asarray(mean)[None], np.asarray(covariance)[None], measurement
        )
        return new_means[0], new_covs[0]

    def update_many(
        self, means: np.ndarray, covariances: np.ndarray, measurements_xyah: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct N tracks at once, each with its own measured box: (N, 8), (N, 8, 8), (N, 4).

        The observation matrix only selects the position part, so the projections are slices rather
        than products (the same numbers: the products only add zeros).
        """
        means = np.asarray(means, dtype=np.float64).reshape(-1, 2 * _DIM)
        covariances = np.asarray(covariances, dtype=np.float64).reshape(-1, 2 * _DIM, 2 * _DIM)
        measurements = np.asarray(measurements_xyah, dtype=np.float64).reshape(-1, _DIM)
        if len(means) == 0:
            return means, covariances
        measurement_var = self._position_std(means[:, 3]) ** 2  # (N, 4)
        projected_cov = covariances[:, :_DIM, :_DIM].copy()
        projected_cov[:, _DIAGONAL, _DIAGONAL] += measurement_var
        cross = covariances[:, :, :_DIM]  # (N, 8, 4) = covariance @ observation.T
        # cross @ inv(projected_cov), as solve(projected_cov, cross.T).T (projected_cov is symmetric)
        gain = np.linalg.solve(projected_cov, cross.transpose(0, 2, 1)).transpose(0, 2, 1)
        innovation = measurements - means[:, :_DIM]
        new_means = means + (gain @ innovation[:, :, None])[:, :, 0]
        new_covs = covariances - gain @ projected_cov @ gain.transpose(0, 2, 1)
        return new_means, (new_covs + new_covs.transpose(0, 2, 1)) / 2
