"""What the tests of our Triton kernels share: a skip mark where Triton is not installed, and a check run
in Triton's CPU interpreter (so CI without a GPU still compares the kernels with the torch versions)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"
)


def run_in_interpreter(code: str) -> None:
    """Run `code` in a fresh Python under TRITON_INTERPRET=1, from the repository root (the interpreter is
    chosen when a kernel is defined, so not in this process); fails with the end of its stderr."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
