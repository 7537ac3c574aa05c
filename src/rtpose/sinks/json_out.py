"""JSON and JSON-lines output that never leaves a half-written file behind.

`write_json` writes to a temporary file in the target's folder and renames it over the target
(`os.replace` is atomic on POSIX and Windows), so a reader, or a crash mid-write, sees either the old
file or the complete new one. `-` means standard output. Objects with a `to_json()` method
(`ImageResult`, `Person`) and NumPy values are converted on the way.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from rtpose.errors import RtposeError

STDOUT = "-"
_DEFAULT_FILE_MODE = 0o644


_PLAIN = frozenset({str, int, float, bool, type(None)})


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from results: `to_json()` objects, NumPy scalars/arrays, tuples, Paths.

    Exact builtin types are dispatched first and plain list items are kept without a call: a video
    frame's record holds thousands of floats, and a generic call per number cost more than the dump.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list or kind is tuple:
        return [v if type(v) in _PLAIN else to_jsonable(v) for v in value]
    if kind is dict:
        return {str(k): v if type(v) in _PLAIN else to_jsonable(v) for k, v in value.items()}
    return _to_jsonable_generic(value)


def _to_jsonable_generic(value: Any) -> Any:
    if hasattr(value, "to_json") and callable(value.to_json):
        return to_jsonable(value.to_json())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy arrays and scalars, torch tensors
        return to_jsonable(value.tolist())
    return value


def _dumps(value: Any, indent: int | None, *, plain: bool = False) -> str:
    try:
        if plain:  # only the rare non-JSON leaf is converted, when the encoder meets it
            return json.dumps(value, indent=indent, allow_nan=False, default=to_jsonable)
        return json.dumps(to_jsonable(value), indent=indent, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RtposeError(f"cannot write results as JSON: {exc}") from None


@contextlib.contextmanager
def _atomic_text_file(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A text file that appears at `path` only when the block finishes without an error."""
    target = Path(path)
    if target.parent and not target.parent.is_dir():
        raise RtposeError(f"cannot write {target}: folder {target.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file private (0600); give it the mode a plain open() would have had.
        os.chmod(tmp_name, target.stat().st_mode & 0o777 if target.exists() else _DEFAULT_FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_json(results: Any, path: str | os.PathLike[str], *, indent: int | None = 2) -> None:
    """Write `results` as one JSON document to `path` atomically, or to stdout for "-"."""
    text = _dumps(results, indent) + "\n"
    if str(path) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with _atomic_text_file(path) as handle:
        handle.write(text)


def write_jsonl(records: Iterable[Any], path: str | os.PathLike[str]) -> int:
    """Write one compact JSON object per line (atomically; "-" = stdout). Returns the number of lines."""
    count = 0
    if str(path) == STDOUT:
        for record in records:
            sys.stdout.write(_dumps(record, None) + "\n")
            count += 1
        sys.stdout.flush()
        return count
    with _atomic_text_file(path) as handle:
        for record in records:
            handle.write(_dumps(record, None) + "\n")
            count += 1
    return count


class JsonlWriter:
    """Appends one JSON line per record as results arrive (video streams), flushing each line.

    Unlike `write_jsonl` this is not atomic: a stream has no end to wait for, and a reader can follow the
    file line by line. Use as a context manager; "-" writes to stdout.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = str(path)
        self.count = 0
        if self.path == STDOUT:
            self._handle: IO[str] = sys.stdout
        else:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise RtposeError(f"cannot open {self.path} for writing: {exc}") from None

    def write(self, record: Any, *, plain: bool = False) -> None:
        """Append `record` as one line. plain=True: `record` is already made of dicts with str keys,
        lists and JSON scalars (a `to_json()` result), so the conversion walk over it is skipped."""
        self._handle.write(_dumps(record, None, plain=plain) + "\n")
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        if self._handle is not sys.stdout and not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
