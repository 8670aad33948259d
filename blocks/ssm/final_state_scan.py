"""Many short selective scans from a zero state, each read out at its last step only.

Per row ``r`` and channel ``e``, over steps ``k = 0 .. S - 1`` (Mamba Eq. 2a-2b)::

    h_k  = exp(delta_k * A[e]) * h_{k-1} + delta_k * u_k * B_k        h_{-1} = 0
    y[r, e] = C_r · h_{S-1} + D[e] * u_{S-1}

SIGMA's every-prefix pass (:func:`zoo.blocks.flips.partial_flip_prefix_outputs`) runs one such
scan of ``d_conv - 1 + 1 + remain`` steps per prefix: a batch of 128 windows of 50 items is 6,400 rows
of 9 steps. The general scan reads out every step and keeps chunk-start states for its backward pass,
which at 9 steps costs as much as the recurrence itself; the compiled kernel here
(``final_state_scan_cpu.cpp``) reads out once and keeps nothing. Elsewhere (no compiler,
``SEQREC_ZOO_CPU_KERNEL=0``, a tracer, CUDA) it is :func:`~zoo.blocks.ssm.selective_scan` read at the last
step.
"""

from __future__ import annotations

from torch import Tensor

from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.selective_scan import selective_scan


def final_state_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """``y (rows, e)`` of the module docstring from ``u, delta (rows, e, S)`` (``delta`` the step itself, no
    bias or softplus applied here), ``A (e, n)``, ``B (rows, S, n)``, ``C (rows, n)`` and ``D (e,)``."""
    rows, dim, steps = u.shape
    if delta.shape != u.shape or A.shape[0] != dim or B.shape != (rows, steps, A.shape[1]) or C.shape != (rows, A.shape[1]):
        raise ValueError(f"final_state_scan: expected u, delta (rows, e, S), A (e, n), B (rows, S, n), C (rows, n); got "
                         f"u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)}")
    if cpu_kernel.applies("final_state_scan", u, delta, A, B, C, D):
        return cpu_kernel.final_state_scan_compiled(u, delta, A, B, C, D)
    return final_state_scan_ref(u, delta, A, B, C, D)


def final_state_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """The same through :func:`~zoo.blocks.ssm.selective_scan`, with ``C`` at every step, read at the last."""
    return selective_scan(u, delta, A, B.transpose(1, 2), C.unsqueeze(-1).expand(-1, -1, u.shape[-1]), D=D)[..., -1]
