"""Constant-velocity Kalman filter on person boxes (the motion model of SORT / ByteTrack).

State (8,): box centre x, y, aspect ratio w/h, height h, and their velocities per frame. Process and
measurement noise scale with the box height, so a far (small) person and a near (large) one are
tracked with the same relative uncertainty.

The filter never couples two box coordinates: the transition moves each position by its own velocity,
the noises are diagonal and the measurement reads the four positions. A covariance that starts
diagonal (as `initiate` makes it) therefore stays a set of four independent 2x2 blocks (position,
velocity) for ever, and is stored as such: (N, 4, 3) = per coordinate [var(position), cov(position,
velocity), var(velocity)]. Predicting and correcting N tracks are then a dozen elementwise array
operations instead of batched 8x8 matrix products and solves (the numbers are those of the textbook
8x8 form up to rounding; `covariance_matrices` expands the blocks for inspection). The tracker runs
this once per frame for every track, on a video worker's main thread, where its cost bounds frames/s.
"""

from __future__ import annotations

import numpy as np

_DIM = 4
_POSITION, _CROSS, _VELOCITY = 0, 1, 2


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
    Means are (N, 8); covariances (N, 4, 3) blocks (see the module docstring).
    """

    def __init__(self, std_position: float = 1.0 / 20, std_velocity: float = 1.0 / 160) -> None:
        self.std_position = float(std_position)
        self.std_velocity = float(std_velocity)

    def _position_var(self, heights: np.ndarray) -> np.ndarray:
        """(N, 4) variance of the position part: x, y, h scale with height; the aspect is nearly fixed."""
        std = np.empty((len(heights), _DIM))
        std[:, 0] = std[:, 1] = std[:, 3] = heights * self.std_position
        std[:, 2] = (1e-2 / self.std_position) * self.std_position  # as the textbook form rounds it
        return std**2

    def _velocity_var(self, heights: np.ndarray) -> np.ndarray:
        std = np.empty((len(heights), _DIM))
        std[:, 0] = std[:, 1] = std[:, 3] = heights * self.std_velocity
        std[:, 2] = (1e-5 / self.std_velocity) * self.std_velocity
        return std**2

    def initiate_many(self, measurements_xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks at rest: means (N, 8), covariances (N, 4, 3)."""
        measurements = np.asarray(measurements_xyah, dtype=np.float64).reshape(-1, _DIM)
        means = np.zeros((len(measurements), 2 * _DIM))
        means[:, :_DIM] = measurements
        heights = measurements[:, 3]
        covariances = np.zeros((len(measurements), _DIM, 3))
        covariances[..., _POSITION] = 4 * self._position_var(heights)  # (2 std)^2
        covariances[..., _VELOCITY] = 100 * self._velocity_var(heights)  # (10 std)^2
        return means, covariances

    def initiate(self, measurement_xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One new track: mean (8,), covariance (4, 3)."""
        means, covariances = self.initiate_many(np.asarray(measurement_xyah).reshape(1, _DIM))
        return means[0], covariances[0]

    @staticmethod
    def predict_means(means: np.ndarray) -> np.ndarray:
        """The means one frame ahead (positions moved by their velocities), (N, 8)."""
        new_means = np.array(means, dtype=np.float64).reshape(-1, 2 * _DIM)
        new_means[:, :_DIM] += new_means[:, _DIM:]
        return new_means

    def predict_many(self, means: np.ndarray, covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead for N tracks at once: means (N, 8), covariances (N, 4, 3)."""
        means = np.asarray(means, dtype=np.float64).reshape(-1, 2 * _DIM)
        covariances = np.asarray(covariances, dtype=np.float64).reshape(-1, _DIM, 3)
        if len(means) == 0:
            return means.copy(), covariances.copy()
        heights = means[:, 3]
        position, cross, velocity = (covariances[..., i] for i in (_POSITION, _CROSS, _VELOCITY))
        new_covariances = np.empty_like(covariances)
        # F P F^T + Q with F = [[I, I], [0, I]], block by block
        new_covariances[..., _POSITION] = (
            (position + cross) + (cross + velocity) + self._position_var(heights)
        )
        new_covariances[..., _CROSS] = cross + velocity
        new_covariances[..., _VELOCITY] = velocity + self._velocity_var(heights)
        return self.predict_means(means), new_covariances

    def update_many(
        self, means: np.ndarray, covariances: np.ndarray, measurements_xyah: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct N tracks at once, each with its own measured box: (N, 8), (N, 4, 3), (N, 4)."""
        means = np.asarray(means, dtype=np.float64).reshape(-1, 2 * _DIM)
        covariances = np.asarray(covariances, dtype=np.float64).reshape(-1, _DIM, 3)
        measurements = np.asarray(measurements_xyah, dtype=np.float64).reshape(-1, _DIM)
        if len(means) == 0:
            return means.copy(), covariances.copy()
        position, cross, velocity = (covariances[..., i] for i in (_POSITION, _CROSS, _VELOCITY))
        projected = position + self._position_var(means[:, 3])  # innovation variance S
        gain_position, gain_velocity = position / projected, cross / projected  # K = P H^T / S
        innovation = measurements - means[:, :_DIM]
        new_means = np.empty_like(means)
        new_means[:, :_DIM] = means[:, :_DIM] + gain_position * innovation
        new_means[:, _DIM:] = means[:, _DIM:] + gain_velocity * innovation
        new_covariances = np.empty_like(covariances)  # P - K S K^T
        new_covariances[..., _POSITION] = position - gain_position * projected * gain_position
        new_covariances[..., _CROSS] = cross - gain_position * projected * gain_velocity
        new_covariances[..., _VELOCITY] = velocity - gain_velocity * projected * gain_velocity
        return new_means, new_covariances

    def update(
        self, mean: np.ndarray, covariance: np.ndarray, measurement_xyah: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct one track with one measured box (x, y, a, h)."""
        new_means, new_covariances = self.update_many(
            np.asarray(mean)[None], np.asarray(covariance)[None], np.asarray(measurement_xyah)[None]
        )
        return new_means[0], new_covariances[0]


def covariance_matrices(covariances: np.ndarray) -> np.ndarray:
    """(N, 4, 3) blocks -> the full (N, 8, 8) state covariances."""
    blocks = np.asarray(covariances, dtype=np.float64).reshape(-1, _DIM, 3)
    full = np.zeros((len(blocks), 2 * _DIM, 2 * _DIM))
    position, velocity = np.arange(_DIM), np.arange(_DIM, 2 * _DIM)
    full[:, position, position] = blocks[..., _POSITION]
    full[:, position, velocity] = full[:, velocity, position] = blocks[..., _CROSS]
    full[:, velocity, velocity] = blocks[..., _VELOCITY]
    return full
