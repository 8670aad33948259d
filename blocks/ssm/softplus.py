"""Mamba's step size ``Δ = softplus(s_Δ(x) + bias)`` (Gu & Dao 2023, "Mamba", Alg. 2) where it is formed outside
a scan kernel: scoring from one readout, SIGMA's every-prefix pass, M2Rec's multi-scale Mamba.

:func:`projected_softplus` forms it from the rank-``R`` input ``dt`` in the same pass (``s_Δ`` is ``dt_proj`` of
``dt``), optionally zeroing steps that are no item, where the projection, the masking and the softplus would each
write and reread a ``(..., E)`` tensor.

Same values and gradient as ``torch.nn.functional.softplus`` (beta 1, threshold 20: the identity above it), except
that the compiled kernel gives exactly 0 where the value would be under ``e^-87`` in float32 (``e^-708`` in float64),
the denormal range the scans flush to zero (``step_size.h``).
torch's CPU softplus evaluates ``log1p`` one element at a time (about 8 ms on a ``(256, 128, 50)`` tensor, twelve
times an ``exp``); on the CPU the compiled kernel (``softplus_cpu.cpp``) runs the same formula vectorised,
elsewhere (CUDA, no compiler, ``SEQREC_ZOO_CPU_KERNEL=0``, a tracer) it is torch's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from zoo.blocks.ssm import cpu_kernel


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` elementwise (``x`` itself above 20), in ``x``'s dtype."""
    if x.is_floating_point() and cpu_kernel.applies("softplus", x):
        return cpu_kernel.softplus_compiled(x)
    return F.softplus(x)


def projected_softplus(low: Tensor, weight: Tensor, bias: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """``softplus(F.linear(low, weight, bias)) * valid[..., None]``: ``low (..., R)``, ``weight (E, R)``, ``bias (E,)``,
    ``valid`` (0/1, broadcastable to ``low.shape[:-1]``; no gradient) -> ``(..., E)``. The compiled kernel
    (``softplus_cpu.cpp``) on the CPU, else these PyTorch operations."""
    if low.shape[-1:] != weight.shape[1:] or weight.dim() != 2 or (bias is not None and bias.shape != weight.shape[:1]):
        raise ValueError(f"projected_softplus: expected low (..., R), weight (E, R), bias (E,); got low {tuple(low.shape)}, "
                         f"weight {tuple(weight.shape)}, bias {None if bias is None else tuple(bias.shape)}")
    if valid is not None:
        valid = valid.expand(low.shape[:-1])
    if low.is_floating_point() and cpu_kernel.applies("softplus", low, weight, bias, valid):
        return cpu_kernel.projected_softplus_compiled(low, weight, bias, valid)
    delta = softplus(F.linear(low, weight, bias))
    return delta if valid is None else delta * valid.unsqueeze(-1).to(delta.dtype)
