"""Fused CPU kernels for the selective scan, the SSD scan, short scans read at their last step, the
decayed prefix readout, the causal depthwise convolution and the step size's softplus (see
:mod:`zoo.blocks.compiled`).

The kernels in ``selective_scan_cpu.cpp`` (Mamba eq. 2a-2b), ``ssd_scan_cpu.cpp`` (Mamba2's SSD
recurrence), ``final_state_scan_cpu.cpp`` (:mod:`zoo.blocks.ssm.final_state_scan`) and
``decayed_prefix_cpu.cpp`` (:mod:`zoo.blocks.ssm.decayed_prefix`) run each channel's or
head's recurrence as one vectorised loop instead of PyTorch operations over state-sized
intermediates; their backward passes are the reverse-time adjoint recurrences (see the C++ files).
``causal_conv_cpu.cpp`` is the short convolution (and SiLU) in front of every Mamba and Mamba2 scan,
used by :func:`zoo.blocks.ssm._dispatch.causal_depthwise_conv1d`, and its gathered form
(:mod:`zoo.blocks.ssm.gathered_conv`); ``softplus_cpu.cpp`` the step size
``softplus`` of :mod:`zoo.blocks.ssm.softplus`.
When the compiled kernels are enabled (the default, :mod:`zoo.blocks.compiled`),
:func:`zoo.blocks.ssm.selective_scan` uses its kernel for CPU tensors whose ``B`` and ``C`` are
input-dependent (``(b, n, l)`` or ``(b, g, n, l)``, as in every Mamba layer) and
:func:`zoo.blocks.ssm.ssd_scan` for every non-empty CPU call; other cases keep the pure path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.blocks.compiled import KERNEL_ENV_VAR, SOURCES, applies, kernel_dtype, load, needs_grad

__all__ = ["KERNEL_ENV_VAR", "SOURCES", "applies", "causal_conv_compiled", "decayed_prefix_compiled",
           "final_state_scan_compiled", "gathered_conv_compiled", "projected_final_state_scan_compiled",
           "projected_selective_scan_compiled", "projected_softplus_compiled", "load",
           "selective_scan_compiled", "softplus_compiled",
           "ssd_scan_compiled"]


def dense(t: Tensor) -> Tensor:
    """``t`` itself when its elements fill its memory without gaps or overlap in some order of its dimensions (a
    transposed view among them), else a contiguous copy: what the kernels that follow a tensor's strides accept."""
    expected = 1
    for stride, size in sorted((stride, size) for stride, size in zip(t.stride(), t.shape) if size != 1):
        if stride != expected:
            return t.contiguous()
        expected *= size
    return t


def last_dim_dense(t: Tensor) -> Tensor:
    """``t`` itself when its last dimension is contiguous, else a contiguous copy: what the kernels that read the
    other dimensions through their strides accept."""
    return t if t.stride(-1) == 1 else t.contiguous()


def selective_scan_compiled(
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
    """The selective scan with the recurrence, delta's bias and softplus, D and the z gate in the compiled
    kernel.

    Same arguments and results as :func:`zoo.blocks.ssm.selective_scan` for ``B, C`` of shape ``(b, n, l)``
    or ``(b, g, n, l)``; computes in float64 when any input is float64, else float32.
    """
    return _scan(u, delta, None, A, B, C, D, z, delta_bias, None, delta_softplus, return_last_state)


def projected_selective_scan_compiled(u: Tensor, low: Tensor, weight: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                      D: Tensor | None = None, z: Tensor | None = None,
                                      delta_bias: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """:func:`zoo.blocks.ssm.projected_scan.projected_selective_scan` in the compiled kernel, which forms the raw
    step ``weight @ low`` a chunk at a time (``low (b, R, l)`` read through its strides, ``weight (d, R)``) and
    zeroes the step where ``valid (b, l)`` is False; computes in float64 when any input is float64, else float32."""
    return _scan(u, low, weight, A, B, C, D, z, delta_bias, valid, True, False)


def _scan(u: Tensor, delta: Tensor, weight: Tensor | None, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
          z: Tensor | None, delta_bias: Tensor | None, valid: Tensor | None, delta_softplus: bool,
          return_last_state: bool) -> Tensor | tuple[Tensor, Tensor]:
    """The kernel's call: the whole raw step ``delta (b, d, l)`` without ``weight``, else its low-rank input."""
    tensors = (u, delta, weight, A, B, C, D, z, delta_bias)
    dtype = kernel_dtype(*tensors)
    u_, A_ = u.to(dtype), A.to(dtype)
    empty = u_.new_empty(0)
    # The whole step must be contiguous; the low-rank input and B, C go in as they are: the kernel reads any strides
    # (no copy of the Mamba layer's x_proj slices).
    delta_ = delta.to(dtype).contiguous() if weight is None else delta.to(dtype)
    weight_ = empty if weight is None else weight.to(dtype).contiguous()
    valid_ = empty if valid is None else valid.to(dtype).contiguous()
    bias = u_.new_zeros(u.shape[1]) if delta_bias is None else delta_bias.to(dtype)
    D_ = u_.new_zeros(u.shape[1]) if D is None else D.to(dtype)
    B_, C_ = (t.to(dtype).unsqueeze(1) if t.dim() == 3 else t.to(dtype) for t in (B, C))  # (b, g, n, l)
    if B_.shape[1] != C_.shape[1]:  # one of them has groups, the other is shared: give both the groups
        groups = max(B_.shape[1], C_.shape[1])
        B_, C_ = B_.expand(-1, groups, -1, -1), C_.expand(-1, groups, -1, -1)
    gate = empty if z is None else z.to(dtype)
    # u and z go in as they are too: the kernel reads them in their layouts, a block at a time (time-major
    # projections without a transposing copy), and gives the output and du in u's layout, dz in z's.
    inputs = (u_, delta_, A_.contiguous(), B_, C_, D_.contiguous(), bias.contiguous(), gate, weight_,
              valid_)
    # Only a call that autograd records needs the chunk-start states (inference under no_grad does not).
    keep_starts = needs_grad(*inputs)
    y, last_state = _CompiledScan.apply(*inputs, delta_softplus, keep_starts)
    y = y.to(u.dtype)
    return (y, last_state) if return_last_state else y


class _CompiledScan(torch.autograd.Function):
    """``(out, h_last)``: ``out = (scan(u, delta, A, B, C) + D u) * silu(z)`` (no gate for an empty ``z``) with
    B, C as ``(b, g, n, l)`` (any strides) and the step ``valid * softplus(raw + bias)`` (or without softplus, and
    without ``valid`` when it is empty) formed inside the kernel, the raw step ``delta`` itself or, with a non-empty
    ``weight``, ``weight @ delta``; gradients from the kernel (none for ``valid``)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, bias: Tensor, z: Tensor,
                weight: Tensor, valid: Tensor, softplus: bool, keep_starts: bool):
        # With gradients ahead, the kernel also keeps each channel's state at every chunk start (b, d, l / 64, n),
        # so that the backward pass reads the inputs once instead of sweeping forward through them again, and
        # with a gate the output before it.
        out, last_state, starts, y = load("selective_scan").forward(u, delta, A, B, C, D, bias, z, softplus,
                                                                    keep_starts, weight, valid)
        ctx.save_for_backward(u, delta, A, B, C, D, bias, z, weight, valid, y, starts)
        ctx.softplus = softplus
        return out, last_state

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_last: Tensor | None):
        u, delta, A, B, C, D, bias, z, weight, valid, y, starts = ctx.saved_tensors
        grad_out = torch.zeros_like(u) if grad_out is None else grad_out  # read in its layout
        batch, dim, _ = u.shape
        grad_last = u.new_zeros(batch, dim, A.shape[1]) if grad_last is None else grad_last.contiguous()
        groups = B.shape[1]
        # Split each group's channels so that every thread has a task even for one sequence.
        splits = _splits(dim // groups, batch * groups)
        du, ddelta, dlow, dweight, dz, dA, dB, dC, dD, dbias = load("selective_scan").backward(
            u, delta, A, B, C, D, bias, z, y, ctx.softplus, starts, grad_out, grad_last, splits, weight, valid)
        if weight.numel():  # the low-rank input's gradient per split and group (splits, b, g, R, l)
            ddelta, dweight = dlow.sum((0, 2)), dweight.sum(0)
        else:
            dweight = None
        dz = dz if z.numel() else None
        return (du, ddelta, dA.sum(0), _sum_splits(dB), _sum_splits(dC), dD.sum(0), dbias.sum(0), dz, dweight, None,
                None, None)


def ssd_scan_compiled(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_states: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> tuple[Tensor, Tensor]:
    """The SSD scan with dt's discretisation, the recurrence and D in the compiled kernel; the z gate in
    PyTorch (autograd-correct).

    :func:`zoo.blocks.ssm.ssd_scan`'s arguments (no chunk size: the recurrence has none) and semantics for
    a non-empty sequence; returns ``(y, final_state)`` in ``x``'s dtype, computed in float64 for float64
    inputs, else float32.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    batch, _, heads, headdim = x.shape
    x_ = x.to(dtype)
    bias = x_.new_zeros(heads) if dt_bias is None else dt_bias.to(dtype)
    if initial_states is None:
        initial_states = x_.new_zeros(batch, heads, headdim, B.shape[-1])
    if D is None:
        D = x_.new_zeros(heads, headdim)
    D_ = D.to(dtype).unsqueeze(-1).expand(heads, headdim) if D.dim() == 1 else D.to(dtype)
    largest = torch.finfo(dtype).max  # the kernel is built with -ffast-math: an open limit is finite there
    lo, hi = (min(max(limit, -largest), largest) for limit in dt_limit)
    tensors = (x_, dt.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), D_, bias, initial_states.to(dtype))
    y, final_state = _CompiledSSD.apply(*(t.contiguous() for t in tensors), dt_softplus, lo, hi)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype), final_state.to(x.dtype)


def _splits(per_group: int, tasks: int) -> int:
    """Into how many parts the backward pass splits each group's channels/heads, so every thread has a task."""
    return min(per_group, math.ceil(torch.get_num_threads() / tasks))


def _sum_splits(gradient: Tensor) -> Tensor:
    """The kernel's per-split gradient buffers ``(splits, ...)`` summed; no copy when there is one split."""
    return gradient[0] if gradient.shape[0] == 1 else gradient.sum(0)


class _CompiledSSD(torch.autograd.Function):
    """``(y, S_last) = ssd(x, dt, A, B, C, D, S_initial)`` with D ``(h, p)`` and the step
    ``clamp(softplus?(dt + bias), lo, hi)`` formed inside the kernel; gradients from the kernel."""

    @staticmethod
    def forward(ctx, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, bias: Tensor, initial: Tensor,
                softplus: bool, lo: float, hi: float):
        y, final_state = load("ssd_scan").forward(x, dt, A, B, C, D, bias, softplus, lo, hi, initial)
        ctx.save_for_backward(x, dt, A, B, C, D, bias, initial)
        ctx.step_rule = softplus, lo, hi
        return y, final_state

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, grad_final: Tensor | None):
        x, dt, A, B, C, D, bias, initial = ctx.saved_tensors
        grad_y = torch.zeros_like(x) if grad_y is None else grad_y.contiguous()
        grad_final = torch.zeros_like(initial) if grad_final is None else grad_final.contiguous()
        batch, groups = x.shape[0], B.shape[2]
        splits = _splits(x.shape[2] // groups, batch * groups)
        dx, ddt, dA, dB, dC, dD, dinitial = load("ssd_scan").backward(x, dt, A, B, C, D, bias, *ctx.step_rule, initial,
                                                                      grad_y, grad_final, splits)
        dbias = ddt.sum((0, 1)) if ctx.needs_input_grad[6] else None
        return (dx, ddt, dA.sum(0), _sum_splits(dB), _sum_splits(dC), dD.sum(0), dbias, dinitial, None, None,
                None)


def decayed_prefix_compiled(before: Tensor, w: Tensor, B: Tensor, A: Tensor, after: Tensor, C: Tensor) -> Tensor:
    """:func:`zoo.blocks.ssm.decayed_prefix.decayed_prefix_readout` in the compiled kernel: same arguments
    (``before, w, after (b, l, e)``, ``B, C (b, l, n)``, ``A (e, n)``) and result, computed in float64 for
    float64 inputs, else float32."""
    dtype = kernel_dtype(before, w, B, A, after, C)

    def channels_first(t: Tensor) -> Tensor:
        return t.to(dtype).transpose(1, 2).contiguous()

    out = _CompiledDecayedPrefix.apply(channels_first(before), channels_first(w), B.to(dtype).contiguous(),
                                       A.to(dtype).contiguous(), channels_first(after), C.to(dtype).contiguous())
    return out.transpose(1, 2).to(w.dtype)


class _CompiledDecayedPrefix(torch.autograd.Function):
    """``out = readout(before, w, B, A, after, C)`` with the per-channel series as ``(b, e, l)``; gradients
    from the kernel."""

    @staticmethod
    def forward(ctx, before: Tensor, w: Tensor, B: Tensor, A: Tensor, after: Tensor, C: Tensor):
        ctx.save_for_backward(before, w, B, A, after, C)
        return load("decayed_prefix").forward(before, w, B, A, after, C)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        before, w, B, A, after, C = ctx.saved_tensors
        splits = _splits(w.shape[1], w.shape[0])
        dbefore, dw, dB, dA, dafter, dC = load("decayed_prefix").backward(before, w, B, A, after, C,
                                                                          grad_out.contiguous(), splits)
        return dbefore, dw, _sum_splits(dB), dA.sum(0), dafter, _sum_splits(dC)


def final_state_scan_compiled(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                              extra: Tensor | None = None, extra_at: int = 0) -> Tensor:
    """:func:`zoo.blocks.ssm.final_state_scan.final_state_scan` in the compiled kernel: same arguments and
    result, computed in float64 for float64 inputs, else float32."""
    dtype = kernel_dtype(u, delta, A, B, C, D, extra)
    D_ = u.new_zeros(u.shape[1], dtype=dtype) if D is None else D.to(dtype)
    extra_ = u.new_empty(0, dtype=dtype) if extra is None else extra.to(dtype).contiguous()
    steps = (dense(t.to(dtype)) for t in (u, delta))  # read through their strides
    return _CompiledFinalStateScan.apply(*steps, *(t.to(dtype).contiguous() for t in (A, B, C, D_)), extra_,
                                         extra_at).to(u.dtype)


def projected_final_state_scan_compiled(u: Tensor, low: Tensor, weight: Tensor, bias: Tensor | None, valid: Tensor | None,
                                        A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """:func:`zoo.blocks.ssm.final_state_scan.projected_final_state_scan` in the compiled kernel, for inference (no
    gradient): the steps formed a row at a time from ``low (rows, S, R)`` (read through its row and step strides),
    ``weight (e, R)``, ``bias`` and ``valid (rows, S)``; computed in float64 for float64 inputs, else float32."""
    dtype = kernel_dtype(u, low, weight, bias, A, B, C, D)
    D_ = u.new_zeros(u.shape[1], dtype=dtype) if D is None else D.to(dtype)
    bias_ = u.new_zeros(u.shape[1], dtype=dtype) if bias is None else bias.to(dtype).contiguous()
    valid_ = u.new_empty(0, dtype=dtype) if valid is None else valid.to(dtype).contiguous()
    low_ = last_dim_dense(low.to(dtype))
    return load("final_state_scan").projected_forward(
        dense(u.to(dtype)), low_, weight.to(dtype).contiguous(), bias_, valid_,
        *(t.to(dtype).contiguous() for t in (A, B, C, D_))).to(u.dtype)


class _CompiledFinalStateScan(torch.autograd.Function):
    """``y = C · h_last + D u_last`` of short scans from zero (``extra`` folded into step ``extra_at``'s decay);
    gradients from the kernel."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, extra: Tensor, extra_at: int):
        ctx.save_for_backward(u, delta, A, B, C, D, extra)
        ctx.extra_at = extra_at
        return load("final_state_scan").forward(u, delta, A, B, C, D, extra, extra_at)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        u, delta, A, B, C, D, extra = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dextra = load("final_state_scan").backward(u, delta, A, B, C, D, extra, ctx.extra_at,
                                                                               grad_y.contiguous())
        return du, ddelta, dA.sum(0), dB, dC, dD.sum(0), dextra if extra.numel() else None, None


def softplus_compiled(x: Tensor) -> Tensor:
    """:func:`zoo.blocks.ssm.softplus.softplus` in the compiled kernel: computed in float64 for float64 input,
    else float32, returned in ``x``'s dtype."""
    return _CompiledSoftplus.apply(dense(x.to(kernel_dtype(x)))).to(x.dtype)


class _CompiledSoftplus(torch.autograd.Function):
    """``softplus(x)`` (threshold 20) and its gradient ``dy * sigmoid(x)`` (1 above the threshold) from the kernel."""

    @staticmethod
    def forward(ctx, x: Tensor):
        ctx.save_for_backward(x)
        return load("softplus").forward(x)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        (x,) = ctx.saved_tensors
        if grad_y.stride() != x.stride():
            grad_y = torch.empty_like(x).copy_(grad_y)
        return load("softplus").backward(x, grad_y)


def projected_softplus_compiled(low: Tensor, weight: Tensor, bias: Tensor | None, valid: Tensor | None) -> Tensor:
    """:func:`zoo.blocks.ssm.softplus.projected_softplus` in the compiled kernel (``valid`` already of
    ``low.shape[:-1]``); computed in float64 for float64 inputs, else float32, returned in ``low``'s dtype."""
    dtype = kernel_dtype(low, weight, bias)
    rows = last_dim_dense(low.to(dtype).reshape(-1, low.shape[-1]))
    bias_ = rows.new_empty(0) if bias is None else bias.to(dtype).contiguous()
    valid_ = rows.new_empty(0) if valid is None else valid.reshape(-1).to(dtype).contiguous()
    delta = _CompiledProjectedSoftplus.apply(rows, weight.to(dtype).t().contiguous(), bias_, valid_)
    return delta.reshape(*low.shape[:-1], weight.shape[0]).to(low.dtype)


class _CompiledProjectedSoftplus(torch.autograd.Function):
    """``valid * softplus(bias + low @ w)`` with ``w (R, E)``; gradients from the kernel (its per-thread weight and bias
    gradients summed here), none for ``valid``."""

    @staticmethod
    def forward(ctx, low: Tensor, weight: Tensor, bias: Tensor, valid: Tensor):
        ctx.save_for_backward(low, weight, bias, valid)
        return load("softplus").projected_forward(low, weight, bias, valid)

    @staticmethod
    def backward(ctx, grad: Tensor):
        low, weight, bias, valid = ctx.saved_tensors
        dlow, dweight, dbias = load("softplus").projected_backward(low, weight, bias, valid, grad.contiguous())
        return dlow, dweight.sum(0), dbias.sum(0) if bias.numel() else None, None


def causal_conv_compiled(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool,
                         valid: Tensor | None = None) -> Tensor:
    """:func:`zoo.blocks.ssm._dispatch.causal_depthwise_conv1d` in the compiled kernel: ``x (B, C, L)``,
    ``weight (C, K)``, ``bias (C,)`` or None, ``valid (B, L)`` boolean or None (``x`` read as zero where it is
    False); the result ``(B, C, L)`` is a view of a channels-last tensor (``.transpose(1, 2)`` of it is
    contiguous). Computed in float64 for float64 inputs, else float32."""
    dtype = kernel_dtype(x, weight, bias)
    # (B, L, C); the kernel reads any batch and time strides
    channels_last = last_dim_dense(x.to(dtype).transpose(1, 2))
    taps_first = weight.to(dtype).t().contiguous()  # (K, C)
    bias_ = x.new_zeros(x.shape[1], dtype=dtype) if bias is None else bias.to(dtype).contiguous()
    valid_ = channels_last.new_empty(0) if valid is None else valid.to(dtype).contiguous()
    return _CompiledConv.apply(channels_last, taps_first, bias_, valid_, silu, "").to(x.dtype).transpose(1, 2)


class _CompiledConv(torch.autograd.Function):
    """``y = silu?(bias + depthwise conv(x, w))`` channels-last, ``w`` as ``(K, C)``, through ``causal_conv_cpu.cpp``'s
    ``{entry}forward`` / ``{entry}backward``: ``entry`` "" for the causal convolution, whose ``taps`` is the
    ``valid`` mask (empty: every position), "gathered_" for the gathered one, whose ``taps`` is the table of
    source positions. Gradients from the kernel (its per-sequence weight and bias gradients summed here), none for
    ``taps``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, taps: Tensor, silu: bool, entry: str):
        ctx.save_for_backward(x, weight, bias, taps)
        ctx.silu, ctx.entry = silu, entry
        return getattr(load("causal_conv"), f"{entry}forward")(x, weight, bias, taps, silu)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight, bias, taps = ctx.saved_tensors
        dx, dweight, dbias = getattr(load("causal_conv"), f"{ctx.entry}backward")(x, weight, bias, taps, ctx.silu,
                                                                                 grad_y.contiguous())
        return dx, dweight.sum(0), dbias.sum(0), None, None, None


def gathered_conv_compiled(x: Tensor, weight: Tensor, bias: Tensor | None, source: Tensor, silu: bool) -> Tensor:
    """:func:`zoo.blocks.ssm.gathered_conv.gathered_depthwise_conv` in the compiled kernel: ``x (B, L, C)``,
    ``weight (C, K)``, ``bias (C,)`` or None, ``source (S, B, T, K)``; the result ``(S, B, T, C)``. Computed in
    float64 for float64 inputs, else float32."""
    dtype = kernel_dtype(x, weight, bias)
    x_ = last_dim_dense(x.to(dtype))  # the kernel reads any batch and time strides, channels contiguous
    bias_ = x.new_zeros(x.shape[2], dtype=dtype) if bias is None else bias.to(dtype).contiguous()
    return _CompiledConv.apply(x_, weight.to(dtype).t().contiguous(), bias_, source.contiguous(), silu,
                               "gathered_").to(x.dtype)
