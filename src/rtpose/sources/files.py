"""What the user names on the command line (files, folders, glob patterns) -> an ordered list of image paths.

Every argument yields at least one item, so nothing the user asked for disappears silently:

- a file is kept whatever its extension (the decoder will say if it is not an image);
- a folder yields its image files (by extension, not recursive, sorted by name); a folder without any
  yields the folder itself, which then fails as an item ("is a folder, not an image file");
- a glob pattern (`*`, `?`, `[`; `**` recurses) yields its matching files, sorted; a pattern matching
  nothing, and a path that does not exist, are kept as they are and fail as items ("file not found").

Duplicates (the same file named twice) are kept once, at their first position.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from rtpose.errors import RtposeError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".jp2",
     ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".gif", ".avif"}
)  # fmt: skip

_GLOB_CHARS = frozenset("*?[")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def expand_sources(paths: Iterable[str | Path] | str | Path) -> list[Path]:
    """Expand files, folders and glob patterns into image paths (see the module docstring)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    items: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        if path not in seen:
            seen.add(path)
            items.append(path)

    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if is_image_file(p))
            if not images:
                logger.warning("%s: folder has no image files", path)
                add(path)
            for image in images:
                add(image)
        elif path.exists():
            add(path)
        elif _GLOB_CHARS & set(str(entry)):
            matches = sorted(Path(m) for m in glob.glob(str(entry), recursive=True) if Path(m).is_file())
            if not matches:
                logger.warning("%s: no file matches this pattern", entry)
                add(path)
            for match in matches:
                add(match)
        else:
            add(path)  # missing: reported by the decoder as this item's error
    return items


def sample_images(limit: int, purpose: str = "sample images", split: str = "val2017") -> list[Path]:
    """The first `limit` images of $RTPOSE_DATA/coco/<split> (default ../shared/data from the cwd, then
    beside the repository): the demo input (val2017) and the default INT8 calibration set (train2017)."""
    roots = [Path(os.environ["RTPOSE_DATA"])] if os.environ.get("RTPOSE_DATA") else []
    roots += [
        Path.cwd().parent / "shared" / "data",
        Path(__file__).resolve().parents[3].parent / "shared" / "data",
    ]
    for root in roots:
        folder = root / "coco" / split
        images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
        if images:
            return images[:limit]
    tried = ", ".join(str(r / "coco" / split) for r in roots)
    raise RtposeError(
        f"{purpose}: no sample images found (tried {tried}); pass image files or folders instead"
    )
