"""Many short selective scans from a zero state, each read out at its last step only.

Per row ``r`` and channel ``e``, over steps ``k = 0 .. S - 1`` (Mamba Eq. 2a-2b)::

    h_k  = exp(delta_k * A[e]) * h_{k-1} + delta_k * u_k * B_k        h_{-1} = 0
    y[r, e] = C_r · h_{S-1} + D[e] * u_{S-1}

optionally with a step that only decays (``extra[r, e]``, no input) just before step ``extra_at``, folded into
that step's decay: ``exp((delta + extra) A) = exp(extra A) exp(delta A)``, one exponential for the two.

SIGMA's every-prefix pass (:func:`zoo.blocks.flips.partial_flip_prefix_outputs`) runs one such
scan of ``d_conv - 1 + remain`` steps per prefix, its reversed run's decay folded in: a batch of 128 windows of
50 items is 6,400 rows of 8 steps. Scoring reads every Mamba layer at its newest position through it
(``Mamba.forward_last``). The general scan reads out every step and keeps chunk-start states for its backward pass,
which at 8 steps costs as much as the recurrence itself; the compiled kernel here
(``final_state_scan_cpu.cpp``) reads out once and keeps nothing. Elsewhere (no compiler,
``SEQREC_ZOO_CPU_KERNEL=0``, a tracer, CUDA) it is :func:`~zoo.blocks.ssm.selective_scan` read at the last
step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.blocks.compiled import needs_grad
from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.selective_scan import selective_scan
from zoo.blocks.ssm.softplus import projected_softplus


def final_state_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                     extra: Tensor | None = None, extra_at: int = 0) -> Tensor:
    """``y (rows, e)`` of the module docstring from ``u, delta (rows, e, S)`` (``delta`` the step itself, no
    bias or softplus applied here), ``A (e, n)``, ``B (rows, S, n)``, ``C (rows, n)`` and ``D (e,)``.

    ``extra (rows, e)``, when given, is a step that only decays, just before step ``extra_at``: step ``extra_at``
    decays by ``exp((delta + extra) A)`` (``exp(x A) exp(y A) = exp((x + y) A)``, one exponential for two steps)."""
    rows, dim, steps = u.shape
    if delta.shape != u.shape or A.shape[0] != dim or B.shape != (rows, steps, A.shape[1]) or C.shape != (rows, A.shape[1]):
        raise ValueError(f"final_state_scan: expected u, delta (rows, e, S), A (e, n), B (rows, S, n), C (rows, n); got "
                         f"u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)}")
    if extra is not None and (extra.shape != (rows, dim) or not 0 <= extra_at < steps):
        raise ValueError(f"final_state_scan: expected extra (rows, e) = {(rows, dim)} and 0 <= extra_at < {steps}; got "
                         f"extra {tuple(extra.shape)}, extra_at {extra_at}")
    if cpu_kernel.applies("final_state_scan", u, delta, A, B, C, D, extra):
        return cpu_kernel.final_state_scan_compiled(u, delta, A, B, C, D, extra, extra_at)
    return final_state_scan_ref(u, delta, A, B, C, D, extra, extra_at)


def projected_final_state_scan(u: Tensor, low: Tensor, weight: Tensor, bias: Tensor | None, valid: Tensor | None,
                               A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """``final_state_scan(u, delta, A, B, C, D)`` with the Mamba layer's steps ``delta = valid * softplus(low @ weight^T +
    bias)`` (:func:`~zoo.blocks.ssm.softplus.projected_softplus`; ``low (rows, S, R)``, ``weight (e, R)``, ``valid
    (rows, S)``, 0 at a padded position), ``delta`` read as ``(rows, e, S)``.

    For inference on the CPU (nothing to differentiate) the compiled kernel forms the steps a row at a time and
    skips the softplus at padded positions, where the two calls would write and reread the ``(rows, S, e)`` steps:
    scoring reads every Mamba layer at its newest position this way (``Mamba.forward_last``). With gradients it is
    the two calls."""
    if valid is not None and valid.shape != low.shape[:2]:
        raise ValueError(f"projected_final_state_scan: valid must be (rows, S) = {tuple(low.shape[:2])}, got "
                         f"{tuple(valid.shape)}")
    if not needs_grad(u, low, weight, bias, A, B, C, D) and low.dim() == 3 and \
            low.shape[:2] == (u.shape[0], u.shape[2]) and \
            cpu_kernel.applies("final_state_scan", u, low, weight, bias, valid, A, B, C, D):
        return cpu_kernel.projected_final_state_scan_compiled(u, low, weight, bias, valid, A, B, C, D)
    delta = projected_softplus(low, weight, bias, valid)
    return final_state_scan(u, delta.transpose(1, 2), A, B, C, D)


def final_state_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         extra: Tensor | None = None, extra_at: int = 0) -> Tensor:
    """The same through :func:`~zoo.blocks.ssm.selective_scan`, with ``C`` at every step, read at the last; ``extra``
    as a step of its own, with no input."""
    if extra is not None:
        def before_at(steps: Tensor, inserted: Tensor, dim: int) -> Tensor:
            first, rest = steps.split([extra_at, steps.shape[dim] - extra_at], dim)
            return torch.cat([first, inserted, rest], dim)
        u, delta = before_at(u, torch.zeros_like(u[..., :1]), -1), before_at(delta, extra.unsqueeze(-1), -1)
        B = before_at(B, torch.zeros_like(B[:, :1]), 1)
    return selective_scan(u, delta, A, B.transpose(1, 2), C.unsqueeze(-1).expand(-1, -1, u.shape[-1]), D=D)[..., -1]
