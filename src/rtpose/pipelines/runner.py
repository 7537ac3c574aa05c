"""Run an image -> people function over files, folders and globs: one `ImageResult` per item.

One bad item (missing, corrupt, too large, ...) becomes that item's `ImageResult.error`; the others go
on. Shared by every image pipeline (top-down, bottom-up).

`run_batched` is the batch-of-images variant: the pipeline decodes each file itself (on the GPU where
it runs there) and gets `batch_size` images per call; when a batch fails, its images are retried one by
one so that the error lands on the item that caused it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

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


def _error_text(exc: Exception) -> str:
    if isinstance(exc, RtposeError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def run_batched(
    predict_batch: Callable[[list[Any], float], list[list[Person]]],
    sources: SourceArg,
    *,
    decode: Callable[[Path], Any],
    batch_size: int = 1,
    progress: bool = True,
) -> Iterator[ImageResult]:
    """Like `run_on_sources`, with `decode(path)` done by the pipeline and `batch_size` images per call.

    predict_batch(images, decode_ms): people of each image; decode_ms is the time spent decoding them.
    """
    if batch_size < 1:
        raise RtposeError(f"batch_size must be at least 1, not {batch_size}")
    items = expand_sources(sources)
    bar = None
    if progress and len(items) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="images", unit="img", leave=False)
    try:
        for start in range(0, len(items), batch_size):
            group = items[start : start + batch_size]
            yield from _run_group(predict_batch, group, decode)
            if bar is not None:
                bar.update(len(group))
    finally:
        if bar is not None:
            bar.close()


def _run_group(
    predict_batch: Callable[[list[Any], float], list[list[Person]]], group: list[Path], decode: Callable
) -> list[ImageResult]:
    results: list[ImageResult] = []
    images: dict[int, Any] = {}
    begin = time.perf_counter()
    for index, path in enumerate(group):
        try:
            image = decode(path)
        except RtposeError as exc:
            results.append(ImageResult(file=str(path), error=str(exc)))
            continue
        height, width = (int(v) for v in image.shape[:2])
        results.append(ImageResult(file=str(path), width=width, height=height))
        images[index] = image
    decode_ms = (time.perf_counter() - begin) * 1000.0
    if not images:
        return results
    order = list(images)
    try:
        found = predict_batch([images[i] for i in order], decode_ms)
    except Exception as exc:
        if len(order) == 1:
            logger.debug("error on %s", group[order[0]], exc_info=True)
            results[order[0]].error = _error_text(exc)
            return results
        found = []
        for index in order:  # find the item that fails, keep the others
            try:
                found.append(predict_batch([images[index]], 0.0)[0])
            except Exception as item_exc:
                logger.debug("error on %s", group[index], exc_info=True)
                results[index].error = _error_text(item_exc)
                found.append([])
    for index, people in zip(order, found, strict=True):
        if results[index].error is None:
            results[index].people = people
    return results
