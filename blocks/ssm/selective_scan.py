"""Mamba's selective scan: mamba-ssm's ``selective_scan_fn`` in pure PyTorch, dispatching to it on CUDA.

The recurrence (Gu & Dao 2023, "Mamba", Alg. 2 / eq. 2a-2b, zero-order-hold discretisation of A and
Euler discretisation of B, as in mamba-ssm's ``selective_scan_ref``), per batch b, channel d, state n::

    delta_t = softplus(delta_t + delta_bias)            (each optional)
    h_t[n]  = exp(delta_t * A[d, n]) * h_{t-1}[n] + delta_t * B_t[n] * u_t      h_{-1} = 0
    y_t     = sum_n C_t[n] * h_t[n] + D[d] * u_t
    out_t   = y_t * silu(z_t)                                                   (optional)

B and C are time-invariant ``(d, n)`` or input-dependent ``(b, n, l)`` / ``(b, g, n, l)``; with ``g``
groups channel ``d`` reads group ``d // (d_inner / g)``.

The pure algorithm (:class:`_BlockedScan`) is a blocked scan without an autograd tape. Time is cut
into *groups* of ``lanes * steps`` positions processed one after another, each in buffers of
``lanes * steps`` states (reused, sized to stay in cache). Inside a group, ``lanes`` consecutive runs of
``steps`` positions are scanned side by side, one vectorised ``addcmul`` per step for all lanes: a first
pass runs every lane from a zero state keeping only its end, the lanes are linked
(``start_{c+1} = end_c + exp(A * sum(delta over lane c)) * start_c``), and a second pass writes the
states from the true lane starts. Only products of the actual decays ``exp(delta * A)`` appear, never
their inverses, so float32 cannot overflow where the recurrence itself does not. The backward pass is
the reverse-time adjoint scan, built the same way, recomputing each group's states from the state
saved at the group's start. Memory is bounded by the group size, not by ``l * d * n``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.blocks.compiled import kernel_dtype, needs_grad, tracing
from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm._dispatch import optional_function, use_cuda_kernels
from zoo.blocks.ssm.reference import selective_scan_ref

# Per-buffer working-set size (elements) a group aims for, and the lane tensor size beyond which
# running lanes side by side stops paying (per-op overhead is amortised by then).
_GROUP_ELEMENTS = 1 << 19
_LANE_ELEMENTS = 1 << 16


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba-ssm's ``selective_scan_fn``: same signature, shapes and semantics (see the module docstring).

    ``u, delta, z``: ``(b, d, l)``; ``A``: ``(d, n)`` real; ``B, C``: ``(d, n)``, ``(b, n, l)`` or
    ``(b, g, n, l)``; ``D, delta_bias``: ``(d,)``. Returns ``out (b, d, l)`` in ``u``'s dtype and, with
    ``return_last_state``, also the final state ``(b, d, n)`` (float32, or float64 for float64 inputs).
    On CUDA with mamba-ssm installed this calls its kernel (``SEQREC_ZOO_PURE_SSM=1`` forces the pure path);
    on CPU with the compiled kernels enabled (the default, :mod:`zoo.blocks.compiled`) it calls the compiled kernel of :mod:`zoo.blocks.ssm.cpu_kernel`.
    Under a tracer (``torch.export``, ONNX) it runs the step-by-step reference, which traces for any batch size.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if use_cuda_kernels(u, delta, A, B, C, D, z, delta_bias):
        kernel = optional_function("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if tracing():  # the blocked scan's blocking depends on the batch size, which export keeps symbolic
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if B.dim() > 2 and C.dim() > 2 and cpu_kernel.applies("selective_scan", u, delta, A, B, C, D, z, delta_bias):
        return cpu_kernel.selective_scan_compiled(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_blocked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_blocked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    lanes: int | None = None,
    steps: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The pure-PyTorch selective scan (any device). ``lanes`` / ``steps`` override the automatic blocking."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    for name, value in (("lanes", lanes), ("steps", steps)):
        if value is not None and value < 1:
            raise ValueError(f"selective_scan: {name} must be a positive integer, got {value}")
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    dtype = kernel_dtype(*tensors)
    batch, dim, length = u.shape
    lanes, steps = _blocking(batch * dim * A.shape[1], length, lanes, steps, needs_grad(*tensors))
    cast = [t.to(dtype) if t is not None else None for t in tensors]
    out, last_state = _BlockedScan.apply(*cast, delta_softplus, lanes, steps)
    out = out.to(u.dtype)
    return (out, last_state) if return_last_state else out


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported by the pure-PyTorch scan; pass a real A (dim, d_state)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            ok = t.shape == (dim, d_state)
        elif t.dim() == 3:
            ok = t.shape == (batch, d_state, length)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (d_state, length) and t.shape[1] > 0 and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be ({dim}, {d_state}), ({batch}, {d_state}, {length}) or "
                f"({batch}, groups, {d_state}, {length}) with {dim} divisible by groups; got {tuple(t.shape)}"
            )
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"selective_scan: B and C must have the same number of groups, got {B.shape[1]} and {C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _blocking(state_elements: int, length: int, lanes: int | None, steps: int | None, needs_grad: bool) -> tuple[int, int]:
    """Choose (lanes, steps): lanes run side by side, ``lanes * steps`` positions make one group.

    A group's buffers (``state_elements * lanes * steps`` each) stay near cache size; in training a
    group also spans at least ``sqrt(length)`` positions, so the states saved at group starts stay
    small next to the inputs.
    """
    positions = max(1, _GROUP_ELEMENTS // state_elements)
    if needs_grad:
        positions = max(positions, math.isqrt(length))
    positions = min(positions, length)
    if lanes is None:
        lanes = max(1, min(_LANE_ELEMENTS // state_elements, math.isqrt(positions)))
    if steps is None:
        steps = max(1, math.ceil(positions / lanes))
    return lanes, steps


class _Layout:
    """Per-group slices of the scan's tensors in the time-major layout ``(steps, b, g, lanes, ...)``.

    ``u``/``delta`` are ``(b, d, l)`` with ``d = g * h``. Group ``k`` covers positions
    ``[k * lanes * steps, (k + 1) * lanes * steps)``; each group's inputs are gathered (and its outputs
    written) per group, so no full-size relayout of the inputs is ever allocated. The last group, when
    ``l`` does not fill it, is zero-padded (padded steps have ``delta = 0``: no decay, no input, so they change nothing).
    States are kept as ``(..., n, h)``: channels innermost makes the broadcasts and the contraction
    over ``n`` fast.
    """

    def __init__(self, u: Tensor, A: Tensor, B: Tensor, C: Tensor, lanes: int, steps: int) -> None:
        self.batch, self.dim, self.length = u.shape
        self.d_state = A.shape[1]
        self.groups = max(B.shape[1] if B.dim() == 4 else 1, C.shape[1] if C.dim() == 4 else 1)
        self.heads = self.dim // self.groups
        self.lanes, self.steps = lanes, steps
        self.group_len = lanes * steps
        self.n_groups = max(1, math.ceil(self.length / self.group_len))
        self.group_shape = (steps, self.batch, self.groups, lanes, self.d_state, self.heads)
        self.A = self.states_from_channels(A).unsqueeze(1)  # (g, 1, n, h)
        self.A_log2 = self.A * math.log2(math.e)  # exp(x A) = exp2(x A log2 e); exp2 is ~3x faster on CPU

    def states_from_channels(self, x: Tensor) -> Tensor:
        """``(..., d, n)`` -> ``(..., g, n, h)``."""
        return x.reshape(*x.shape[:-2], self.groups, self.heads, self.d_state).transpose(-1, -2).contiguous()

    def states_to_channels(self, x: Tensor) -> Tensor:
        """``(..., g, n, h)`` -> ``(..., d, n)``."""
        return x.transpose(-1, -2).reshape(*x.shape[:-3], self.dim, self.d_state)

    def _span(self, x: Tensor, k: int) -> Tensor:
        """Positions of group ``k`` along the last dim, zero-padded to ``group_len``."""
        start = k * self.group_len
        piece = x[..., start : start + self.group_len]
        return F.pad(piece, (0, self.group_len - piece.shape[-1])) if piece.shape[-1] < self.group_len else piece

    def _time_major(self, x: Tensor, rows: int) -> Tensor:
        """``(b, c, group_len)`` -> ``(steps, b, c // rows, lanes, rows)``."""
        x = x.reshape(self.batch, x.shape[1] // rows, rows, self.lanes, self.steps)
        return x.permute(4, 0, 1, 3, 2)

    def channels(self, x: Tensor, k: int) -> Tensor:
        """Group ``k`` of a ``(b, d, l)`` tensor as ``(steps, b, g, lanes, h)``, contiguous (small: no ``n``)."""
        return self._time_major(self._span(x, k), self.heads).contiguous()

    def valid_positions(self, k: int) -> Tensor | None:
        """``(steps, 1, 1, lanes, 1)`` mask of group ``k``'s positions inside the sequence; None when all are."""
        start = k * self.group_len
        if start + self.group_len <= self.length:
            return None
        position = torch.arange(self.group_len, device=self.A.device).reshape(self.lanes, self.steps).t()
        return (position < self.length - start).to(self.A.dtype).reshape(self.steps, 1, 1, self.lanes, 1)

    def channel_vector(self, v: Tensor) -> Tensor:
        """A per-channel ``(d,)`` vector, broadcastable to ``(steps, b, g, lanes, h)``."""
        return v.reshape(1, 1, self.groups, 1, self.heads)

    def projection(self, t: Tensor, k: int) -> Tensor:
        """Group ``k`` of B or C, broadcastable to ``(steps, b, g, lanes, n, h)``."""
        if t.dim() == 2:
            return self.states_from_channels(t).reshape(1, 1, self.groups, 1, self.d_state, self.heads)
        if t.dim() == 3:
            t = t.unsqueeze(1)
        return self._time_major(self._span(t.flatten(1, 2), k), self.d_state).contiguous().unsqueeze(-1)

    def write(self, out: Tensor, k: int, value: Tensor) -> None:
        """Store group ``k``'s ``value`` (``(steps, b, c // rows, lanes, rows)``) into ``out`` ``(b, c, l)``."""
        start = k * self.group_len
        stop = min(start + self.group_len, self.length)
        if stop - start == self.group_len:
            self._time_major(out[..., start:stop], value.shape[-1]).copy_(value)
        else:
            full = out.new_empty(*out.shape[:-1], self.group_len)
            self._time_major(full, value.shape[-1]).copy_(value)
            out[..., start:stop] = full[..., : stop - start]


def _contract(x: Tensor, p: Tensor, scratch: Tensor) -> Tensor:
    """``sum_n x[..., n, h] * p[..., n, h|1]`` -> ``(..., h)``; ``scratch`` is a buffer of ``x``'s shape."""
    if p.shape[-1] == 1:
        return (p.transpose(-1, -2) @ x).squeeze(-2)
    return torch.mul(x, p, out=scratch).sum(-2)


class _Workspace:
    """Full-size buffers ``(steps, b, g, lanes, n, h)`` reused by every group.

    Fresh multi-megabyte tensors cost page faults on every allocation (several times the arithmetic),
    so each group writes into the same buffers with ``out=``.
    """

    def __init__(self, shape: tuple[int, ...], like: Tensor) -> None:
        self.shape, self.like = shape, like
        self._buffers: dict[str, Tensor] = {}

    def buffer(self, name: str, slot: int = 0) -> Tensor:
        key = f"{name}{slot}"
        if key not in self._buffers:
            self._buffers[key] = self.like.new_empty(self.shape)
        return self._buffers[key]

    def __getattr__(self, name: str) -> Tensor:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.buffer(name)


class _Group:
    """One group's states: the forward recurrence, recomputable in the backward pass.

    ``delta, u``: ``(steps, b, g, lanes, h)``; ``B``: broadcastable to ``(steps, b, g, lanes, n, h)``;
    ``A_log2``: ``A * log2(e)`` as ``(g, 1, n, h)``; ``start``: the state before the group ``(b, g, n, h)``.
    After construction ``states`` holds ``h_t`` for every step and lane, ``lane_starts`` the state before
    each lane ``(b, g, lanes, n, h)`` and ``decay`` = ``exp(delta * A)`` per step, all in ``ws``.

    With several lanes, a first pass runs every lane from a zero state keeping only its end, the lanes
    are linked (``start_{c+1} = end_c + lane_decay_c * start_c``), and a second pass writes the states.
    """

    def __init__(self, delta: Tensor, u: Tensor, A_log2: Tensor, B: Tensor, start: Tensor, ws: _Workspace, slot: int = 0) -> None:
        self.ws = ws
        self.decay = torch.mul(delta.unsqueeze(-2), A_log2, out=ws.decay).exp2_()
        states = torch.mul((delta * u).unsqueeze(-2), B, out=ws.buffer("states", slot))
        steps, lanes = states.shape[0], states.shape[3]
        if lanes == 1:
            self.lane_decay = None
            self.lane_starts = start.unsqueeze(2)
        else:
            self.lane_decay = _decay(delta.sum(0), A_log2)
            ends = _run(self.decay, states, reverse=False)
            lane_starts = [start]
            for c in range(lanes - 1):
                lane_starts.append(torch.addcmul(ends[:, :, c], self.lane_decay[:, :, c], lane_starts[-1]))
            self.lane_starts = torch.stack(lane_starts, dim=2)
        states[0].addcmul_(self.decay[0], self.lane_starts)
        for j in range(1, steps):
            states[j].addcmul_(self.decay[j], states[j - 1])
        self.states = states

    @property
    def end(self) -> Tensor:
        return self.states[-1, :, :, -1]

    def adjoint(self, grad_y: Tensor, C: Tensor, carry: Tensor) -> Tensor:
        """``lambda_t = dL/dh_t`` for every step: ``lambda_t = C_t * grad_y_t + decay_{t+1} * lambda_{t+1}``.

        ``carry`` is ``decay * lambda`` flowing in from the next group (or the last state's gradient).
        Lanes are handled like the forward pass, in reverse: carry into lane ``c`` from lane ``c + 1``.
        """
        adj = torch.mul(grad_y.unsqueeze(-2), C, out=self.ws.adj)
        steps, lanes = adj.shape[0], adj.shape[3]
        if lanes == 1:
            adj[-1].add_(carry.unsqueeze(2))
        else:
            firsts = _run(self.decay, adj, reverse=True)
            outs = self.decay[0] * firsts  # what each lane passes to the lane before it, from a zero carry
            carries = [carry]
            for c in range(lanes - 1, 0, -1):
                carries.append(torch.addcmul(outs[:, :, c], self.lane_decay[:, :, c], carries[-1]))
            adj[-1].add_(torch.stack(carries[::-1], dim=2))
        for j in range(steps - 2, -1, -1):
            adj[j].addcmul_(self.decay[j + 1], adj[j + 1])
        return adj

    def decay_gradient(self, adj: Tensor) -> Tensor:
        """``w_t = lambda_t * decay_t * h_{t-1}`` = dL/d(delta_t A) for every step and lane."""
        w = torch.mul(adj, self.decay, out=self.ws.w)
        w[1:].mul_(self.states[:-1])
        w[0].mul_(self.lane_starts)
        return w


def _run(decay: Tensor, inputs: Tensor, reverse: bool) -> Tensor:
    """Every lane's recurrence from a zero state, keeping only the current ``(b, g, lanes, n, h)`` value.

    Forward: ``x_j = inputs_j + decay_j * x_{j-1}``, returns each lane's last ``x``. Reverse:
    ``x_j = inputs_j + decay_{j+1} * x_{j+1}``, returns each lane's first ``x``.
    """
    steps = inputs.shape[0]
    order = range(steps - 2, -1, -1) if reverse else range(1, steps)
    x = inputs[steps - 1 if reverse else 0].clone()
    spare = torch.empty_like(x)
    for j in order:
        torch.addcmul(inputs[j], decay[j + 1 if reverse else j], x, out=spare)
        x, spare = spare, x
    return x


def _decay(delta: Tensor, A_log2: Tensor) -> Tensor:
    """``exp(delta[..., None] * A)`` given ``A_log2 = A * log2(e)``."""
    return (delta.unsqueeze(-2) * A_log2).exp2_()


class _BlockedScan(torch.autograd.Function):
    """The whole selective scan (module docstring) in one tape-free pass; returns ``(out, h_last)``.

    The elementwise parts (delta's bias and softplus, ``D``, the ``z`` gate) are applied per group too,
    so no full-size intermediate besides the output is ever allocated.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus: bool, lanes: int, steps: int):
        layout = _Layout(u, A, B, C, lanes, steps)
        ws = _Workspace(layout.group_shape, u)
        out = u.new_empty(u.shape)  # contiguous: groups write through views of it
        keep = any(ctx.needs_input_grad)
        state = u.new_zeros(layout.batch, layout.groups, layout.d_state, layout.heads)
        group_starts = u.new_empty(layout.n_groups, *state.shape) if keep else None
        for k in range(layout.n_groups):
            if keep:
                group_starts[k] = state
            delta_k, _ = _step_sizes(layout, delta, delta_bias, softplus, k)
            u_k = layout.channels(u, k)
            # Alternate two state buffers: ``state`` (a view of the last group's) stays valid.
            group = _Group(delta_k, u_k, layout.A_log2, layout.projection(B, k), state, ws, slot=k % 2)
            y_k = _contract(group.states, layout.projection(C, k), ws.scratch)
            if D is not None:
                y_k = y_k.addcmul_(layout.channel_vector(D), u_k)
            if z is not None:
                y_k = y_k.mul_(F.silu(layout.channels(z, k)))
            layout.write(out, k, y_k)
            state = group.end
        ctx.layout, ctx.softplus = layout, softplus
        if keep:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, group_starts)
        return out, layout.states_to_channels(state).clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_last: Tensor):
        u, delta, A, B, C, D, z, delta_bias, group_starts = ctx.saved_tensors
        layout: _Layout = ctx.layout
        ws = _Workspace(layout.group_shape, u)
        du, ddelta = u.new_empty(u.shape), u.new_empty(u.shape)
        dz = z.new_empty(z.shape) if z is not None else None
        dA = A.new_zeros(layout.groups, layout.d_state, layout.heads)
        dB = B.new_empty(B.shape) if B.dim() > 2 else torch.zeros_like(dA)
        dC = C.new_empty(C.shape) if C.dim() > 2 else torch.zeros_like(dA)
        dD = u.new_zeros(layout.groups, layout.heads) if D is not None else None
        dbias = u.new_zeros(layout.groups, layout.heads) if delta_bias is not None else None
        carry = layout.states_from_channels(grad_last)
        for k in range(layout.n_groups - 1, -1, -1):
            delta_k, slope = _step_sizes(layout, delta, delta_bias, ctx.softplus, k)
            u_k, g_k = layout.channels(u, k), layout.channels(grad_out, k)
            B_k, C_k = layout.projection(B, k), layout.projection(C, k)
            group = _Group(delta_k, u_k, layout.A_log2, B_k, group_starts[k], ws)
            if z is not None:  # out = y * silu(z)
                z_k = layout.channels(z, k)
                y_k = _contract(group.states, C_k, ws.scratch)
                if D is not None:
                    y_k.addcmul_(layout.channel_vector(D), u_k)
                gate_z = torch.sigmoid(z_k)
                layout.write(dz, k, g_k * y_k * gate_z * (1 + z_k * (1 - gate_z)))
                g_k = g_k * z_k * gate_z
            adj = group.adjoint(g_k, C_k, carry)
            carry = group.decay[0, :, :, 0] * adj[0, :, :, 0]
            w = group.decay_gradient(adj)
            adj_B = _contract(adj, B_k, ws.scratch)
            ddelta_k = _contract(w, layout.A, ws.scratch).addcmul_(u_k, adj_B)
            du_k = delta_k * adj_B
            if D is not None:
                du_k.addcmul_(layout.channel_vector(D), g_k)
                dD += (g_k * u_k).sum(dim=(0, 1, 3))
            dA += torch.mul(w, delta_k.unsqueeze(-2), out=ws.scratch).sum(dim=(0, 1, 3))
            _accumulate(dB, B.dim() == 2, layout, k, delta_k * u_k, adj, ws.scratch)
            _accumulate(dC, C.dim() == 2, layout, k, g_k, group.states, ws.scratch)
            if slope is not None:
                ddelta_k.mul_(slope)
            if dbias is not None:
                dbias += ddelta_k.sum(dim=(0, 1, 3))
            layout.write(ddelta, k, ddelta_k)
            layout.write(du, k, du_k)
        return (
            du,
            ddelta,
            layout.states_to_channels(dA),
            layout.states_to_channels(dB) if B.dim() == 2 else dB,
            layout.states_to_channels(dC) if C.dim() == 2 else dC,
            dD.reshape(-1) if dD is not None else None,
            dz,
            dbias.reshape(-1) if dbias is not None else None,
            None,
            None,
            None,
        )


def _step_sizes(layout: _Layout, delta: Tensor, bias: Tensor | None, softplus: bool, k: int) -> tuple[Tensor, Tensor | None]:
    """Group ``k``'s step sizes ``softplus(delta + bias)`` (each optional), and d(step)/d(delta) when not 1."""
    raw = layout.channels(delta, k)
    if bias is not None:
        raw = raw + layout.channel_vector(bias)
    step, slope = (F.softplus(raw), torch.sigmoid(raw)) if softplus else (raw, None)
    valid = layout.valid_positions(k)
    if valid is not None:  # padded positions must not move the state
        step = step * valid
        slope = valid if slope is None else slope * valid
    return step, slope


def _accumulate(grad: Tensor, time_invariant: bool, layout: _Layout, k: int, weight: Tensor, x: Tensor, scratch: Tensor) -> None:
    """Group ``k``'s ``sum_h weight[..., h] * x[..., n, h]``: the gradient of B or C.

    A time-invariant ``grad`` ``(g, n, h)`` accumulates it over steps, batch and lanes; an input-dependent
    one (``(b, n, l)`` or ``(b, g, n, l)``) receives the group's positions.
    """
    if time_invariant:
        grad += torch.mul(x, weight.unsqueeze(-2), out=scratch).sum(dim=(0, 1, 3))
        return
    contribution = (weight.unsqueeze(-2) @ x.transpose(-1, -2)).squeeze(-2)  # (steps, b, g, lanes, n); fastest form
    if grad.dim() == 3:
        contribution = contribution.sum(dim=2, keepdim=True)
    layout.write(grad.flatten(1, -2), k, contribution)
