"""Imports every model family module so that its specs are registered."""

from rtpose.models import movenet, openpose_lite, rtmdet, rtmpose  # noqa: F401
