"""Fixtures for pipeline tests (the real-model environment `rtpose_env` is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_rtmpose_t(models_dir: Path) -> Path:
    """Official-format RTMPose-t checkpoint with random weights: real shapes, meaningless keypoints."""
    return models_dir / "rtmpose_official_arch" / "rtmpose-t_random_official_format.pth"
