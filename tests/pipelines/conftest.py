"""Fixtures for pipeline tests: real engines built once per session, in a temporary cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def rtpose_env(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """RTPOSE_OFFLINE_DIR at the shared models, RTPOSE_CACHE in a session temp dir (ONNX exported once)."""
    cache = tmp_path_factory.getbasetemp() / "rtpose_cache"  # shared with tests/cli: one export per session
    cache.mkdir(exist_ok=True)
    env = {"RTPOSE_OFFLINE_DIR": str(models_dir), "RTPOSE_CACHE": str(cache)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture(scope="session")
def random_rtmpose_t(models_dir: Path) -> Path:
    """Official-format RTMPose-t checkpoint with random weights: real shapes, meaningless keypoints."""
    return models_dir / "rtmpose_official_arch" / "rtmpose-t_random_official_format.pth"
