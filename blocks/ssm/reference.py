"""Plain loops over time for the two scans: the references beside the fast paths.

As mamba-ssm ships ``selective_scan_ref`` beside ``selective_scan_fn``, these are the slow,
obviously correct forms of :func:`~zoo.blocks.ssm.selective_scan.selective_scan` and
:func:`~zoo.blocks.ssm.ssd.ssd_scan`, written without chunking, blocking or compiled code. Tests check
every fast path against them in float64; the SSM benchmark times them as the baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INF = float("inf")


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """The selective scan (Mamba, Gu & Dao 2023, Eq. 2a-2b with the discretisation of §3.2) one time step at a time.

    ``h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t``, ``y_t = C_t . h_t (+ D u_t)``, then ``y *= silu(z)``;
    ``delta`` gets ``delta_bias`` and softplus first when asked. Same arguments and layouts as
    :func:`zoo.blocks.ssm.selective_scan.selective_scan` (``B``/``C`` as ``(D, N)``, ``(B, N, L)`` or
    ``(B, G, N, L)``) and the semantics of mamba-ssm's ``selective_scan_ref``: the slow, obviously
    correct reference that tests and benchmarks compare the fast paths with.
    """
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    def per_step(P):  # B or C as one (batch, dim, d_state) value per time step
        if P.dim() == 2:
            return [P.expand(batch, dim, P.shape[1])] * length
        if P.dim() == 3:
            return [P_t[:, None].expand(batch, dim, P.shape[1]) for P_t in P.unbind(-1)]
        return [P_t.repeat_interleave(dim // P.shape[1], dim=1) for P_t in P.unbind(-1)]

    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for u_t, delta_t, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), per_step(B), per_step(C)):
        h = torch.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y


def ssd_scan_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False,
                 dt_limit=(0.0, INF)):
    """The SSD recurrence (Mamba2, Dao & Gu 2024, §3 with scalar ``A`` per head) one time step at a time.

    ``S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T``, ``y_t = S_t C_t + D x_t``, ``y_t *= silu(z_t)``; ``dt``
    gets ``dt_bias``, softplus and the clamp to ``dt_limit`` first. Same arguments as
    :func:`zoo.blocks.ssm.ssd.ssd_scan` (without ``chunk_size``); returns ``(y, final state)``. The slow
    reference that tests and benchmarks compare the chunked and compiled paths with.
    """
    b, l, h, p = x.shape
    heads_per_group = h // B.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    B, C = (P.repeat_interleave(heads_per_group, dim=2) for P in (B, C))  # each head's group: (b, l, h, n)
    state = initial_states if initial_states is not None else x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        state = torch.exp(dt_t * A)[..., None, None] * state + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]
        y_t = (state * C_t[:, :, None, :]).sum(-1)
        if D is not None:
            y_t = y_t + x_t * (D[:, None] if D.dim() == 1 else D)
        ys.append(y_t)
    y = torch.stack(ys, 1) if ys else x.new_zeros(b, 0, h, p)
    if z is not None:
        y = y * F.silu(z)
    return y, state
