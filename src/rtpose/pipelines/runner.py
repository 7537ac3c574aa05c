"""Run an image -> people function over files, folders and globs: one `ImageResult` per item.

One bad item (missing, corrupt, too large, ...) becomes that item's `ImageResult.error`; the others go
on. Shared by every image pipeline (top-down, bottom-up).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from rtpose.decode.image import decode_image
from rtpose.errors import RtposeError
from rtpose.sources.files import expand_sources
from rtpose.types import ImageResult, Person

logger = logging.getLogger(__name__)

SourceArg = str | Path | Iterable[str | Path]


def run_on_sources(
    predict: Callable[[np.ndarray], list[Person]], sources: SourceArg, *, progress: bool = True
) -> Iterator[ImageResult]:
    """Decode every image the sources name and yield what `predict` finds in it, in order."""
    items = expand_sources(sources)
    iterable: Iterable[Path] = items
    if progress and len(items) > 1:
        from tqdm import tqdm

        iterable = tqdm(items, desc="images", unit="img", leave=False)
    for path in iterable:
        yield predict_one(predict, path)


def predict_one(predict: Callable[[np.ndarray], list[Person]], path: Path) -> ImageResult:
    """Decode one file and run `predict` on it; any failure becomes the result's `error`."""
    return decode_and_predict(predict, path)[0]


def decode_and_predict(
    predict: Callable[[np.ndarray], list[Person]], path: Path
) -> tuple[ImageResult, np.ndarray | None]:
    """Like `predict_one`, also returning the decoded image (None when it could not be decoded)."""
    try:
        image = decode_image(path)
    except RtposeError as exc:
        return ImageResult(file=str(path), error=str(exc)), None
    height, width = image.shape[:2]
    try:
        people = predict(image)
    except RtposeError as exc:
        return ImageResult(file=str(path), width=width, height=height, error=str(exc)), image
    except Exception as exc:  # a bug must not stop the other items, but is logged with its traceback
        logger.debug("unexpected error on %s", path, exc_info=True)
        error = f"internal error: {type(exc).__name__}: {exc}"
        return ImageResult(file=str(path), width=width, height=height, error=error), image
    return ImageResult(file=str(path), width=width, height=height, people=people), image
