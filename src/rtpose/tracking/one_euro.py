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

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from rtpose.errors import RtposeError
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
        p = self.params
        speed = (value - self._value) / dt
        speed_hat = self._speed + smoothing_factor(p.d_cutoff, dt) * (speed - self._speed)
        cutoff = p.min_cutoff + p.beta * np.abs(speed_hat)
        value_hat = self._value + smoothing_factor(cutoff, dt) * (value - self._value)
        self._value, self._speed, self._time = value_hat, speed_hat, float(time_s)
        return value_hat.copy()


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
        out = []
        for person in people:
            if person.track_id is None or person.keypoints is None:
                out.append(person)
                continue
            track_id = int(person.track_id)
            filt = self._filters.get(track_id)
            if filt is None:
                filt = self._filters[track_id] = OneEuroFilter(self.params)
            elif self._last_seen.get(track_id) != self._step - 1:
                filt.reset()  # reappeared after a gap: start again from the new position
            self._last_seen[track_id] = self._step
            smoothed = filt(person.keypoints, time_s).astype(np.float32)
            out.append(dataclasses.replace(person, keypoints=smoothed))
        for track_id in [t for t, seen in self._last_seen.items() if self._step - seen > self.forget_after]:
            del self._filters[track_id], self._last_seen[track_id]
        return out
