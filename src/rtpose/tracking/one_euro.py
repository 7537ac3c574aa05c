"""One-Euro smoothing of keypoints (Casiez et al., CHI 2012), one filter per tracked person.

The One-Euro filter is a low-pass filter whose cutoff frequency rises with the signal's speed:
a still person's keypoints are smoothed strongly (no jitter) while a fast movement passes with little
lag. Per value x at time t (seconds):

    dx      = (x - x_prev) / dt, smoothed with cutoff d_cutoff          (the speed estimate)
    cutoff  = min_cutoff + beta * |dx_smoothed|
    x_hat   = x_prev_hat + alpha(cutoff, dt) * (x - x_prev_hat),  alpha = 1 / (1 + 1 / (2 pi cutoff dt))

`OneEuroFilter` filters an array of any shape elementwise; `PoseSmoother` keeps one per track id and
starts it afresh when a track is new or reappears after a gap, so no smoothing runs across a jump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rtpose.errors import RtposeError
from rtpose.tracking.people import with_keypoints
from rtpose.types import Person


@dataclass(frozen=True)
class OneEuroParams:
    """min_cutoff (Hz): smoothing at rest (lower = smoother); beta: speed coefficient (higher = less lag);
    d_cutoff (Hz): cutoff of the speed estimate."""

    min_cutoff: float = 1.0
    beta: float = 0.05
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise RtposeError(f"One-Euro parameters need min_cutoff > 0, d_cutoff > 0, beta >= 0; got {self}")


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    """alpha of an exponential filter with this cutoff frequency (Hz) and sampling period dt (s)."""
    return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64) * dt))


class OneEuroFilter:
    """Elementwise One-Euro filter over arrays of a fixed shape."""

    def __init__(self, params: OneEuroParams | None = None) -> None:
        self.params = params or OneEuroParams()
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time: float | None = None

    def reset(self) -> None:
        self._value = self._speed = None
        self._time = None

    def __call__(self, value: np.ndarray, time_s: float) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if self._value is None or self._value.shape != value.shape or self._time is None:
            self._value, self._speed, self._time = value.copy(), np.zeros_like(value), float(time_s)
            return value.copy()
        dt = float(time_s) - self._time
        if dt <= 0:  # repeated or out-of-order timestamp: nothing to learn from it
            return self._value.copy()
        value_hat, speed_hat = _one_euro_step(self.params, value, self._value, self._speed, dt)
        self._value, self._speed, self._time = value_hat, speed_hat, float(time_s)
        return value_hat.copy()


def _one_euro_step(
    p: OneEuroParams, value: np.ndarray, previous: np.ndarray, speed: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """One filter step, elementwise (so stacked filters give each one's own numbers): (value, speed)."""
    raw_speed = (value - previous) / dt
    speed_hat = speed + smoothing_factor(p.d_cutoff, dt) * (raw_speed - speed)
    cutoff = p.min_cutoff + p.beta * np.abs(speed_hat)
    value_hat = previous + smoothing_factor(cutoff, dt) * (value - previous)
    return value_hat, speed_hat


class PoseSmoother:
    """One-Euro filters on the keypoints of every tracked person of one stream.

    Filters of tracks not seen for `forget_after` calls are dropped, so memory stays flat however
    long the stream runs. People without a track id or keypoints pass unchanged.
    """

    def __init__(self, params: OneEuroParams | None = None, forget_after: int = 30) -> None:
        self.params = params or OneEuroParams()
        self.forget_after = int(forget_after)
        self._filters: dict[int, OneEuroFilter] = {}
        self._last_seen: dict[int, int] = {}
        self._step = -1

    def __len__(self) -> int:
        return len(self._filters)

    def __call__(self, people: list[Person], time_s: float) -> list[Person]:
        self._step += 1
        out = list(people)
        chosen = [i for i, p in enumerate(people) if p.track_id is not None and p.keypoints is not None]
        track_ids = [int(people[i].track_id or 0) for i in chosen]
        if len(set(track_ids)) < len(track_ids):  # one id twice: the filter must see them in turn
            for i, track_id in zip(chosen, track_ids, strict=True):
                smoothed = self._filter(track_id)(people[i].keypoints, time_s).astype(np.float32)
                out[i] = with_keypoints(people[i], smoothed)
        else:
            filters = [self._filter(track_id) for track_id in track_ids]
            values = [np.asarray(people[i].keypoints, dtype=np.float64) for i in chosen]
            for i, smoothed in zip(chosen, _filter_many(filters, values, float(time_s)), strict=True):
                out[i] = with_keypoints(people[i], smoothed.astype(np.float32))
        for track_id in [t for t, seen in self._last_seen.items() if self._step - seen > self.forget_after]:
            del self._filters[track_id], self._last_seen[track_id]
        return out

    def _filter(self, track_id: int) -> OneEuroFilter:
        """This track's filter for the current call, reset when the track was not seen on the last one."""
        filt = self._filters.get(track_id)
        if filt is None:
            filt = self._filters[track_id] = OneEuroFilter(self.params)
        elif self._last_seen.get(track_id) != self._step - 1:
            filt.reset()  # reappeared after a gap: start again from the new position
        self._last_seen[track_id] = self._step
        return filt


def _filter_many(filters: list[OneEuroFilter], values: list[np.ndarray], time_s: float) -> list[np.ndarray]:
    """`[f(v, time_s) for f, v in zip(filters, values)]` for distinct filters, with one stacked step for
    the filters that continue from a common time, shape and parameters (usually every track of the last
    frame); the others, starting afresh or skipping a repeated time, are called one by one."""
    group: list[int] = []
    key: tuple[float, tuple[int, ...], OneEuroParams] | None = None
    for i, (filt, value) in enumerate(zip(filters, values, strict=True)):
        if filt._value is None or filt._time is None or filt._value.shape != value.shape:
            continue
        if time_s - filt._time <= 0:
            continue
        if key is None:
            key = (filt._time, value.shape, filt.params)
        if (filt._time, value.shape, filt.params) == key:
            group.append(i)
    out: dict[int, np.ndarray] = {}
    if key is not None and len(group) > 1:
        previous_time, _, params = key
        value_hat, speed_hat = _one_euro_step(
            params, np.array([values[i] for i in group]), np.array([filters[i]._value for i in group]),
            np.array([filters[i]._speed for i in group]), time_s - previous_time,
        )  # fmt: skip
        for row, i in enumerate(group):
            filt = filters[i]
            filt._value, filt._speed, filt._time = value_hat[row], speed_hat[row], time_s
            out[i] = value_hat[row].copy()
    return [
        out[i] if i in out else f(v, time_s) for i, (f, v) in enumerate(zip(filters, values, strict=True))
    ]
