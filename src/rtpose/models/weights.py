"""Finding a model's weights: explicit file -> cache -> offline dir -> official download.

Model hubs are often unreachable (air-gapped machines, CI), so a download is the last resort and
every failure names exactly what was tried and how to fix it. Downloads are written to a temporary
file beside the destination and moved into place only after their size and sha256 check out, so the
cache never holds a partial or corrupt file, even after Ctrl-C. Cached files are re-hashed the first
time a process uses them (then remembered), which catches bit rot and files edited by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from rtpose.errors import ModelNotFoundError, WeightsError
from rtpose.models.spec import ModelSpec, WeightFormat, WeightSource

logger = logging.getLogger("rtpose")

Origin = Literal["explicit", "cache", "offline", "download"]

CACHE_ENV = "RTPOSE_CACHE"
OFFLINE_ENV = "RTPOSE_OFFLINE_DIR"
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK_BYTES = 1 << 16

#: file suffix -> weight format, for files the user names
SUFFIX_FORMATS: dict[str, WeightFormat] = {
    ".pth": "pth",
    ".pt": "pth",
    ".onnx": "onnx",
    ".tflite": "tflite",
    ".xml": "openvino-ir",
}

#: files mmdeploy writes beside its end2end.onnx
MMDEPLOY_SDK_FILES = ("deploy.json", "pipeline.json")

FORMAT_WORDS: dict[str, str] = {
    "pth": "PyTorch checkpoint",
    "onnx-mmdeploy": "mmdeploy ONNX",
    "onnx": "ONNX",
    "tflite": "TFLite",
    "openvino-ir": "OpenVINO IR",
}

# (path, size, mtime_ns) of cached files whose sha256 this process has already checked.
_verified: set[tuple[str, int, int]] = set()


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's weights were found, in which format, and how."""

    path: Path
    format: WeightFormat
    origin: Origin
    source: WeightSource | None = None

    def describe(self) -> str:
        return f"{self.path} ({FORMAT_WORDS.get(self.format, self.format)})"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The rtpose cache: `cache_dir`, else `$RTPOSE_CACHE`, else `~/.cache/rtpose`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rtpose"


def weights_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / "weights"


def offline_root(offline_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The offline weight folder: `offline_dir`, else `$RTPOSE_OFFLINE_DIR`, else None."""
    if offline_dir is not None:
        return Path(offline_dir).expanduser()
    env = os.environ.get(OFFLINE_ENV)
    return Path(env).expanduser() if env else None


def format_from_suffix(path: Path) -> WeightFormat:
    try:
        return SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(SUFFIX_FORMATS)
        raise WeightsError(
            f"{path}: unknown weight file type {path.suffix!r}; expected one of {known}"
        ) from None


def explicit_format(path: Path) -> WeightFormat:
    """Format of a file the user names: by suffix; an ONNX file in an mmdeploy SDK folder is mmdeploy's."""
    fmt = format_from_suffix(path)
    if fmt == "onnx" and any((path.parent / name).is_file() for name in MMDEPLOY_SDK_FILES):
        return "onnx-mmdeploy"
    return fmt


def _offline_format(path: Path, source: WeightSource) -> WeightFormat:
    """Format of a file found offline: the source's own format when the suffix agrees with it.

    An ONNX file standing in for an official .pth is an mmdeploy export of the same weights.
    """
    suffix_format = format_from_suffix(path)
    if suffix_format == "onnx":
        return source.format if source.format in ("onnx", "onnx-mmdeploy") else "onnx-mmdeploy"
    return suffix_format


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_expected_sha(expected: str) -> str:
    expected = expected.strip().lower()
    if len(expected) < 8 or any(c not in "0123456789abcdef" for c in expected):
        raise WeightsError(f"invalid expected sha256 {expected!r}: need the full digest or 8+ hex digits")
    return expected


def sha256_matches(actual: str, expected: str) -> bool:
    """True if `actual` (a full hex digest) starts with `expected` (full digest or 8+ hex prefix)."""
    return actual.lower().startswith(_normalise_expected_sha(expected))


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def verify_file(path: Path, sha256_prefix: str | None) -> bool:
    """Check a file against its expected sha256, once per process per (path, size, mtime)."""
    if sha256_prefix is None:
        return True
    key = _file_key(path)
    if key in _verified:
        return True
    if not sha256_matches(sha256_file(path), sha256_prefix):
        return False
    _verified.add(key)
    return True


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256_prefix: str | None,
    progress: bool = True,
    *,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download `url` to `dest` atomically, checking its length and sha256.

    Raises ModelNotFoundError when the server cannot be reached or answers with an HTTP error, and
    WeightsError when the body is truncated or its checksum is wrong. On any failure (including
    KeyboardInterrupt) nothing is left at `dest` or beside it.
    """
    dest = Path(dest)
    expected = _normalise_expected_sha(sha256_prefix) if sha256_prefix is not None else None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "rtpose"})
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise ModelNotFoundError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:  # ValueError: malformed URL
        reason = getattr(e, "reason", e)
        raise ModelNotFoundError(f"download of {url} failed: {reason}") from e

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        response.close()
        raise WeightsError(f"cannot write the download of {url} into {dest.parent}: {e}") from e
    tmp = Path(tmp_name)
    try:
        with response, os.fdopen(fd, "wb") as out:
            length_header = response.headers.get("Content-Length")
            expected_length = int(length_header) if length_header and length_header.isdigit() else None
            digest = hashlib.sha256()
            received = 0
            show = progress and sys.stderr.isatty()
            with tqdm(
                total=expected_length,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                file=sys.stderr,
                disable=not show,
                leave=False,
            ) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK_BYTES)
                    except http.client.IncompleteRead as e:
                        received += len(e.partial)
                        raise WeightsError(
                            f"download of {url} was truncated: got {received} of {expected_length} bytes"
                        ) from e
                    except (TimeoutError, OSError) as e:
                        raise ModelNotFoundError(
                            f"download of {url} failed after {received} bytes: {e}"
                        ) from e
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected_length is not None and received != expected_length:
            raise WeightsError(f"download of {url} was truncated: got {received} of {expected_length} bytes")
        actual = digest.hexdigest()
        if expected is not None and not actual.startswith(expected):
            raise WeightsError(
                f"download of {url} is corrupt: sha256 {actual} does not match the expected {expected}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _verified.add(_file_key(dest))
    return dest


def _explicit(spec_name: str, weights: str | os.PathLike[str]) -> ResolvedWeights:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"{spec_name}: weight file {path} does not exist")
    return ResolvedWeights(path=path, format=explicit_format(path), origin="explicit", source=None)


def _downloadable(spec: ModelSpec) -> list[WeightSource]:
    """Sources with an official URL: only these can be in the cache (downloads put them there)."""
    return [source for source in spec.weights if source.url is not None]


def _offline_candidates(root: Path, source: WeightSource) -> list[Path]:
    names = [*source.offline_names, source.filename]
    return [root / name for name in dict.fromkeys(names)]


def find_local_weights(
    spec: ModelSpec,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    offline_dir: str | os.PathLike[str] | None = None,
) -> ResolvedWeights | None:
    """Weights already on this machine (cache, then offline dir), by existence only: no hashing.

    For listings (`rtpose models`); resolve_weights() is what verifies checksums before use.
    """
    cache = weights_cache_dir(cache_dir)
    for source in _downloadable(spec):
        path = cache / source.filename
        if path.is_file():
            return ResolvedWeights(path, source.format, "cache", source)
    root = offline_root(offline_dir)
    if root is not None:
        for source in spec.weights:
            for path in _offline_candidates(root, source):
                if path.is_file():
                    return ResolvedWeights(path, _offline_format(path, source), "offline", source)
    return None


def resolve_weights(
    spec: ModelSpec,
    weights: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    offline_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> ResolvedWeights:
    """Find usable weights for `spec`; logs one line saying which, or raises ModelNotFoundError.

    Order: the explicit `weights` file -> the cache (`<cache>/weights/<filename>`, sha256 checked once
    per process; a corrupt file is deleted) -> the offline dir (each source's `offline_names`, then its
    filename) -> the official URL (downloaded into the cache).
    """
    if weights is not None:
        resolved = _explicit(spec.name, weights)
        _log_choice(spec, resolved, "weights from file")
        return resolved

    tried: list[str] = []
    if not spec.weights:
        tried.append("this model lists no weight files (no official download, no offline name)")

    cache = weights_cache_dir(cache_dir)
    for source in _downloadable(spec):
        path = cache / source.filename
        if not path.is_file():
            tried.append(f"cache: {path} (not there)")
            continue
        if verify_file(path, source.sha256):
            resolved = ResolvedWeights(path, source.format, "cache", source)
            _log_choice(spec, resolved, "weights from cache")
            return resolved
        logger.warning(
            "%s: cached weights %s fail their sha256 check (expected %s...); deleting them",
            spec.name,
            path,
            source.sha256,
        )
        path.unlink(missing_ok=True)
        tried.append(f"cache: {path} (corrupt, deleted)")

    root = offline_root(offline_dir)
    if root is None:
        tried.append(f"offline dir: {OFFLINE_ENV} not set")
    else:
        for source in spec.weights:
            for path in _offline_candidates(root, source):
                if not path.is_file():
                    tried.append(f"offline dir: {path} (not there)")
                    continue
                # A file under the official name must be the official bytes; other names may hold the
                # same weights in another format, which no official checksum describes.
                if path.name == source.filename and not verify_file(path, source.sha256):
                    logger.warning(
                        "%s: offline file %s fails its sha256 check (expected %s...); skipping it",
                        spec.name,
                        path,
                        source.sha256,
                    )
                    tried.append(f"offline dir: {path} (wrong sha256)")
                    continue
                resolved = ResolvedWeights(path, _offline_format(path, source), "offline", source)
                _log_choice(spec, resolved, "weights from offline dir")
                return resolved

    if spec.weights and not _downloadable(spec):
        tried.append("download: this model has no official download address")
    for source in _downloadable(spec):
        url = str(source.url)
        if not download:
            tried.append(f"download: {url} (downloads disabled)")
            continue
        path = cache / source.filename
        logger.info("%s: downloading %s", spec.name, url)
        try:
            download_file(url, path, source.sha256, progress=progress)
        except (ModelNotFoundError, WeightsError) as e:
            tried.append(f"download: {e}")
            continue
        resolved = ResolvedWeights(path, source.format, "download", source)
        _log_choice(spec, resolved, f"weights downloaded from {url} to")
        return resolved

    raise ModelNotFoundError(_not_found_message(spec, tried))


def _log_choice(spec: ModelSpec, resolved: ResolvedWeights, how: str) -> None:
    logger.info("%s: %s %s", spec.name, how, resolved.describe())


def _not_found_message(spec: ModelSpec, tried: list[str]) -> str:
    lines = [f"{spec.name}: no weights found. Tried:"]
    lines += [f"  - {item}" for item in tried]
    names = [n for s in spec.weights for n in dict.fromkeys([*s.offline_names, s.filename])]
    fix = "Fix: pass --weights FILE (.pth, .onnx, .tflite or .xml)"
    if names:
        fix += f", or set {OFFLINE_ENV} to a folder holding one of: {', '.join(names)}"
    else:
        fix += f", or set {OFFLINE_ENV} to a folder of weight files"
    lines.append(fix)
    return "\n".join(lines)
