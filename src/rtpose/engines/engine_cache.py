"""Where compiled engines live on disk, and when a file there may be trusted.

An engine is only valid for the exact weights, model, input size, GPU (name + compute capability),
torch/CUDA/Triton versions, precision, batch buckets, compiler options and engine format it was built
with. All of these go into a sha256 key; the file is `<cache>/engines/<spec>-<precision>-<key16>.pt2`
with a JSON sidecar next to it that repeats the key fields and holds the package's own sha256.

A file is trusted only if the sidecar's fields equal the expected ones and the package hashes to the
recorded digest. Builds happen under an exclusive `fcntl.flock` on `<engine>.lock` and end with an
atomic `os.replace`, so concurrent builders of one engine leave exactly one valid file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rtpose.models.weights import cache_root, sha256_file

__all__ = ["ENGINE_FORMAT_VERSION", "cache_root"]

#: bump when the package layout, wrapper or sidecar changes meaning
ENGINE_FORMAT_VERSION = 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_fields(device: torch.device) -> dict[str, Any]:
    """What identifies the hardware and software stack the kernels were generated for."""
    fields: dict[str, Any] = {"device_type": device.type, "torch": torch.__version__}
    try:
        import triton

        fields["triton"] = triton.__version__
    except ImportError:
        fields["triton"] = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        fields["device_name"] = torch.cuda.get_device_name(index)
        fields["compute_capability"] = f"{major}.{minor}"
        fields["cuda"] = torch.version.cuda
    else:
        fields["device_name"] = f"{platform.machine()} {_cpu_name()}"
        fields["compute_capability"] = None
        fields["cuda"] = None
    return fields


def engine_key(fields: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the key fields."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def engine_path(root: Path, spec_name: str, precision: str, key: str) -> Path:
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec_name)
    return root / "engines" / f"{safe_name}-{precision}-{key[:16]}.pt2"


def sidecar_path(package: Path) -> Path:
    return package.with_suffix(".json")


def lock_path(package: Path) -> Path:
    return package.with_suffix(".lock")


def read_sidecar(package: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(package).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def why_invalid(package: Path, fields: dict[str, Any] | None = None) -> str | None:
    """None if `package` may be trusted (for `fields`, when given); else the reason it may not."""
    if not package.is_file():
        return "no engine file"
    sidecar = read_sidecar(package)
    if sidecar is None:
        return "sidecar missing or unreadable"
    if fields is not None:
        recorded = sidecar.get("fields")
        if recorded != json.loads(json.dumps(fields, default=str)):
            return "sidecar fields do not match this build request"
        if sidecar.get("key") != engine_key(fields):
            return "sidecar key does not match"
    expected_digest = sidecar.get("sha256")
    if not isinstance(expected_digest, str):
        return "sidecar has no sha256"
    if sha256_file(package) != expected_digest:
        return "engine file does not match its recorded sha256 (corrupted or replaced)"
    return None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def publish(tmp_package: Path, package: Path, sidecar: dict[str, Any]) -> None:
    """Move a finished build into place: package first, then its sidecar, each atomically."""
    sidecar = {**sidecar, "sha256": sha256_file(tmp_package), "size": tmp_package.stat().st_size}
    _fsync_file(tmp_package)
    tmp_sidecar = tmp_package.with_suffix(".json.tmp")
    tmp_sidecar.write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str))
    _fsync_file(tmp_sidecar)
    os.replace(tmp_package, package)
    os.replace(tmp_sidecar, sidecar_path(package))


def temp_package_path(package: Path) -> Path:
    # AOTInductor insists on a name ending in .pt2
    return package.with_name(f".{package.stem}.{os.getpid()}.tmp.pt2")


def remove_stale_temps(package: Path) -> None:
    """Leftovers of crashed builds of this engine (call with the lock held)."""
    for leftover in package.parent.glob(f".{package.stem}.*.tmp*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


@contextlib.contextmanager
def exclusive_lock(package: Path) -> Iterator[None]:
    """Blocks until this process alone may build `package`."""
    path = lock_path(package)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
