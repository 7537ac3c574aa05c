"""Tile sizes of our depthwise kernel (`rtpose.engines.depthwise`) per layer shape, against cuDNN.

    python scripts/depthwise_tiles.py [--batches-pose 1 8 64] [--batches-det 1 8] [--wide]

For every depthwise layer shape of RTMPose-m and RTMDet-nano (channels, map size, kernel, stride, how many
such layers) and batch size: GPU time of cuDNN's depthwise convolution + SiLU, of our kernel with the tile
rule in use (`_blocks`), and of the best tile (pixels x channels x warps) found by a sweep; every tile is
checked against the float32 convolution. Times are CUDA-graph replays (`triton.testing.do_bench_cudagraph`).
Prints `MICRO` lines per shape and `SUM` lines per model and batch (layer counts included). Needs CUDA.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench_cudagraph

from rtpose.engines import depthwise

#: (channels, height, width, kernel, stride, layers of this shape)
POSE = [(48, 64, 48, 5, 1, 2), (96, 32, 24, 5, 1, 4), (192, 16, 12, 5, 1, 4), (384, 8, 6, 5, 1, 2)]
DETECTOR = [
    (16, 160, 160, 3, 2, 1), (16, 80, 80, 3, 1, 1), (16, 80, 80, 5, 1, 1), (32, 80, 80, 3, 2, 1),
    (32, 40, 40, 3, 1, 3), (32, 40, 40, 5, 1, 3), (64, 40, 40, 3, 2, 2), (64, 20, 20, 3, 1, 8),
    (64, 20, 20, 5, 1, 4), (128, 20, 20, 3, 2, 2), (128, 10, 10, 3, 1, 2), (128, 10, 10, 5, 1, 2),
    (64, 40, 40, 3, 1, 5), (128, 20, 20, 3, 1, 1), (256, 10, 10, 3, 1, 1), (64, 10, 10, 3, 1, 4),
]  # fmt: skip


#: (pixels, channels, warps) tried per shape. Every new combination is a Triton compile of its own (1-3 s
#: each on a busy host): the full grid took over 200 s for the first shape, so the default is a small one.
NARROW = [(p, c, 4) for c, p in itertools.product((16, 32, 64), (32, 64, 128))]
WIDE = [
    (p, c, w)
    for c, p, w in itertools.product((16, 32, 64, 128), (16, 32, 64, 128, 256), (2, 4, 8))
    if 256 <= p * c <= 16384
]


def launch(x, taps, bias, out, kernel, stride, block_p, block_c, warps) -> None:
    batch, channels, height, width = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    pixels = batch * out_h * out_w
    grid = (triton.cdiv(pixels, block_p), triton.cdiv(channels, block_c))
    depthwise._depthwise_kernel[grid](
        x, taps, bias, out, pixels, channels, height, width, out_h, out_w, *x.stride(),
        SH=stride, SW=stride, PH=kernel // 2, PW=kernel // 2, DH=1, DW=1, KH=kernel, KW=kernel,
        HAS_BIAS=True, SILU=True, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip


Tile = tuple[int, int, int]


def measure(
    batch: int, channels: int, height: int, width: int, kernel: int, stride: int, tiles: list[Tile]
) -> tuple:
    """(cuDNN + SiLU ms, rule tile, its ms, (best ms, best tile...)) for one layer shape and batch."""
    options = {"device": "cuda", "dtype": torch.float16}
    x = torch.randn(batch, channels, height, width, **options).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, kernel, kernel, **options)
    bias = torch.randn(channels, **options)
    taps = weight.reshape(channels, kernel, kernel).permute(1, 2, 0).contiguous()
    pad = kernel // 2
    want = F.silu(F.conv2d(x.float(), weight.float(), bias.float(), stride, pad, 1, channels))
    out = torch.empty_like(want, dtype=torch.float16, memory_format=torch.channels_last)

    def ours(block_p: int, block_c: int, warps: int) -> float:
        def run() -> None:
            launch(x, taps, bias, out, kernel, stride, block_p, block_c, warps)

        run()
        error = float((out.float() - want).abs().max())
        assert error < 5e-2, (channels, height, width, kernel, stride, block_p, block_c, warps, error)
        return do_bench_cudagraph(run, rep=20)

    def library() -> None:
        F.silu(F.conv2d(x, weight, bias, stride, pad, 1, channels))

    t_library = do_bench_cudagraph(library, rep=30)
    rule = depthwise._blocks(channels, out.shape[2] * out.shape[3])
    t_rule = ours(*rule, 4)
    best = (t_rule, *rule, 4)
    widest = max(16, triton.next_power_of_2(channels))
    for block_p, block_c, warps in tiles:
        if block_c <= widest:
            best = min(best, (ours(block_p, block_c, warps), block_p, block_c, warps))
    return t_library, rule, t_rule, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches-pose", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--batches-det", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--wide", action="store_true", help="sweep 100+ tiles per shape (slow: compiles)")
    args = parser.parse_args()
    tiles = WIDE if args.wide else NARROW
    for model, shapes, batches in (("pose", POSE, args.batches_pose), ("det", DETECTOR, args.batches_det)):
        for batch in batches:
            sums = {"cudnn": 0.0, "rule": 0.0, "best": 0.0}
            for channels, height, width, kernel, stride, layers in shapes:
                t_library, rule, t_rule, best = measure(batch, channels, height, width, kernel, stride, tiles)
                sums["cudnn"] += t_library * layers
                sums["rule"] += t_rule * layers
                sums["best"] += best[0] * layers
                print(
                    f"MICRO {model} b{batch} C{channels} {height}x{width} k{kernel} s{stride} x{layers}: "
                    f"cuDNN+SiLU {t_library * 1e3:7.2f} us, rule {rule} {t_rule * 1e3:7.2f} us, "
                    f"best {best[0] * 1e3:7.2f} us at (pixels, channels, warps) {best[1:]}",
                    flush=True,
                )
            totals = ", ".join(f"{name} {value * 1e3:.1f} us" for name, value in sums.items())
            print(f"SUM {model} b{batch}: {totals}", flush=True)


if __name__ == "__main__":
    main()
