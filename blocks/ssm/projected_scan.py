"""The Mamba layer's selective scan with its step formed from the low-rank projection (Gu & Dao 2023, "Mamba",
Alg. 2: ``Δ = τ_Δ(Parameter + s_Δ(x))``, ``s_Δ(x) = Linear_D(Linear_R(x))``; mamba-ssm's ``dt_proj`` of
``x_proj``'s ``dt``).

:func:`projected_selective_scan` is :func:`zoo.blocks.ssm.selective_scan.selective_scan` with
``delta = weight @ low`` (``low (b, R, l)``, ``weight (d, R)``, ``R = ceil(D / 16)``), the softplus on, and the
step zeroed wherever ``valid`` is False (a padded position: no decay, no input, so the state passes through
unchanged). On the CPU the compiled kernel forms the raw step a chunk of positions at a time, so neither the
``(b, d, l)`` step nor its gradient is ever written: the projection's product, the masking pass and their
backward passes were about a fifteenth of a Mamba layer's training step (docs/kernels.md). Elsewhere (CUDA, no
compiler, ``SEQREC_ZOO_CPU_KERNEL=0``, a tracer) it forms the step with PyTorch operations and calls
:func:`~zoo.blocks.ssm.selective_scan.selective_scan`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.selective_scan import selective_scan


def projected_selective_scan(u: Tensor, low: Tensor, weight: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             D: Tensor | None = None, z: Tensor | None = None, delta_bias: Tensor | None = None,
                             valid: Tensor | None = None) -> Tensor:
    """``selective_scan(u, weight @ low, A, B, C, D, z, delta_bias, delta_softplus=True)`` with the step 0 where
    ``valid`` is False.

    ``u, z``: ``(b, d, l)``; ``low``: ``(b, R, l)`` (any strides: a transposed slice of ``x_proj``'s output);
    ``weight``: ``(d, R)``; ``valid``: ``(b, l)`` boolean or None (every step kept); the rest as for
    :func:`~zoo.blocks.ssm.selective_scan.selective_scan`, ``B, C`` input-dependent ``(b, n, l)`` or
    ``(b, g, n, l)``. Returns ``out (b, d, l)`` in ``u``'s dtype.
    """
    if low.dim() != 3 or weight.dim() != 2 or low.shape[0] != u.shape[0] or low.shape[1] != weight.shape[1] or \
            low.shape[2] != u.shape[-1] or weight.shape[0] != u.shape[1]:
        raise ValueError(f"projected_selective_scan: expected low (b, R, l) and weight (d, R) for u (b, d, l); got low "
                         f"{tuple(low.shape)}, weight {tuple(weight.shape)}, u {tuple(u.shape)}")
    if valid is not None and (valid.dtype != torch.bool or valid.shape != (u.shape[0], u.shape[-1])):
        raise ValueError(f"projected_selective_scan: valid must be a boolean (b, l) = {(u.shape[0], u.shape[-1])} "
                         f"tensor; got {valid.dtype} {tuple(valid.shape)}")
    if B.dim() > 2 and C.dim() > 2 and cpu_kernel.applies("selective_scan", u, low, weight, A, B, C, D, z, delta_bias,
                                                           valid):
        return cpu_kernel.projected_selective_scan_compiled(u, low, weight, A, B, C, D, z, delta_bias, valid)
    delta = torch.matmul(weight, low)
    if valid is not None:  # softplus(lowest + bias) is exactly 0, and so is its slope; in place: no one saved delta
        delta.masked_fill_(~valid.unsqueeze(1), torch.finfo(delta.dtype).min)
    return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)
