"""Imports every model family module so that its specs are registered."""

from rtpose.models import rtmdet, rtmpose  # noqa: F401
