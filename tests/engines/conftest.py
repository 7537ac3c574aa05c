"""Fixtures for the engine tests: the tiny specs registered only while a test runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_test_models import TINY_DETECTOR, TINY_POSE, TinyDetector, TinyPose, load_state_dict_file, seeded

from rtpose.models import factory as model_factory
from rtpose.models import spec as spec_module
from rtpose.models.spec import ModelSpec


@pytest.fixture
def tiny_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, ModelSpec]]:
    """Only the tiny specs are registered (real families are not imported); a private cache dir."""
    registry = {TINY_POSE.name: TINY_POSE, TINY_DETECTOR.name: TINY_DETECTOR}
    monkeypatch.setattr(spec_module, "_REGISTRY", registry)
    monkeypatch.setattr(spec_module, "_load_families", lambda: None)
    monkeypatch.setitem(model_factory._LOADERS, ("tiny", "pth"), load_state_dict_file)
    monkeypatch.setenv("RTPOSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RTPOSE_OFFLINE_DIR", raising=False)
    yield registry


@pytest.fixture
def tiny_pose_weights(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-pose.pth"
    torch.save(seeded(TinyPose()).state_dict(), path)
    return path


@pytest.fixture
def tiny_det_weights(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-det.pth"
    torch.save(seeded(TinyDetector(), seed=1).state_dict(), path)
    return path
