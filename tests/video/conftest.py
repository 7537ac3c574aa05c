"""Synthetic videos written once per session (tiny: 160x120)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fakes.py, loopback.py

from fakes import write_scene


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    write_scene(folder / "two_movers.mp4", 60)
    write_scene(folder / "one_mover.mp4", 40, movers=[(5.0, 5.0, 2.0, 1.0)])
    write_scene(folder / "stream.ts", 200)
    data = (folder / "two_movers.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "garbage.mp4").write_bytes(b"\x00\x01not a video" * 500)
    return folder
