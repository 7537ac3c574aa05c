"""Per-call wall time of the pipeline stages: decode, pre, infer, post (milliseconds).

GPU work is asynchronous, so a stage's wall time only means something if the device is synchronised at
its boundaries. That costs latency, so the timer does it only when enabled (`profile=True`); disabled,
`stage()` is an empty context manager and the hot path never waits for the device because of timing.
Stages may be entered several times per call (detector pre, then pose pre): their times add up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

STAGES: tuple[str, ...] = ("decode", "pre", "infer", "post")


class StageTimer:
    """Accumulates milliseconds per stage between `start()` calls; syncs CUDA only when enabled."""

    def __init__(self, enabled: bool = False, device: str = "cpu") -> None:
        self.enabled = bool(enabled)
        self.cuda = str(device).startswith("cuda")
        self.ms: dict[str, float] = {}

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def start(self) -> None:
        """Begin a new call: every stage back to 0 ms (so a call without decoding reports decode 0)."""
        if self.enabled:
            self._sync()
            self.ms = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, milliseconds: float) -> None:
        """Time measured elsewhere (e.g. decoding done by the caller) counted into `stage`."""
        if self.enabled:
            self.ms[stage] = self.ms.get(stage, 0.0) + float(milliseconds)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.add(name, (time.perf_counter() - begin) * 1000.0)

    def snapshot(self) -> dict[str, float]:
        """The times of the current call, plus their sum as "total"; empty when disabled."""
        if not self.enabled:
            return {}
        out = dict(self.ms)
        out["total"] = sum(self.ms.values())
        return out
