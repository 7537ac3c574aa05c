"""Shared fixtures: where the real data lies, the real-model environment, and GPU skipping."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("RTPOSE_DATA", REPO.parent / "shared" / "data")).resolve()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run through the device tool")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data (images, weights, video). Missing data fails in CI and skips elsewhere."""
    if not (DATA_DIR / "MANIFEST.md").is_file():
        message = f"real data not found at {DATA_DIR} (set RTPOSE_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return DATA_DIR


@pytest.fixture(scope="session")
def models_dir(data_dir: Path) -> Path:
    return data_dir / "models"


def model_file(models_dir: Path, relative: str) -> Path:
    """A file of the shared models folder, or a skip that names it (the data may be partial)."""
    path = models_dir / relative
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="session")
def movenet_tflite(models_dir: Path) -> Path:
    """The official MoveNet SinglePose Lightning INT8 TFLite file."""
    return model_file(
        models_dir,
        "movenet_singlepose_lightning_int8/lite-model_movenet_singlepose_lightning_tflite_int8_4.tflite",
    )


@pytest.fixture(scope="session")
def openpose_ir_xml(models_dir: Path) -> Path:
    """The OpenVINO IR (FP16-INT8) of human-pose-estimation-0001 (lightweight OpenPose)."""
    return model_file(models_dir, "human-pose-estimation-0001_FP16-INT8/human-pose-estimation-0001.xml")


@pytest.fixture(scope="session")
def coco_val(data_dir: Path) -> tuple[Path, Path]:
    """(annotation file, image folder) of the 60 real COCO val2017 images with keypoints."""
    return (
        data_dir / "coco" / "annotations" / "person_keypoints_val2017_subset.json",
        data_dir / "coco" / "val2017",
    )


@pytest.fixture(scope="session")
def rtpose_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RTPOSE_CACHE for the session's real-model tests (pipelines, video, CLI): one ONNX export each."""
    cache = tmp_path_factory.getbasetemp() / "rtpose_cache"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def rtpose_env(models_dir: Path, rtpose_cache_dir: Path) -> Iterator[dict[str, str]]:
    """RTPOSE_OFFLINE_DIR at the shared models, RTPOSE_CACHE at `rtpose_cache_dir`, for the session."""
    env = {"RTPOSE_OFFLINE_DIR": str(models_dir), "RTPOSE_CACHE": str(rtpose_cache_dir)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture(autouse=True)
def _restore_rtpose_logger() -> Iterator[None]:
    """In-process CLI runs give the `rtpose` logger a stderr handler and stop propagation (as the CLI
    should); restore it so that later tests' `caplog` still sees rtpose's records."""
    import logging

    logger = logging.getLogger("rtpose")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]
