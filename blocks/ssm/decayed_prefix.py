"""The decayed prefix readout: a prefix sum of decayed state contributions, read out through a second decay.

Per batch ``b``, position ``s``, channel ``e`` and state ``n``::

    Q_s[e, n]    = sum_{j <= s} exp(A[e, n] * before_j[e]) * w_j[e] * B_j[n]
    out_s[e]     = sum_n C_s[n] * exp(A[e, n] * after_s[e]) * Q_s[e, n]

This is the shared part of SIGMA's every-prefix flipped scan
(:func:`zoo.blocks.flips.partial_flip_prefix_outputs`): in the partially flipped order the
older items are scanned newest first, so item ``j``'s contribution ``Δ_j u_j B_j`` (Mamba Eq. 2a)
reaches the end of that reversed run decayed only by the items older than it,
``exp(A * sum_{i<j} Δ_i)`` (``before_j``); ``Q_s`` is then the reversed run's final state for every
prefix at once, and ``after_s`` the decay of the steps that follow it. Every exponent is ``A`` (negative)
times a non-negative sum of steps, so nothing grows: the sum never forms a decay's inverse.

:func:`decayed_prefix_readout_ref` is the plain PyTorch expression, which holds ``Q`` as a
``(b, l, e, n)`` tensor; the compiled CPU kernel (``decayed_prefix_cpu.cpp``, used when the compiled
kernels are enabled, :mod:`zoo.blocks.compiled`) keeps one ``Q`` of ``n`` states per channel while it
walks through time, and its backward pass is the matching reverse-time sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.blocks.ssm import cpu_kernel


def decayed_prefix_readout(before: Tensor, w: Tensor, B: Tensor, A: Tensor, after: Tensor, C: Tensor) -> Tensor:
    """``out (b, l, e)`` of the module docstring from ``before, w, after (b, l, e)``, ``B, C (b, l, n)`` and
    ``A (e, n)``; the compiled CPU kernel where it applies, else :func:`decayed_prefix_readout_ref`."""
    if before.shape != w.shape or after.shape != w.shape or w.dim() != 3:
        raise ValueError(f"decayed_prefix_readout: before, w, after must be one (b, l, e) shape, got "
                         f"{tuple(before.shape)}, {tuple(w.shape)}, {tuple(after.shape)}")
    if A.shape != (w.shape[2], B.shape[-1]) or B.shape != C.shape or B.shape[:2] != w.shape[:2]:
        raise ValueError(f"decayed_prefix_readout: expected A (e, n) and B, C (b, l, n) for w {tuple(w.shape)}, got "
                         f"A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    if cpu_kernel.applies("decayed_prefix", before, w, B, A, after, C):
        return cpu_kernel.decayed_prefix_compiled(before, w, B, A, after, C)
    return decayed_prefix_readout_ref(before, w, B, A, after, C)


def decayed_prefix_readout_ref(before: Tensor, w: Tensor, B: Tensor, A: Tensor, after: Tensor, C: Tensor) -> Tensor:
    """The readout as PyTorch operations over ``(b, l, e, n)`` tensors (autograd gives the gradients)."""
    states = (torch.exp(before.unsqueeze(-1) * A) * w.unsqueeze(-1) * B.unsqueeze(-2)).cumsum(1)
    return torch.einsum("blen,bln->ble", torch.exp(after.unsqueeze(-1) * A) * states, C)
