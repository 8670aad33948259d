"""SSD scan (Mamba2's state-space duality): ``ssd_scan`` with ``mamba_chunk_scan_combined``'s API.

The recurrence, per batch row, head ``h`` (group ``g = h // (nheads / ngroups)``) and time ``t``::

    dt_t  = clamp(softplus(dt_t + dt_bias) if dt_softplus else dt_t + dt_bias, *dt_limit)
    S_t   = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T          S: (headdim, d_state), S_0 = initial state
    y_t   = S_t C_t + D x_t,      y_t *= silu(z_t)  when z is given

(Mamba2 paper, Dao & Gu 2024, §6 "SSD algorithm".) ``dt`` is always clamped to
``dt_limit``, so with the default ``(0, inf)`` a negative ``dt`` counts as 0 -- as in mamba-ssm's
Triton kernel.

The pure-PyTorch path is the chunked matmul form (paper §6, Listing 1): the sequence is cut into
chunks of ``Q`` steps; inside a chunk the output is a masked attention-like product
``Y = (L ∘ C B^T) (dt x)`` with the decay matrix ``L[i, j] = exp(cumA_i - cumA_j)`` for ``j <= i``.
``L`` is split as ``exp(cumA_i - m) exp(m - cumA_j)`` around the chunk's centre ``m``, so the masked
``C B^T`` is shared by all heads of a group and the product is one matmul over all of them; the
chunk is chosen small enough that the factors stay within ``exp(±60)`` (no fp32 overflow). Each
chunk's contribution to the state is one matmul, and states pass from chunk to chunk by a
sequential loop over chunks. Chunks are processed in blocks sized to a fixed working-set budget,
so memory grows with the chunk size and the block, not with ``l × d_state``. The matmul core of a
block is a ``torch.autograd.Function`` with a hand-written backward (``_ChunkedScan``) that keeps
only its inputs and the chunk-boundary states.

On CUDA with mamba-ssm installed, ``ssd_scan`` calls ``mamba_chunk_scan_combined`` instead; on CPU
with the compiled kernels enabled (the default, :mod:`zoo.blocks.compiled`), the compiled recurrence of :mod:`zoo.blocks.ssm.cpu_kernel`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.blocks.compiled import needs_grad, tracing
from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm._dispatch import use_cuda_kernels
from zoo.blocks.ssm.reference import ssd_scan_ref

# Largest chunk the pure path uses: the result does not depend on the chunk (up to rounding), and on
# a CPU the intra-chunk work (``O(Q)`` per step) dominates beyond this size.
PURE_MAX_CHUNK = 32
# Elements of the largest per-block intermediates (``(b, k, Q, h·p)`` inputs and ``(b, k, n, h·p)``
# states): a few MB, small enough to stay in the allocator's reusable heap and near the caches.
BLOCK_BUDGET_ELEMENTS = 1 << 21
# Longest block: bounds the temporaries to a fraction of a long sequence's inputs + outputs at small batch.
MAX_BLOCK_STEPS = 512
# Largest log-decay range ``a_1 - a_Q`` allowed inside a chunk: the split decay factors then lie in
# ``[exp(-60), exp(60)]``, far from fp32's overflow (exp(88)) and subnormals (exp(-87)).
MAX_CHUNK_LOG_DECAY = 120.0


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba2's SSD scan; the signature and semantics of mamba-ssm's ``mamba_chunk_scan_combined``.

    Shapes: ``x``, ``z`` ``(b, l, h, p)``; ``dt`` ``(b, l, h)``; ``A`` ``(h,)``; ``B``, ``C``
    ``(b, l, g, n)`` with ``h`` divisible by ``g``; ``D`` ``(h,)`` or ``(h, p)``; ``dt_bias``
    ``(h,)``; ``initial_states`` ``(b, h, p, n)``. Returns ``y (b, l, h, p)`` and, with
    ``return_final_states``, the state after the last step ``(b, h, p, n)``.

    ``chunk_size`` is the CUDA kernel's chunk; the pure path uses ``min(chunk_size, 32, l)``, halved
    while some chunk's log-decay range exceeds ``MAX_CHUNK_LOG_DECAY`` (the result is the same up to
    rounding). Half-precision inputs are computed in float32 on the pure
    path and returned in their dtype. Under a tracer (``torch.export``, ONNX) it runs the step-by-step
    reference, which traces for any batch size.
    """
    _check_shapes(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_limit)
    if use_cuda_kernels(x, dt, A, B, C):
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        return mamba_chunk_scan_combined(
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
            dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states,
        )
    if tracing():  # the chunking reads dt's values and the batch size, which export keeps symbolic
        y, final = ssd_scan_ref(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit)
    elif x.shape[1] > 0 and cpu_kernel.applies("ssd_scan", x, dt, A, B, C, D, z, dt_bias, initial_states):
        y, final = cpu_kernel.ssd_scan_compiled(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit)
    else:
        y, final = _ssd_scan_pure(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit)
    return (y, final) if return_final_states else y


def discretize_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float]) -> Tensor:
    """The step size the scan uses: ``clamp(softplus?(dt + dt_bias), *dt_limit)``.

    ``F.softplus``'s default threshold (identity above 20) is the one mamba-ssm's kernels use.
    """
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def _check_shapes(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_limit) -> None:
    if x.dim() != 4:
        raise ValueError(f"ssd_scan: x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    b, l, h, p = x.shape
    if B.dim() != 4 or B.shape[:2] != (b, l):
        raise ValueError(f"ssd_scan: B must be (batch={b}, seqlen={l}, ngroups, dstate), got shape {tuple(B.shape)}")
    g, n = B.shape[2:]
    expected = {
        "dt": (dt, (b, l, h)),
        "A": (A, (h,)),
        "C": (C, (b, l, g, n)),
        "z": (z, (b, l, h, p)),
        "dt_bias": (dt_bias, (h,)),
        "initial_states": (initial_states, (b, h, p, n)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"ssd_scan: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    if g == 0 or h % g != 0:
        raise ValueError(f"ssd_scan: nheads ({h}) must be divisible by ngroups ({g})")
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"ssd_scan: D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be a positive int, got {chunk_size!r}")
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ValueError(f"ssd_scan: dt_limit must be (min, max) with min <= max, got {dt_limit!r}")


def _ssd_scan_pure(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit):
    """The chunked SSD algorithm in PyTorch; returns ``(y, final_state)``."""
    out_dtype = x.dtype
    dtype = torch.promote_types(x.dtype, torch.float32)
    b, l, h, p = x.shape
    n = B.shape[-1]
    dt = discretize_dt(dt.to(dtype), dt_bias, dt_softplus, dt_limit)
    dA = dt * A.to(dtype)
    g = B.shape[2]
    if initial_states is None:
        initial_states = torch.zeros(b, h, p, n, dtype=dtype, device=x.device)
    if l == 0:
        return x.new_zeros(x.shape), initial_states.to(out_dtype)
    state = _group_major(initial_states.to(dtype), g)
    chunk = _pure_chunk(dA.detach(), min(chunk_size, PURE_MAX_CHUNK, l))
    chunks_per_block = max(1, min(BLOCK_BUDGET_ELEMENTS // (b * h * p * max(chunk, n)), MAX_BLOCK_STEPS // chunk))
    block_len = chunk * chunks_per_block
    grad_mode = needs_grad(x, dt, A, B, C, D, z, initial_states)
    D = D.to(dtype) if D is not None else None
    outputs = []
    out = None if grad_mode else torch.empty(b, l, h, p, dtype=out_dtype, device=x.device)
    # ``split`` (not slicing in the loop): its backward assembles the inputs' gradients in one pass.
    blocks = [t.split(block_len, dim=1) if t is not None else [None] * math.ceil(l / block_len)
              for t in (x, dt, dA, B, C, z)]
    for start, pieces in zip(range(0, l, block_len), zip(*blocks)):
        end = start + pieces[0].shape[1]
        args = (chunk, *pieces, D, state)
        y, state = _ssd_block(*args)
        if out is None:
            outputs.append(y.to(out_dtype))
        else:
            out[:, start:end] = y
    y = torch.cat(outputs, dim=1) if out is None else out
    return y, _head_major(state, h).to(out_dtype)


def _ssd_block(chunk: int, x, dt, dA, B, C, z, D, state) -> tuple[Tensor, Tensor]:
    """SSD over one block of consecutive steps, starting from ``state``; returns ``(y, state)``.

    ``state`` is kept group-major, ``(b, g, n, heads_per_group · p)``, so that every matmul multiplies
    all heads of a group at once. The block is zero-padded at its end to a whole number of chunks:
    padded steps have ``dt = 0``, so they neither decay nor feed the state.

    Inside a chunk the decay ``exp(a_i - a_j)`` (``a`` the within-chunk cumulative log-decay) is
    split as ``exp(a_i - m) · exp(m - a_j)`` around the chunk's centre ``m = (a_1 + a_Q) / 2``, so the
    masked score matrix ``C B^T`` is shared by all heads and every product is one matmul over the
    heads. Both factors lie in ``[exp(-r/2), exp(r/2)]`` for the chunk's log-decay range ``r``, which
    ``_pure_chunk`` keeps below ``MAX_CHUNK_LOG_DECAY``. ``m`` is a constant of the algebra (the
    result does not depend on it), so it is detached: the gradient through it is exactly zero.
    """
    dtype = state.dtype
    b, T, h, p = x.shape
    g, n = B.shape[2:]
    hg = h // g
    pad = (-T) % chunk
    x, B, C = (_pad_time(t.to(dtype), pad) for t in (x, B, C))
    dt, dA = _pad_time(dt, pad), _pad_time(dA, pad)
    k = (T + pad) // chunk

    a_cum = dA.view(b, k, chunk, h).cumsum(2)  # (b, k, Q, h): within-chunk log-decay
    centre = (0.5 * (a_cum[:, :, :1] + a_cum[:, :, -1:])).detach()  # (b, k, 1, h)
    # Inputs weighted by their decay to the centre: X'_j = exp(m - a_j) dt_j x_j, group-major.
    weight = torch.exp(centre - a_cum) * dt.view(b, k, chunk, h)
    x_w = (x.view(b, k, chunk, g, hg, p) * weight.view(b, k, chunk, g, hg, 1)).transpose(2, 3)
    x_w = x_w.reshape(b, k, g, chunk, hg * p).contiguous()
    Bg = B.view(b, k, chunk, g, n).transpose(2, 3)  # (b, k, g, Q, n)
    Cg = C.view(b, k, chunk, g, n).transpose(2, 3)

    to_end = a_cum[:, :, -1] - centre[:, :, 0]  # (b, k, h): log-decay from the centre to the chunk's end
    next_centre = torch.cat([centre[:, 1:, 0], torch.zeros_like(centre[:, :1, 0])], dim=1)
    carry = torch.exp(to_end + next_centre).view(b, k, g, hg)
    scaled = _scale_heads(state, torch.exp(centre[:, 0, 0]).view(b, g, hg))
    y, state = _ChunkedScan.apply(x_w, Bg.contiguous(), Cg.contiguous(), carry, scaled)
    decay_out = torch.exp(a_cum - centre).view(b, k, chunk, g, hg, 1)
    y = (y.view(b, k, g, chunk, hg, p).transpose(2, 3) * decay_out).reshape(b, k * chunk, h, p)[:, :T]
    if D is not None:
        y = y + x[:, :T] * (D.unsqueeze(-1) if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y, state


class _ChunkedScan(torch.autograd.Function):
    """The matmul core of one block, with a hand-written backward (no tape inside the block).

    Per chunk ``c`` (batched over rows and groups; ``X'`` the centre-weighted inputs, ``f`` the per-head
    carry factor ``exp(m_{c+1} + a_Q - m_c)``, ``R`` the state scaled to the chunk's centre)::

        Y_c     = tril(C_c B_c^T) X'_c + C_c R_c
        R_{c+1} = f_c ⊙ (R_c + B_c^T X'_c)

    Inputs: ``X' (b, k, g, Q, hg·p)``, ``B``, ``C`` ``(b, k, g, Q, n)``, ``carry (b, k, g, hg)``,
    ``R_1 (b, g, n, hg·p)``. Returns ``Y (b, k, g, Q, hg·p)`` and ``R_{k+1}``. Only the inputs and the
    chunk-boundary states ``R_c`` are kept for the backward, which runs the adjoint recurrence
    ``dR_c = C_c^T dY_c + f_c ⊙ dR_{c+1}`` backwards over chunks and batches everything else as matmuls.
    """

    @staticmethod
    def forward(ctx, x_w: Tensor, B: Tensor, C: Tensor, carry: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        b, k, g, Q, hgp = x_w.shape
        n, hg = B.shape[-1], carry.shape[-1]
        entering = x_w.new_empty(b, k, g, n, hgp)  # R_c, the state entering each chunk
        fed = B.transpose(-1, -2) @ x_w  # B_c^T X'_c, updated in place to R_{c+1}
        for c in range(k):
            entering[:, c] = state
            state = fed[:, c].add_(state).view(b, g, n, hg, -1).mul_(carry[:, c].view(b, g, 1, hg, 1)).view(b, g, n, hgp)
        y = C @ entering
        y.view(-1, Q, hgp).baddbmm_(_scores(B, C).view(-1, Q, Q), x_w.view(-1, Q, hgp))
        ctx.save_for_backward(x_w, B, C, carry, entering)
        return y, state.clone()

    @staticmethod
    def backward(ctx, dy: Tensor, dstate: Tensor) -> tuple[Tensor, ...]:
        x_w, B, C, carry, entering = ctx.saved_tensors
        b, k, g, Q, hgp = x_w.shape
        n, hg = B.shape[-1], carry.shape[-1]
        dy = dy.contiguous()
        d_entering = C.transpose(-1, -2) @ dy  # C_c^T dY_c, completed in place to dR_c
        leaving = (B.transpose(-1, -2) @ x_w).add_(entering)  # R_c + B_c^T X'_c
        d_leaving = torch.empty_like(leaving)  # d(R_c + B_c^T X'_c) = f_c ⊙ dR_{c+1}
        d_carry = torch.empty_like(carry)
        d_next = dstate.contiguous()
        for c in reversed(range(k)):
            f = carry[:, c].view(b, g, 1, hg, 1)
            torch.mul(d_next.view(b, g, n, hg, -1), f, out=d_leaving[:, c].view(b, g, n, hg, -1))
            d_carry[:, c] = leaving[:, c].mul_(d_next).view(b, g, n, hg, -1).sum((2, 4))
            d_next = d_entering[:, c].add_(d_leaving[:, c])
        scores = _scores(B, C)
        dx_w = B @ d_leaving
        dx_w.view(-1, Q, hgp).baddbmm_(scores.view(-1, Q, Q).transpose(-1, -2), dy.view(-1, Q, hgp))
        d_scores = (dy @ x_w.transpose(-1, -2)).tril_()
        dC = dy @ entering.transpose(-1, -2)
        dC.view(-1, Q, n).baddbmm_(d_scores.view(-1, Q, Q), B.view(-1, Q, n))
        dB = x_w @ d_leaving.transpose(-1, -2)
        dB.view(-1, Q, n).baddbmm_(d_scores.view(-1, Q, Q).transpose(-1, -2), C.view(-1, Q, n))
        return dx_w, dB, dC, d_carry, d_next


def _scores(B: Tensor, C: Tensor) -> Tensor:
    """``tril(C B^T)`` per chunk: ``(..., Q, n)`` pair -> ``(..., Q, Q)``."""
    return (C @ B.transpose(-1, -2)).tril_()


def _pure_chunk(dA: Tensor, chunk: int) -> int:
    """The largest chunk ``<= chunk`` (halving) whose every within-chunk log-decay range is at most
    ``MAX_CHUNK_LOG_DECAY``; 1 always qualifies (a one-step chunk has range 0)."""
    b, l, h = dA.shape
    while chunk > 1:
        steps = F.pad(dA, (0, 0, 0, (-l) % chunk)).view(b, -1, chunk, h)
        log_range = steps[:, :, 0] - steps.sum(2)  # a_1 - a_Q >= 0
        if log_range.max() <= MAX_CHUNK_LOG_DECAY:
            break
        chunk = (chunk + 1) // 2
    return chunk


def _scale_heads(state: Tensor, scale: Tensor) -> Tensor:
    """``state (b, g, n, hg · p)`` times a per-head ``scale (b, g, hg)``."""
    b, g, n, _ = state.shape
    hg = scale.shape[-1]
    return (state.view(b, g, n, hg, -1) * scale.view(b, g, 1, hg, 1)).view(b, g, n, -1)


def _group_major(state: Tensor, ngroups: int) -> Tensor:
    """``(b, h, p, n)`` -> ``(b, g, n, heads_per_group · p)``."""
    b, h, p, n = state.shape
    return state.view(b, ngroups, h // ngroups, p, n).permute(0, 1, 4, 2, 3).reshape(b, ngroups, n, -1)


def _head_major(state: Tensor, nheads: int) -> Tensor:
    """``(b, g, n, heads_per_group · p)`` -> ``(b, h, p, n)``."""
    b, g, n, _ = state.shape
    return state.view(b, g, n, nheads // g, -1).permute(0, 1, 3, 4, 2).reshape(b, nheads, -1, n)


def _pad_time(t: Tensor, pad: int) -> Tensor:
    """Zero-pad ``t (b, T, ...)`` with ``pad`` steps at the end of the time axis."""
    if pad == 0:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1)


def ssd_flops(batch: int, seqlen: int, nheads: int, headdim: int, ngroups: int, dstate: int, chunk_size: int) -> float:
    """Matmul FLOPs of the pure path's chunked algorithm (multiply-adds counted as 2)."""
    chunk = min(chunk_size, PURE_MAX_CHUNK, seqlen)
    padded = math.ceil(seqlen / chunk) * chunk
    per_step = (
        2 * chunk * dstate * ngroups  # C B^T scores
        + 2 * chunk * headdim * nheads  # (L ∘ C B^T) (dt x)
        + 2 * headdim * dstate * nheads  # chunk states
        + 2 * headdim * dstate * nheads  # C S_in
    )
    return float(batch * padded * per_step)
