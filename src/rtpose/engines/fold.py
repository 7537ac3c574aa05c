"""Fold eval-mode BatchNorm into the convolution that feeds it, without torch.fx.

TensorRT folds `conv -> bn` into one convolution; Inductor does not (outside `freezing`), it keeps the
BN as an extra pointwise pass over the conv output. We fold before export so that the exported graph
holds only `conv (+ bias) -> activation`.

Which BN follows which conv is not read from attribute names or registration order (neither says what
`forward` does): one traced call with forward hooks records, for every BatchNorm, whether its input is
the very tensor a convolution returned. Both modules must run exactly once. The folded network is then
checked numerically against the original; a network whose forward reuses a conv output elsewhere (so
that folding would be wrong) is caught there and left unfolded.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class FoldReport:
    """What `fold_batchnorm` did: the (conv, bn) module names folded, and the check it passed."""

    pairs: tuple[tuple[str, str], ...]
    max_abs_diff: float
    folded: bool


def _foldable_bn(bn: nn.Module) -> bool:
    return isinstance(bn, _BN_TYPES) and bn.track_running_stats and bn.running_mean is not None


def find_conv_bn_pairs(module: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """Names of (conv, bn) pairs where the BN consumes the conv's output directly, found by one call."""
    names = {m: n for n, m in module.named_modules()}
    calls: dict[str, int] = {}
    conv_outputs: list[tuple[str, torch.Tensor]] = []  # tensors kept alive so identity checks are sound
    bn_inputs: list[tuple[str, torch.Tensor]] = []

    def on_conv(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        conv_outputs.append((name, out))

    def on_bn(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        bn_inputs.append((name, args[0]))

    handles = []
    for mod in module.modules():
        if isinstance(mod, _CONV_TYPES):
            handles.append(mod.register_forward_hook(on_conv))
        elif _foldable_bn(mod):
            handles.append(mod.register_forward_hook(on_bn))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()

    pairs = []
    for bn_name, bn_input in bn_inputs:
        for conv_name, conv_out in conv_outputs:
            if conv_out is bn_input and calls[conv_name] == 1 and calls[bn_name] == 1:
                pairs.append((conv_name, bn_name))
                break
    return pairs


def _fold_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    assert isinstance(conv, _CONV_TYPES) and isinstance(bn, _BN_TYPES)
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
        scale = gamma * inv_std
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)
        weight = conv.weight.double() * scale.reshape(shape)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale + beta
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        else:
            conv.bias.copy_(bias.to(conv.bias.dtype))


def _replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _outputs_as_list(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [v for v in out if isinstance(v, torch.Tensor)]
    raise TypeError(f"cannot compare network outputs of type {type(out).__name__}")


@contextmanager
def _exact_float32() -> Iterator[None]:
    """TF32 off for the check: with it (PyTorch's default for cuDNN convs) float32 convs on Ampere+ GPUs
    differ by ~1e-2 between two equivalent networks, which would hide a wrong fold or fail a right one."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                         deterministic=cudnn.deterministic, allow_tf32=False):  # fmt: skip
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def fold_batchnorm(module: nn.Module, example: torch.Tensor) -> tuple[nn.Module, FoldReport]:
    """A copy of `module` (eval mode) with every directly fed BatchNorm folded into its conv.

    `example` is one input batch in the module's dtype and device. The folded copy must reproduce
    the original within float32 rounding; otherwise the unfolded copy is returned, with a warning.
    """
    original = copy.deepcopy(module).eval()
    folded = copy.deepcopy(original)
    pairs = find_conv_bn_pairs(folded, example)
    for conv_name, bn_name in pairs:
        _fold_into_conv(folded.get_submodule(conv_name), folded.get_submodule(bn_name))
        _replace_submodule(folded, bn_name, nn.Identity())
    with torch.no_grad(), _exact_float32():
        want = _outputs_as_list(original(example))
        got = _outputs_as_list(folded(example))
    diff = max(
        (float((a.float() - b.float()).abs().max()) for a, b in zip(want, got, strict=True)), default=0.0
    )
    scale = max((float(a.float().abs().max()) for a in want), default=1.0)
    if diff > 1e-4 + 1e-3 * max(1.0, scale):
        warnings.warn(
            f"BatchNorm folding changed the outputs (max abs diff {diff:.3g}); building without folding",
            RuntimeWarning,
            stacklevel=2,
        )
        return original, FoldReport(pairs=(), max_abs_diff=diff, folded=False)
    return folded, FoldReport(pairs=tuple(pairs), max_abs_diff=diff, folded=bool(pairs))
