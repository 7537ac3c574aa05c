"""Cheap copies of `Person` with one field changed, for the per-person hot loops of tracking.

`dataclasses.replace` re-runs the generated `__init__` through keyword handling and costs several
microseconds per person; a video frame makes two such copies per person. A plain `Person` is copied
field by field instead (it has no `__post_init__`); subclasses still go through `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rtpose.types import Person


def _copy(person: Person, **changes: object) -> Person:
    if type(person) is not Person:
        return dataclasses.replace(person, **changes)
    copy = object.__new__(Person)
    copy.__dict__.update(person.__dict__)
    copy.__dict__.update(changes)
    return copy


def with_track_id(person: Person, track_id: int) -> Person:
    return _copy(person, track_id=track_id)


def with_keypoints(person: Person, keypoints: np.ndarray) -> Person:
    return _copy(person, keypoints=keypoints)
