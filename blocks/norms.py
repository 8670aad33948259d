"""Normalisation layers, and one factory that builds any of them by name (:func:`create_norm`)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks import compiled

NormKind = Literal["layernorm", "rmsnorm", "layernorm_c", "none"]
# Each kind's eps when a caller gives none: torch's LayerNorm default, mamba-ssm's RMSNorm, ConvRec's code.
DEFAULT_EPS = {"layernorm": 1e-5, "rmsnorm": 1e-5, "layernorm_c": 1e-6}
KERNEL_DTYPES = (torch.float32, torch.float64)  # what layer_norm_c_cpu.cpp computes in


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * g`` (Zhang & Sennrich 2019, Eq. 4)."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def layer_norm_c(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """ConvRec's layer norm in PyTorch operators: ``weight ⊙ (x − μ) / (σ_unbiased + eps) + bias`` over the last axis."""
    centred = x - x.mean(-1, keepdim=True)
    # σ_unbiased = |x − μ| / sqrt(n − 1), from the centred values at hand (a few times faster than Tensor.std on the CPU)
    std = torch.linalg.vector_norm(centred, dim=-1, keepdim=True) / math.sqrt(x.shape[-1] - 1)
    return torch.addcmul(bias, centred / (std + eps), weight)


class _CompiledLayerNormC(torch.autograd.Function):
    """:func:`layer_norm_c` by the compiled kernel (``layer_norm_c_cpu.cpp``): one pass a row each way."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y, means, norms = compiled.load("layer_norm_c").forward(rows, weight.contiguous(), bias.contiguous(), eps)
        ctx.save_for_backward(rows, weight, means, norms)
        ctx.eps = eps
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        rows, weight, means, norms = ctx.saved_tensors
        grad_rows = grad_y.reshape(rows.shape).contiguous()
        dx, dweight, dbias = compiled.load("layer_norm_c").backward(grad_rows, rows, weight.contiguous(), means, norms, ctx.eps)
        return dx.view(grad_y.shape), dweight, dbias, None


class LayerNormC(nn.Module):
    """ConvRec's layer norm: ``α ⊙ (x − μ) / (σ_unbiased + eps) + β`` over the last axis (docs/models/convrec.md, "ConvRec's layer norm").

    16-bit inputs (autocast's) are normalised in float32, as autocast runs torch's own layer norm, and the
    output is float32. On the CPU in float32 / float64 with the compiled kernels enabled
    (:mod:`zoo.blocks.compiled`) forward and backward run in ``layer_norm_c_cpu.cpp``; elsewhere (CUDA, other
    dtypes, a tracer) in PyTorch operators.
    """

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        if width < 2:
            raise ValueError(f"layernorm_c: the unbiased standard deviation needs width >= 2, got {width}")
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        same_dtype = x.dtype == self.weight.dtype == self.bias.dtype
        if same_dtype and x.dtype in KERNEL_DTYPES and compiled.applies("layer_norm_c", x, self.weight, self.bias):
            return _CompiledLayerNormC.apply(x, self.weight, self.bias, self.eps)
        return layer_norm_c(x, self.weight, self.bias, self.eps)


class GatedRMSNorm(nn.Module):
    """RMSNorm with a SiLU gate, per group of ``group_size`` channels (mamba-ssm's ``RMSNormGated``).

    ``norm_before_gate=False``: ``y = rmsnorm(x * silu(z)) * weight``; ``True``:
    ``y = rmsnorm(x) * weight * silu(z)``. ``rmsnorm(v) = v / sqrt(mean_group(v^2) + eps)``, computed
    in at least float32.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False) -> None:
        super().__init__()
        group_size = hidden_size if group_size is None else group_size
        if hidden_size % group_size != 0:
            raise ValueError(f"GatedRMSNorm: hidden_size {hidden_size} must be divisible by group_size {group_size}")
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        dtype = x.dtype
        compute = torch.promote_types(dtype, torch.float32)
        x = x.to(compute)
        gate = F.silu(z.to(compute)) if z is not None else None
        if gate is not None and not self.norm_before_gate:
            x = x * gate
        grouped = x.unflatten(-1, (-1, self.group_size))
        x = (grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + self.eps)).flatten(-2)
        x = x * self.weight.to(compute)
        if gate is not None and self.norm_before_gate:
            x = x * gate
        return x.to(dtype)


def create_norm(kind: NormKind, width: int, eps: float | None = None) -> nn.Module:
    """The norm ``kind`` over the last axis of width ``width``: torch's ``LayerNorm``, :class:`RMSNorm`,
    ConvRec's :class:`LayerNormC`, or none (identity). ``eps`` defaults per kind (:data:`DEFAULT_EPS`)."""
    if kind == "none":
        return nn.Identity()
    if kind not in DEFAULT_EPS:
        raise ValueError(f"unknown norm {kind!r}; expected one of {sorted(DEFAULT_EPS) + ['none']}")
    eps = DEFAULT_EPS[kind] if eps is None else eps
    if not eps > 0.0:
        raise ValueError(f"{kind}: eps must be > 0, got {eps}")
    if kind == "layernorm":
        return nn.LayerNorm(width, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(width, eps)
    return LayerNormC(width, eps)
