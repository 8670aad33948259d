"""SIGMA's flips and their every-prefix passes.

A flipped Mamba stream (SIGMA, "Partially Flipped Mamba") reads later items before earlier ones, so the
prefix ending at position ``t`` is not a prefix of the whole window's flipped sequence. The passes here
give, for every ``t`` at once, exactly what the flipped stream outputs at the newest slot of that
prefix, from pieces shared by all prefixes plus a few steps per prefix. The Mamba recurrence they
regroup is the selective scan (Mamba, Gu & Dao 2023, Eq. 2a-2b with the S6 step of Algorithm 2):
``h_s = exp(Δ_s A) ⊙ h_{s-1} + Δ_s u_s B_s``, ``y_s = C_s · h_s + D u_s``, where ``u_s`` is the
short causal convolution (width ``K``) of the input projection, through SiLU.

* :func:`partial_flip_prefix_outputs`: the paper's partial flip (``flip: partial``);
* :func:`code_flip_prefix_outputs`: the released code's fixed-slot flip (``flip: code``).

docs/training.md, "Every prefix in one pass", says which blocks offer such a pass and why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.blocks.masking import lengths_from_mask, shift_time
from zoo.blocks.ssm._dispatch import causal_depthwise_conv1d
from zoo.blocks.ssm.decayed_prefix import decayed_prefix_readout
from zoo.blocks.ssm.final_state_scan import final_state_scan
from zoo.blocks.ssm.gathered_conv import gathered_depthwise_conv
from zoo.blocks.ssm.mamba import Mamba
from zoo.blocks.ssm.selective_scan import selective_scan
from zoo.blocks.ssm.softplus import projected_softplus


def partial_flip_index(mask: Tensor, remain: int) -> Tensor:
    """Source position ``(B, L)`` of each slot after a partial flip of every left-padded row.

    With ``n`` real items per row, the first ``max(n - remain, 0)`` real items are reversed and the
    last ``remain`` stay in place; pads map to themselves. The permutation is its own inverse, so the
    same index also maps a flipped sequence back. ``remain=0`` reverses all real items.
    """
    width = mask.shape[1]
    n = lengths_from_mask(mask).unsqueeze(1)
    slot = torch.arange(width, device=mask.device).unsqueeze(0)
    first = width - n  # slot of the oldest real item
    real_index = slot - first  # negative at pads
    flipped = (n - remain).clamp_min(0)
    source = torch.where(real_index < flipped, flipped - 1 - real_index, real_index) + first
    return torch.where(real_index >= 0, source, slot)


def take_slots(x: Tensor, index: Tensor) -> Tensor:
    """``x[:, index]`` for ``x (B, L, ...)`` and an index of any shape, through ``index_select``: its backward adds the
    rows back with ``index_add_``, where advanced indexing's (``index_put_`` with accumulation) took a seventh of a
    ``sigma-code`` training step."""
    return x.index_select(1, index.reshape(-1)).view(x.shape[0], *index.shape, *x.shape[2:])


def partial_flip_windows(mask: Tensor, remain: int, width: int) -> tuple[Tensor, Tensor]:
    """The short convolution windows :func:`partial_flip_prefix_outputs` needs at every ``t``, as a table of source
    positions for :func:`~zoo.blocks.ssm.gathered_conv.gathered_depthwise_conv`: ``source (S, B, L, K)`` (tap ``k``
    of window ``s``; -1 reads zero) and ``valid (S, B, L)``, whether the window's step is a real item (0: the step
    neither decays nor adds). ``S = K + remain`` windows, in this order:

    * 0: item ``t``'s whole window in the reversed run, which reads the ``K - 1`` later items;
    * ``1 .. K - 1``: the reversed run's first items in the prefix ending at ``t`` (``h_p``, ``h_{p-1}``, ...,
      ``p = t - remain``), windows cut at item ``p``;
    * ``K .. K + remain - 1``: the kept items ``t - remain + 1 .. t`` in order, their first windows reaching back
      into the reversed run's last items, the sequence's oldest (``h_1, h_2, ...``) while those are in it.
    """
    batch, length = mask.shape
    slot = torch.arange(length, device=mask.device).expand(batch, length)
    first = length - lengths_from_mask(mask).unsqueeze(1)  # the first real slot of each row
    nothing = torch.full_like(slot, -1)

    def at(position: Tensor) -> Tensor:
        return torch.where((position >= 0) & (position < length), position, nothing)

    def real_at(position: Tensor) -> Tensor:
        return mask.gather(1, position.clamp(0, length - 1)) & (position >= 0)

    windows, valid = [], []

    def window(reads: dict[int, Tensor], step_at: Tensor) -> None:
        """``reads[j]``: what the tap ``j`` items back in the flipped order reads (tap ``K - 1 - j``)."""
        windows.append(torch.stack([reads.get(width - 1 - k, nothing) for k in range(width)], -1))
        valid.append(real_at(step_at))

    window({j: at(slot + j) for j in range(width)}, slot)
    for reach in range(width - 1):  # item p - reach: its window reads items p - reach .. p only
        window({j: at(slot - remain - reach + j) for j in range(reach + 1)}, slot - remain - reach)
    for i in range(1, remain + 1):  # kept slot t - remain + i; k steps back: kept slot, or the run's item k - i + 1
        oldest = [first + k - i for k in range(width)]
        window({k: at(slot - remain + i - k) if k < i else
                torch.where((oldest[k] <= slot - remain) & (oldest[k] < length), oldest[k], nothing)
                for k in range(width)}, slot - remain + i)
    return torch.stack(windows), torch.stack(valid)


class _RowRanges(torch.autograd.Function):
    """Views of ranges of ``t``'s first dimension, which may overlap. Autograd's slice and select backward would
    each fill a zeroed gradient of ``t``'s full size and add them up; this backward writes each range's gradient
    into one buffer, adding only where ranges overlap and zeroing only rows no range covers."""

    @staticmethod
    def forward(ctx, t: Tensor, ranges: tuple[tuple[int, int], ...]) -> tuple[Tensor, ...]:
        ctx.ranges, ctx.shape = ranges, t.shape
        return tuple(t[start:stop] for start, stop in ranges)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        grad = None
        written = [False] * ctx.shape[0]
        for (start, stop), piece in zip(ctx.ranges, grads):
            if piece is None:
                continue
            grad = piece.new_empty(ctx.shape) if grad is None else grad
            for row in range(start, stop):
                (grad[row].add_ if written[row] else grad[row].copy_)(piece[row - start])
                written[row] = True
        if grad is not None:
            for row in (row for row, done in enumerate(written) if not done):
                grad[row].zero_()
        return grad, None


def row_ranges(t: Tensor, *ranges: tuple[int, int]) -> tuple[Tensor, ...]:
    """``t[start:stop]`` for each ``(start, stop)``, with one gradient buffer for all of them (:class:`_RowRanges`)."""
    for start, stop in ranges:
        if not 0 <= start < stop <= t.shape[0]:
            raise ValueError(f"row_ranges: range ({start}, {stop}) is not inside 0 .. {t.shape[0]}")
    return _RowRanges.apply(t, ranges)


def partial_flip_prefix_outputs(mamba: Mamba, x: Tensor, mask: Tensor, remain: int) -> Tensor:
    """For every position ``t`` at once: ``mamba``'s output at the newest slot of the prefix ending at
    ``t`` after its partial flip (:func:`partial_flip_index` with ``remain >= 1``). ``x (B, L, D)``
    left-padded, pads zero.

    For the prefix of ``n`` items ending at ``t`` the flipped order is ``h_p, ..., h_1, h_{p+1}, ...,
    h_n`` with ``p = max(n - remain, 0)``. The selective scan (Mamba Eq. 2a: ``S <- exp(Δ A) ⊙ S + Δ u
    B`` per step) is linear in its inputs, so its final state splits into the parts each run of steps
    leaves, decayed by the steps after it. The causal convolution (width ``K``) reads, in the reversed
    order, the ``K - 1`` *later* items, so:

    * the first ``K - 1`` reversed items (``h_p .. h_{p-K+2}``, windows cut at item ``p``) differ per
      prefix: short steps;
    * every other reversed item ``j`` sees the same window in each prefix that holds it and is followed
      only by the older items: its part is ``(prod_{i<j} a_i) b_j``, and the reversed run's part is one
      prefix sum over items shared by all prefixes (``Q``), whose decay through the reversed run is one
      step of ``Δ = sum_i Δ_i`` (``exp(A sum_i Δ_i) = prod_i exp(Δ_i A)``);
    * the ``remain`` kept items are ordinary steps whose first windows reach back into the reversed
      run's last items (``h_1, h_2, ...``).

    Every window is one row of :func:`partial_flip_windows`, all convolved in one pass
    (:func:`~zoo.blocks.ssm.gathered_conv.gathered_depthwise_conv`) and projected to their steps together.
    Per prefix that is one scan of ``K - 1 + remain`` steps from zero read at its last step, the reversed run's
    decay folded into the first kept step's (:func:`~zoo.blocks.ssm.final_state_scan.final_state_scan`), plus
    ``C_t · (Λ_t ⊙ Q)`` for the shared part, ``Λ_t`` the decay of the kept steps
    (:func:`~zoo.blocks.ssm.decayed_prefix.decayed_prefix_readout`); both are one compiled pass on the
    CPU, and nothing per prefix grows with its length.
    """
    batch, length, _ = x.shape
    width = mamba.d_conv
    A = -torch.exp(mamba.A_log)  # (E, N)
    u, z = mamba.in_proj(x).chunk(2, dim=-1)
    u = u * mask.unsqueeze(-1).to(x.dtype)  # (B, L, E), zero at pads
    source, valid = partial_flip_windows(mask, remain, width)
    v = gathered_depthwise_conv(u, mamba.conv1d.weight.squeeze(1), mamba.conv1d.bias, source)  # (S, B, L, E)
    # Window 0 is the shared part's, windows 1.. the short scans', the last the newest item's; the pieces' gradients
    # land in one buffer (row_ranges).
    windows = len(source)
    v_0, v_s, v_newest = row_ranges(v, (0, 1), (1, windows), (windows - 1, windows))
    # dt and B at every window; C only at the newest item's, the one readout (Mamba Algorithm 2's projections).
    dt, B = F.linear(v, mamba.x_proj.weight[:mamba.dt_rank + mamba.d_state]).split([mamba.dt_rank, mamba.d_state], -1)
    C_t = F.linear(v_newest.squeeze(0), mamba.x_proj.weight[mamba.dt_rank + mamba.d_state:])  # (B, L, N)
    delta = projected_softplus(dt, mamba.dt_proj.weight, mamba.dt_proj.bias, valid)  # 0 at a window that is no item
    delta_0, delta_s, delta_kept = row_ranges(delta, (0, 1), (1, windows), (width, windows))
    B_0, B_s = row_ranges(B, (0, 1), (1, windows))
    v_0, delta_0, B_0 = v_0.squeeze(0), delta_0.squeeze(0), B_0.squeeze(0)  # the shared part's (B, L, .)
    reversed_delta = delta_0.cumsum(1)  # sum of Δ over slots <= s

    # Per prefix (a row each): K - 1 boundary steps, then the `remain` kept steps, the first of which also decays the
    # state through the reversed run (its Δ summed). Read step-major through the strides: (rows, E, steps).
    lag = remain + width - 1
    step_major = (t.permute(1, 2, 3, 0).flatten(0, 1) for t in (v_s, delta_s))
    y = final_state_scan(*step_major, A, B_s.permute(1, 2, 0, 3).flatten(0, 1), C_t.flatten(0, 1), D=mamba.D,
                         extra=shift_time(reversed_delta, lag).flatten(0, 1), extra_at=width - 1)
    y = y.reshape(batch, length, -1)

    # C_t · (Λ_t ⊙ Q_{t - lag}), Λ_t = exp(A · sum of the kept steps' Δ), Q_s = sum_{j <= s} (prod_{i < j} a_i) b_j.
    if lag < length:
        cut, kept_delta = length - lag, delta_kept.sum(0)
        shared = decayed_prefix_readout(reversed_delta[:, :cut] - delta_0[:, :cut], delta_0[:, :cut] * v_0[:, :cut],
                                        B_0[:, :cut], A, kept_delta[:, lag:], C_t[:, lag:])
        y = y + F.pad(shared, (0, 0, lag, 0))
    return mamba.out_proj(y * F.silu(z))


def scan_inputs(mamba: Mamba, u: Tensor, valid: Tensor | float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The scan's inputs at steps whose short convolution, bias and SiLU included, is ``u (..., E)``: ``u`` and, from
    ``x_proj(u)``, the step ``Δ = softplus(dt_proj(dt))`` (times ``valid``, broadcast over ``u``'s leading dimensions:
    0 makes a step that neither decays nor adds), ``B`` and ``C`` (Mamba Algorithm 2)."""
    dt, B, C = mamba.x_proj(u).split([mamba.dt_rank, mamba.d_state, mamba.d_state], dim=-1)
    valid = valid if isinstance(valid, Tensor) else dt.new_full((), valid)
    return u, projected_softplus(dt, mamba.dt_proj.weight, mamba.dt_proj.bias, valid), B, C


def short_conv(mamba: Mamba, inputs: Tensor) -> Tensor:
    """``mamba``'s short causal convolution over ``inputs (B, S, E)``, zero before slot 0, through its bias and SiLU:
    the compiled kernel where it applies."""
    return causal_depthwise_conv1d(inputs.transpose(1, 2), mamba.conv1d.weight, mamba.conv1d.bias,
                                   activation="silu").transpose(1, 2)


def activate(mamba: Mamba, conv: Tensor) -> Tensor:
    """``silu(conv + bias)``: a short convolution window summed by hand, through ``mamba``'s bias and SiLU."""
    bias = mamba.conv1d.bias
    return F.silu(conv if bias is None else conv + bias)


def scan_outputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """``C_s · h_s`` at every slot of one scan from a zero state, batch-first ``(B, S, E)`` / ``(B, S, N)``."""
    return selective_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2)).transpose(1, 2)


def code_flip_index(length: int, remain: int, device: torch.device | None = None) -> Tensor:
    """Source slot of each of ``length`` slots after the released code's flip: slots ``0 .. length - remain - 1``
    reversed, the last ``remain`` kept, whatever the sequence holds (docs/models/sigma.md, "Fixed-index flip")."""
    flipped = max(length - remain, 0)
    slot = torch.arange(length, device=device)
    return torch.where(slot < flipped, flipped - 1 - slot, slot)


def code_flip_newest_index(mask: Tensor, remain: int) -> Tensor:
    """For left-padded rows of ``n`` items in ``L = mask.shape[1]`` slots: the source slot ``(B, L)`` of what the
    released code's flipped stream holds in its slots ``0 .. n - 1`` (the row right-aligned, then flipped by
    :func:`code_flip_index`), moved to the row's last ``n`` slots, where the row's items are; the first ``L - n``
    slots take the flipped stream's other slots. The flipped stream's output at the newest item's slot ``n - 1``
    reads those ``n`` slots alone, so this is the whole of what scoring needs, gathered once."""
    length = mask.shape[1]
    pads = (length - mask.long().sum(1)).unsqueeze(1)
    slot = torch.arange(length, device=mask.device)
    return (code_flip_index(length, remain, mask.device)[(slot - pads) % length] + pads) % length


def code_flip_contents(x: Tensor, pads: Tensor, remain: int) -> Tensor:
    """What flipped slot ``q`` holds in the prefix of items ``0 .. q``, for every ``q``: ``x (B, L, ...)`` in
    right-aligned slots (the items first, as the code pads), ``pads (B, max(L - remain, 0), ...)`` what padded
    slots hold (the inputs themselves or anything computed from them slot by slot). The fixed-slot flip puts
    slot ``L - remain - 1 - q`` there, a padded slot when that lies after ``q``."""
    length = x.shape[1]
    source = code_flip_index(length, remain, x.device)
    slot = torch.arange(length, device=x.device)
    item = (source <= slot).view(1, length, 1)
    if pads.shape[1] == 0:
        return take_slots(x, source)
    return torch.where(item, take_slots(x, source), take_slots(pads, slot.clamp_max(pads.shape[1] - 1)))


def code_flip_prefix_outputs(mamba: Mamba, x: Tensor, pads: Tensor, remain: int, pads_move_state: bool) -> Tensor:
    """For every ``q`` at once: ``mamba``'s output at flipped slot ``q`` of the prefix holding items ``0 .. q``
    after the released code's fixed-slot flip (:func:`code_flip_index`). ``x (B, L, D)`` is in right-aligned slots,
    ``L = max_len``; ``pads (B, L - remain, D)`` is what the padded slots hold (``pads_move_state``: they are read
    as input, ``pad_slots: read``; otherwise they are masked: zero input, no step).

    With ``Fl = L - remain``, flipped slot ``s < Fl`` holds slot ``Fl - 1 - s``, which in the prefix ending at
    ``q`` is a padded slot when ``Fl - 1 - s > q``. So the prefix's flipped sequence up to ``q`` is:

    * ``q < Fl / 2``: padded slots only -- one scan over the padded slots, shared by these prefixes;
    * ``q >= Fl``: the whole window's flipped sequence up to ``q`` -- one scan over it;
    * otherwise ``b = Fl - 1 - q`` padded slots, then the items ``q, q - 1, .., b`` at slots ``b .. q``. The
      first ``K - 1`` of them (``K`` = ``d_conv``) have convolution windows reaching into the padded slots, so
      they differ per prefix; each later one (slot ``s >= b + K - 1``) sees the same window as in the whole
      window's flipped sequence. By linearity of the scan, the state at ``q`` is the state after the padded and
      boundary slots, decayed through the later slots (one step of ``Δ = sum Δ_s``), plus the later slots' own
      contributions. These range over ``[b + K - 1, q]``, whose two ends move with ``q``; split at the fixed slot
      ``c``: the part from ``c`` on is an ordinary scan started at ``c``, read at ``q``; the part before ``c``
      reaches ``c`` decayed only through the slots between, a prefix sum over the slots taken from ``c - 1``
      downwards, read through the decay from ``c`` to ``q``
      (:func:`~zoo.blocks.ssm.decayed_prefix.decayed_prefix_readout`). Every decay is a product of actual steps,
      never an inverse.

    Per prefix that leaves one short scan of at most ``Fl/2 + K`` steps (the padded slots, the boundary items,
    the decay step; :func:`~zoo.blocks.ssm.final_state_scan.final_state_scan`).
    """
    length = x.shape[1]
    flipped = max(length - remain, 0)
    A = -torch.exp(mamba.A_log)
    projected, z_items = mamba.in_proj(x).chunk(2, dim=-1)  # the convolution's inputs and the gate
    projected_pad, z_pads = mamba.in_proj(pads).chunk(2, dim=-1)
    projected_pad = projected_pad * float(pads_move_state)
    z = code_flip_contents(z_items, z_pads, remain)  # the gate at each readout slot

    whole_order = take_slots(projected, code_flip_index(length, remain, x.device))
    u_full, delta_full, B_full, C_full = scan_inputs(mamba, short_conv(mamba, whole_order), 1.0)
    scan, readout_u = [], []
    if flipped:  # the prefixes q < flipped read padded slots, the first flipped // 2 of them nothing else
        u_pad, delta_pad, B_pad, C_pad = scan_inputs(mamba, short_conv(mamba, projected_pad), float(pads_move_state))
        only_pads = flipped // 2
        if only_pads:
            scan.append(scan_outputs(u_pad[:, :only_pads], delta_pad[:, :only_pads], A, B_pad[:, :only_pads],
                                     C_pad[:, :only_pads]))
            readout_u.append(u_pad[:, :only_pads])
        pads_scan = (projected_pad, u_pad, delta_pad, B_pad)
        straddling, straddling_u = _straddling_prefixes(mamba, A, whole_order[:, :flipped], pads_scan,
                                                        (u_full, delta_full, B_full, C_full), flipped)
        scan.append(straddling)
        readout_u.append(straddling_u)
    if flipped < length:
        scan.append(scan_outputs(u_full, delta_full, A, B_full, C_full)[:, flipped:])
        readout_u.append(u_full[:, flipped:])
    y = (torch.cat(scan, 1) + mamba.D * torch.cat(readout_u, 1)) * F.silu(z)
    return mamba.out_proj(y)


def _straddling_prefixes(mamba: Mamba, A: Tensor, items: Tensor, pads_scan: tuple[Tensor, Tensor, Tensor, Tensor],
                         full: tuple[Tensor, Tensor, Tensor, Tensor], flipped: int) -> tuple[Tensor, Tensor]:
    """:func:`code_flip_prefix_outputs` for the prefixes ``q`` in ``[flipped // 2, flipped)``, whose flipped
    sequence is padded slots and then items: ``C_q · h_q`` and the step input ``u_q`` at slot ``q``.

    ``items (B, flipped, E)``: the convolution's inputs in flipped slot order (slot ``s`` holds item
    ``flipped - 1 - s``); ``pads_scan``: the padded slots' convolution inputs and scan inputs ``u, Δ, B``; ``full``:
    the whole window's flipped sequence's scan inputs ``u, Δ, B, C``, which the slots past the boundary share."""
    projected_pad, u_pad, delta_pad, B_pad = pads_scan
    u_full, delta_full, B_full, C_full = full
    weight = mamba.conv1d.weight.squeeze(1)
    width = weight.shape[1]
    device = items.device
    first = flipped // 2
    q = torch.arange(first, flipped, device=device)  # the readout slot of each prefix
    pads = flipped - 1 - q  # padded slots before its first item, slot b = pads
    most_pads = flipped - 1 - first

    # The K - 1 boundary items at slots b + r: windows reaching back into padded slots (or before slot 0).
    boundary = []
    for r in range(width - 1):
        conv = 0.0
        for k in range(width):
            slot = pads + r - k
            if r >= k:  # an item, in flipped slot order
                tap = take_slots(items, slot.clamp_max(flipped - 1))
            else:
                tap = take_slots(projected_pad, slot.clamp(0, flipped - 1)) * (slot >= 0).view(1, -1, 1).to(items.dtype)
            conv = conv + weight[:, width - 1 - k] * tap
        boundary.append(conv)
    inside = (pads.view(-1, 1) + torch.arange(width - 1, device=device) <= q.view(-1, 1))  # (prefixes, K - 1)
    conv = torch.stack(boundary, 2) if boundary else items.new_zeros(items.shape[0], len(q), 0, items.shape[2])
    u_b, delta_b, B_b, C_b = scan_inputs(mamba, activate(mamba, conv), inside)

    # Slots b + K - 1 .. q share the whole window's inputs: their summed step decays the state left by the
    # padded and boundary slots (zero when the range is empty).
    later = pads + width - 1
    summed = F.pad(delta_full.cumsum(1), (0, 0, 1, 0))  # summed[:, s] = sum of Δ over slots < s
    decay_step = ((take_slots(summed, q + 1) - take_slots(summed, later.clamp_max(q + 1)))
                  * (later <= q).view(1, -1, 1).to(summed.dtype))

    # One short scan per prefix: padded slots (aligned to end before the boundary), boundary items, the decay step.
    step = torch.arange(most_pads, device=device)
    pad_slot = step.view(1, -1) - (most_pads - pads).view(-1, 1)  # (prefixes, most_pads); < 0: no step
    real_pad = (pad_slot >= 0).unsqueeze(-1).to(u_pad.dtype)
    pad_slot = pad_slot.clamp_min(0)
    zero_u = torch.zeros_like(decay_step).unsqueeze(2)
    rows_u = torch.cat([take_slots(u_pad, pad_slot) * real_pad, u_b, zero_u], 2)  # (B, prefixes, steps, E)
    rows_delta = torch.cat([take_slots(delta_pad, pad_slot) * real_pad, delta_b, decay_step.unsqueeze(2)], 2)
    rows_B = torch.cat([take_slots(B_pad, pad_slot) * real_pad, B_b, B_b.new_zeros(*B_b.shape[:2], 1, B_b.shape[-1])], 2)
    C_q, u_q = take_slots(C_full, q), take_slots(u_full, q)
    if boundary:  # where q itself is a boundary item
        on_boundary = (q < later).view(1, -1, 1)
        at_q = (q - pads).clamp_max(width - 2).view(1, -1, 1, 1)
        C_q = torch.where(on_boundary, C_b.gather(2, at_q.expand(*C_b.shape[:2], 1, C_b.shape[-1])).squeeze(2), C_q)
        u_q = torch.where(on_boundary, u_b.gather(2, at_q.expand(*u_b.shape[:2], 1, u_b.shape[-1])).squeeze(2), u_q)
    batch, prefixes, steps, channels = rows_u.shape
    y = final_state_scan(rows_u.reshape(-1, steps, channels).transpose(1, 2), rows_delta.reshape(-1, steps, channels).transpose(1, 2),
                         A, rows_B.reshape(-1, steps, rows_B.shape[-1]), C_q.reshape(-1, C_q.shape[-1])).reshape(batch, prefixes, channels)

    # The later slots' own contributions (none for q < c, where the range is empty).
    centre = (flipped + width - 1) // 2
    if centre < flipped:  # from c on: an ordinary scan from c, read at q
        right = scan_outputs(u_full[:, centre:flipped], delta_full[:, centre:flipped], A, B_full[:, centre:flipped],
                             C_full[:, centre:flipped])
        y = y + F.pad(right, (0, 0, centre - first, 0))
    if width <= centre < flipped:  # slots c - 1 down to K - 1, each decayed to c, then through c .. q
        reversed_delta = delta_full[:, width - 1:centre].flip(1)
        start = flipped + width - 1 - centre  # the first q whose range reaches below c
        after = summed[:, start + 1:flipped + 1] - summed[:, centre:centre + 1]
        left = decayed_prefix_readout(reversed_delta.cumsum(1) - reversed_delta,
                                      reversed_delta * u_full[:, width - 1:centre].flip(1),
                                      B_full[:, width - 1:centre].flip(1), A, after, C_full[:, start:flipped])
        y = y + F.pad(left, (0, 0, start - first, 0))
    return y, u_q
