"""Mamba's step size ``Δ = softplus(s_Δ(x) + bias)`` (Gu & Dao 2023, "Mamba", Alg. 2) where it is formed outside
a scan kernel: scoring from one readout, SIGMA's every-prefix pass, M2Rec's multi-scale Mamba.

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
