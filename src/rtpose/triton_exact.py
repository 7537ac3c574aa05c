"""What our Triton kernels share: the import guard, where they can run, and float arithmetic rounded
exactly as torch's separate elementwise kernels round it.

Our kernels replace chains of torch kernels in the CUDA-graph hot path and must give the same values
bit for bit (their tests compare with `==`). Triton lets the compiler contract a multiply and an add into
one FMA, and its `/` is an approximate division; torch's kernels round every operation. The libdevice
`*_rn` functions (round to nearest, never contracted) restore that. Under `TRITON_INTERPRET=1` (NumPy on
the CPU, for the tests) the plain operators are already correctly rounded and are used instead.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # CPU-only installs: the torch versions serve
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
#: the `RN` argument of our kernels: use the libdevice functions (not in the interpreter)
ROUND_EACH_OP = not INTERPRETED


def available(device: torch.device) -> bool:
    """Whether our kernels can run on `device` (Triton installed; a CUDA device, or the interpreter)."""
    return triton is not None and (device.type == "cuda" or INTERPRETED)


def wanted(device: torch.device) -> bool:
    """`available` and not turned off by the user (RTPOSE_TRITON=0 keeps the torch versions)."""
    return available(device) and os.environ.get("RTPOSE_TRITON", "1") != "0"


if triton is not None:

    @triton.jit
    def mul(a, b, RN: tl.constexpr):
        return libdevice.mul_rn(a, b) if RN else a * b

    @triton.jit
    def add(a, b, RN: tl.constexpr):
        return libdevice.add_rn(a, b) if RN else a + b

    @triton.jit
    def sub(a, b, RN: tl.constexpr):
        return libdevice.sub_rn(a, b) if RN else a - b

    @triton.jit
    def div(a, b, RN: tl.constexpr):
        return libdevice.div_rn(a, b) if RN else a / b
