"""Depthwise convolution + bias + SiLU in one Triton kernel, for compiled CUDA engines.

Why our own kernel: cuDNN runs a depthwise convolution as a kernel of its own and Inductor adds the bias
and activation in a second one (it cannot fuse an epilogue into a library call). At the sizes of our
networks (batch 1-64, 8x6 to 80x80 maps, 24-768 channels) each such kernel is latency-bound, and
RTMDet-nano holds 41 depthwise convolutions, RTMPose-m 12. Letting Inductor generate them instead (the
convolution written as a sum of shifted inputs) fused the epilogue and won at batch 1, but its flat
elementwise kernel recomputes every index per tap and was 1.6x slower than cuDNN at 64 crops (H100,
docs/benchmarks.md). Here each program computes a tile of output pixels x channels: the pixel
coordinates and bounds are worked out once per tap for the whole tile, the loads are contiguous along
channels (channels_last), the sum runs in float32, then bias and SiLU are applied before the one store.

`fuse_depthwise_convs` swaps every depthwise convolution of a network (with the SiLU that follows it
inside our `ConvModule`) for `FusedDepthwiseConv2d`, a build step of compiled engines after BatchNorm
folding. The op is a `torch.library.triton_op`, so `torch.export` traces into it and AOTInductor compiles
the kernel into the engine package. On other devices the module computes the same with torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtpose.models.layers import ConvModule
from rtpose.triton_exact import triton

#: Larger kernels are left to the library (our networks use 3x3 and 5x5 depthwise kernels).
MAX_TAPS = 49
#: Triton installed and a torch with `triton_op` (2.6+); otherwise builds keep the library convolution.
KERNEL_AVAILABLE = triton is not None and hasattr(torch.library, "triton_op")

if KERNEL_AVAILABLE:
    import triton.language as tl

    @triton.jit
    def _depthwise_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,  # x (N, C, H, W) any strides; w (KH, KW, C); b (C,); y channels_last
        pixels, C, H, W, OH, OW, stride_n, stride_c, stride_h, stride_w,
        SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
        DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixels, flattened (n, oh, ow)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_in, c_in = p < pixels, c < C
        ow = p % OW
        oh = (p // OW) % OH
        n = p // (OW * OH)
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for i in tl.static_range(KH):
            ih = oh * SH - PH + i * DH
            row_ok = p_in & (ih >= 0) & (ih < H)
            for j in tl.static_range(KW):
                iw = ow * SW - PW + j * DW
                ok = row_ok & (iw >= 0) & (iw < W)
                at = n * stride_n + ih * stride_h + iw * stride_w
                values = tl.load(
                    x_ptr + at[:, None] + c[None, :] * stride_c, mask=ok[:, None] & c_in[None, :], other=0.0
                )
                tap = tl.load(w_ptr + (i * KW + j) * C + c, mask=c_in, other=0.0)
                acc += values.to(tl.float32) * tap.to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + c, mask=c_in, other=0.0).to(tl.float32)[None, :]
        if SILU:
            acc = acc * tl.sigmoid(acc)
        tl.store(y_ptr + p[:, None] * C + c[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=p_in[:, None] & c_in[None, :])  # fmt: skip

    def _blocks(channels: int, out_pixels_per_image: int) -> tuple[int, int]:
        """Tile of ~2,048 outputs: channel blocks that divide C where they can, pixel blocks no larger than
        one image's map needs (fixed by the static map size, not the dynamic batch)."""
        block_c = 64 if channels % 64 == 0 else 32 if channels % 32 == 0 else 16
        block_p = min(max(16, 2048 // block_c), max(16, triton.next_power_of_2(out_pixels_per_image)))
        return block_p, block_c

    @torch.library.triton_op("rtpose::depthwise_conv2d", mutates_args=())
    def depthwise_conv2d(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        silu: bool,
    ) -> torch.Tensor:
        """Depthwise convolution of x (N, C, H, W) with taps `weight` (KH, KW, C), plus bias, then SiLU
        where asked; the result is channels_last."""
        x = x.contiguous(memory_format=torch.channels_last)
        batch, channels, height, width = x.shape
        kernel_h, kernel_w = weight.shape[0], weight.shape[1]
        out_h = (height + 2 * padding[0] - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
        out_w = (width + 2 * padding[1] - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
        # allocated NHWC-contiguous and returned as a channels_last view: Inductor writes a fill kernel for a
        # non-contiguous `empty` (channels_last) that feeds a user kernel, and none for a contiguous one
        out = torch.empty((batch, out_h, out_w, channels), device=x.device, dtype=x.dtype)
        pixels = batch * out_h * out_w
        block_p, block_c = _blocks(channels, out_h * out_w)
        grid = (triton.cdiv(pixels, block_p), triton.cdiv(channels, block_c))
        torch.library.wrap_triton(_depthwise_kernel)[grid](
            x, weight, weight if bias is None else bias, out,
            pixels, channels, height, width, out_h, out_w, *x.stride(),
            SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
            KH=kernel_h, KW=kernel_w, HAS_BIAS=bias is not None, SILU=silu, BLOCK_P=block_p, BLOCK_C=block_c,
            num_warps=4,
        )  # fmt: skip
        return out.permute(0, 3, 1, 2)


def is_fusable_depthwise(conv: nn.Module) -> bool:
    """A 2-D depthwise convolution (one filter per channel) with zero padding and a small kernel."""
    if type(conv) is not nn.Conv2d:
        return False
    channels = conv.in_channels
    kernel_h, kernel_w = conv.kernel_size
    return (
        conv.groups == channels
        and conv.out_channels == channels
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and kernel_h * kernel_w <= MAX_TAPS
    )


class FusedDepthwiseConv2d(nn.Module):
    """A depthwise `nn.Conv2d` (and the SiLU after it, where `silu`), as one kernel on CUDA.

    library_above: batches larger than this run cuDNN's convolution instead (a `torch.cond` that an
    exported engine keeps): at 256 crops cuDNN's Hopper depthwise kernels, which tile space and reuse the
    input halo, are 2x faster than ours; at small batches ours wins.
    """

    def __init__(self, conv: nn.Conv2d, silu: bool = False, library_above: int | None = None) -> None:
        super().__init__()
        if not is_fusable_depthwise(conv):
            raise ValueError(f"not a depthwise Conv2d this module can replace: {conv}")
        self.stride: list[int] = list(conv.stride)
        self.padding: list[int] = list(conv.padding)  # type: ignore[arg-type]
        self.dilation: list[int] = list(conv.dilation)
        self.silu = silu
        self.library_above = library_above
        channels = conv.out_channels
        # taps last-axis-channels: (KH, KW, C), the layout the kernel reads one channel vector per tap from
        taps = conv.weight.detach().reshape(channels, *conv.kernel_size).permute(1, 2, 0)
        self.weight = nn.Parameter(taps.contiguous())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cuda and KERNEL_AVAILABLE):
            return self._library(x)
        if self.library_above is None:
            return self._ours(x)
        return torch.cond(x.shape[0] <= self.library_above, self._ours, self._library, (x,))

    def _ours(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.silu
        )

    def _library(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.weight.shape[-1]
        weight = self.weight.permute(2, 0, 1).unsqueeze(1)  # back to (C, 1, KH, KW)
        y = F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, groups=channels)
        y = F.silu(y) if self.silu else y
        return y.contiguous(memory_format=torch.channels_last)  # as our kernel returns it

    def extra_repr(self) -> str:
        kernel = tuple(self.weight.shape[:2])
        text = f"{self.weight.shape[-1]}, kernel_size={kernel}, stride={tuple(self.stride)}, silu={self.silu}"
        return text if self.library_above is None else f"{text}, cuDNN above batch {self.library_above}"


def fuse_depthwise_convs(module: nn.Module, library_above: int | None = None) -> int:
    """Replace every fusable depthwise convolution inside `module` (in place), together with its SiLU where
    it is a folded `ConvModule` (its BatchNorm already an Identity); returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if (
            isinstance(child, ConvModule)
            and is_fusable_depthwise(child.conv)
            and isinstance(child.bn, nn.Identity)
            and isinstance(child.activate, nn.SiLU | nn.Identity)
        ):
            silu = isinstance(child.activate, nn.SiLU)
            setattr(module, name, FusedDepthwiseConv2d(child.conv, silu=silu, library_above=library_above))
            replaced += 1
        elif is_fusable_depthwise(child):
            setattr(module, name, FusedDepthwiseConv2d(child, library_above=library_above))  # type: ignore[arg-type]
            replaced += 1
        else:
            replaced += fuse_depthwise_convs(child, library_above)
    return replaced
