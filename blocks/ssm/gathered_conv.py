"""A depthwise convolution whose taps read the positions a table names.

For ``S`` outputs per position, batch row ``b``, position ``t`` and channel ``c``, with ``K`` taps::

    a[s, b, t, c] = bias[c] + sum_k weight[c, k] * x[b, source[s, b, t, k], c]      (source -1: the tap reads zero)
    y = silu(a)                                                                     (or a itself)

With ``source[0, b, t, k] = t - K + 1 + k`` it is Mamba's causal short convolution (Gu & Dao 2023, §3.4);
other tables give windows cut short, reversed, or reaching to fixed positions. SIGMA's every-prefix pass
(:func:`zoo.blocks.flips.partial_flip_prefix_outputs`) needs nine such windows per position, each a sum of a
few shifted copies of the input; as one table the compiled kernel (``causal_conv_cpu.cpp``) reads the input
once per sequence and writes each output once, where the shifted products wrote and re-read whole tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.blocks.ssm import cpu_kernel


def gathered_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None, source: Tensor, silu: bool = True) -> Tensor:
    """``y (S, B, T, C)`` of the module docstring from ``x (B, L, C)``, ``weight (C, K)``, ``bias (C,)`` or None and
    ``source (S, B, T, K)`` of int64 in ``[-1, L)``; the compiled CPU kernel where it applies."""
    batch, length, channels = x.shape if x.dim() == 3 else (None, None, None)
    if (x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != channels or source.dim() != 4
            or source.shape[1] != batch or source.shape[3] != weight.shape[1] or source.dtype != torch.long
            or (bias is not None and bias.shape != (channels,))):
        raise ValueError(f"gathered_depthwise_conv: expected x (B, L, C), weight (C, K), bias (C,) or None and source "
                         f"(S, B, T, K) of int64; got x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias "
                         f"{None if bias is None else tuple(bias.shape)}, source {tuple(source.shape)} {source.dtype}")
    if source.numel() and (source.min() < -1 or source.max() >= length):
        raise ValueError(f"gathered_depthwise_conv: source positions must lie in [-1, {length}), got "
                         f"[{source.min().item()}, {source.max().item()}]")
    if cpu_kernel.applies("causal_conv", x, weight, bias, source):
        return cpu_kernel.gathered_conv_compiled(x, weight, bias, source, silu)
    return gathered_depthwise_conv_ref(x, weight, bias, source, silu)


def gathered_depthwise_conv_ref(x: Tensor, weight: Tensor, bias: Tensor | None, source: Tensor, silu: bool = True) -> Tensor:
    """The same in PyTorch: one gather of the input per tap."""
    padded = F.pad(x, (0, 0, 0, 1))  # position L holds zeros: where the -1 taps read
    index = source.where(source >= 0, x.shape[1])
    rows = torch.arange(x.shape[0], device=x.device).view(1, -1, 1)
    a = sum(weight[:, k] * padded[rows, index[..., k]] for k in range(weight.shape[1]))
    if bias is not None:
        a = a + bias
    return F.silu(a) if silu else a
