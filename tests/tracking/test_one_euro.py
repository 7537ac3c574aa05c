"""One-Euro filter against a scalar textbook implementation, and the per-track smoother's resets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtpose.errors import RtposeError
from rtpose.tracking.one_euro import OneEuroFilter, OneEuroParams, PoseSmoother
from rtpose.types import Person


class _ScalarOneEuro:
    """The filter as the paper writes it, for one number: the oracle."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x = self.dx = self.t = None

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: float, t: float) -> float:
        if self.x is None:
            self.x, self.dx, self.t = x, 0.0, t
            return x
        dt = t - self.t
        dx = (x - self.x) / dt
        dx_hat = self.dx + self._alpha(self.d_cutoff, dt) * (dx - self.dx)
        cutoff = self.min_cutoff + self.beta * abs(dx_hat)
        x_hat = self.x + self._alpha(cutoff, dt) * (x - self.x)
        self.x, self.dx, self.t = x_hat, dx_hat, t
        return x_hat


def test_vectorised_filter_equals_scalar_reference() -> None:
    rng = np.random.default_rng(0)
    params = OneEuroParams(min_cutoff=0.8, beta=0.3, d_cutoff=1.5)
    filt = OneEuroFilter(params)
    signals = rng.normal(0, 5, (50, 17, 2)).cumsum(axis=0)
    times = np.cumsum(rng.uniform(0.02, 0.05, 50))
    oracles = [[_ScalarOneEuro(0.8, 0.3, 1.5) for _ in range(2)] for _ in range(17)]
    for signal, t in zip(signals, times, strict=True):
        got = filt(signal, float(t))
        want = [[oracles[k][c](float(signal[k, c]), float(t)) for c in range(2)] for k in range(17)]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_still_point_jitter_is_reduced_and_constant_input_untouched() -> None:
    rng = np.random.default_rng(1)
    filt = OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.0))
    noisy = 100 + rng.normal(0, 2.0, (200, 2))
    smoothed = np.array([filt(v, i / 30) for i, v in enumerate(noisy)])
    assert np.std(np.diff(smoothed[20:], axis=0)) < 0.25 * np.std(np.diff(noisy[20:], axis=0))
    const = OneEuroFilter()
    for i in range(10):
        np.testing.assert_allclose(const(np.full(3, 7.0), i / 30), 7.0)


def test_smoother_resets_on_reappearance_and_forgets_old_tracks() -> None:
    smoother = PoseSmoother(OneEuroParams(min_cutoff=0.1, beta=0.0), forget_after=5)

    def person(track_id: int, x: float) -> Person:
        return Person(np.zeros(4, np.float32), 0.9, np.full((17, 2), x, np.float32), np.ones(17), track_id)

    smoother([person(1, 0.0)], 0.0)
    lagging = smoother([person(1, 100.0)], 1 / 30)[0].keypoints
    assert lagging is not None and float(lagging[0, 0]) < 50  # strong smoothing lags a jump
    smoother([], 2 / 30)  # track 1 missing for a frame
    reset = smoother([person(1, 200.0)], 3 / 30)[0].keypoints
    assert reset is not None and float(reset[0, 0]) == 200.0  # reappeared: no smoothing across the gap
    untracked = Person(np.zeros(4, np.float32), 0.9, np.ones((17, 2), np.float32))
    assert smoother([untracked], 4 / 30)[0] is untracked
    for step in range(10):
        smoother([], (5 + step) / 30)
    assert len(smoother) == 0


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(RtposeError, match="min_cutoff"):
        OneEuroParams(min_cutoff=0.0)


def test_smoother_on_all_tracks_at_once_equals_one_filter_per_track() -> None:
    """Tracks coming, going, coming back, a repeated timestamp and a doubled id, against per-track filters
    run one at a time (the smoother's former loop)."""
    rng = np.random.default_rng(4)
    params = OneEuroParams(min_cutoff=0.7, beta=0.2)
    smoother = PoseSmoother(params, forget_after=3)
    filters: dict[int, OneEuroFilter] = {}
    last_seen: dict[int, int] = {}
    time_s = 0.0
    for step in range(80):
        time_s += 0.0 if step % 13 == 5 else float(rng.uniform(0.02, 0.05))
        ids = sorted(rng.choice(8, size=int(rng.integers(0, 7)), replace=False).tolist())
        if step % 17 == 3 and ids:
            ids.append(ids[0])
        people = [
            Person(np.zeros(4), 0.9, rng.normal(50, 20, (17, 2)).astype(np.float32), None, t) for t in ids
        ]
        people.append(Person(np.zeros(4), 0.9, np.zeros((17, 2), np.float32)))  # no track id: passes
        got = smoother(people, time_s)
        for person, out in zip(people[:-1], got[:-1], strict=True):
            track_id = int(person.track_id or 0)
            if track_id not in filters:
                filters[track_id] = OneEuroFilter(params)
            elif last_seen.get(track_id) != step - 1:
                filters[track_id].reset()
            last_seen[track_id] = step
            want = filters[track_id](person.keypoints, time_s).astype(np.float32)
            np.testing.assert_array_equal(out.keypoints, want)
            assert out.track_id == person.track_id
        for track_id in [t for t, seen in last_seen.items() if step - seen > 3]:
            del filters[track_id], last_seen[track_id]
        assert got[-1] is people[-1] and len(smoother) == len(filters)
