"""Inference backends behind one interface (`Engine`)."""

from rtpose.engines.base import Engine

__all__ = ["Engine"]
