"""SIGMA's Partially Flipped Mamba (PF-Mamba): a forward and a partially reversed Mamba stream, gated."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock
from zoo.blocks.ds_gate import DenseSelectiveGate
from zoo.blocks.masking import fit_to_length, left_align, lengths_from_mask, right_align, shift_time, zero_pads
from zoo.blocks.ssm.decayed_prefix import decayed_prefix_readout
from zoo.blocks.ssm.final_state_scan import final_state_scan
from zoo.blocks.ssm.mamba import Mamba
from zoo.registry import register_block

Flip = Literal["partial", "full", "none", "code"]


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


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t]]`` for ``x (B, L, ...)`` and ``index (B, L)``."""
    return x.gather(1, index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


def flipped_prefix_outputs(mamba: Mamba, x: Tensor, mask: Tensor, remain: int) -> Tensor:
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

    Per prefix that is one scan of ``K - 1 + 1 + remain`` steps from zero read at its last step
    (:func:`~zoo.blocks.ssm.final_state_scan.final_state_scan`), plus ``C_t · (Λ_t ⊙ Q)`` for the shared
    part, ``Λ_t`` the decay of the kept steps
    (:func:`~zoo.blocks.ssm.decayed_prefix.decayed_prefix_readout`); both are one compiled pass on the
    CPU, and nothing per prefix grows with its length.
    """
    batch, length, _ = x.shape
    width = mamba.d_conv
    weight = mamba.conv1d.weight.squeeze(1)  # (E, K); tap K-1 multiplies the current input
    bias = mamba.conv1d.bias
    A = -torch.exp(mamba.A_log)  # (E, N)
    real = mask.unsqueeze(-1).to(x.dtype)
    u, z = mamba.in_proj(x).chunk(2, dim=-1)
    u = u * real  # (B, L, E), zero at pads

    def project(conv: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``v = silu(conv)`` and its ``Δ`` (zero where not ``valid``), ``B``, ``C``."""
        v = F.silu(conv if bias is None else conv + bias)
        dt, B, C = mamba.x_proj(v).split([mamba.dt_rank, mamba.d_state, mamba.d_state], dim=-1)
        return v, F.softplus(mamba.dt_proj(dt)) * valid, B, C

    lag = remain + width - 1
    padded_u, padded_real = (F.pad(s, (0, 0, lag, width)) for s in (u, real))

    def earlier(padded: Tensor, steps: int) -> Tensor:
        """A view of the sequence padded by ``F.pad(., (0, 0, lag, width))``, moved ``steps`` slots later."""
        return padded[:, lag - steps: lag - steps + length]

    # The shared part: items whose window is whole, summed in item order, read at slot t - remain - K + 1.
    full_window = sum(weight[:, width - 1 - j] * earlier(padded_u, -j) for j in range(width))
    v, delta, B, _ = project(full_window, real)
    reversed_delta = delta.cumsum(1)  # sum of Δ over slots <= s

    # Per prefix: K - 1 boundary steps, the reversed run's decay as one step, `remain` kept steps.
    steps: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for reach in range(width - 1):  # slot e - reach, e = t - remain: its window cut at slot e
        conv = sum(weight[:, width - 1 - j] * earlier(padded_u, remain + reach - j) for j in range(reach + 1))
        steps.append(project(conv, earlier(padded_real, remain + reach)))
    zero_e, zero_n = torch.zeros_like(u), torch.zeros_like(B)
    steps.append((zero_e, shift_time(reversed_delta, lag), zero_n, zero_n))
    first = length - mask.long().sum(1, keepdim=True)  # the first real slot of each row
    slots = torch.arange(length, device=x.device)
    tail = []  # u of item j+1 (the reversed run ends with items ..., 2, 1) while it is in the reversed run
    for j in range(width - 1):
        item = u.gather(1, (first + j).clamp_max(length - 1).unsqueeze(-1).expand(batch, 1, u.shape[-1]))
        tail.append(item * ((first + j <= slots - remain) & (first + j < length)).unsqueeze(-1).to(u.dtype))
    for i in range(1, remain + 1):  # kept slot t - remain + i; k steps back is kept slot s - k or item k - i + 1
        conv = sum(weight[:, width - 1 - k] * (earlier(padded_u, remain - i + k) if k < i else tail[k - i])
                   for k in range(width))
        steps.append(project(conv, earlier(padded_real, remain - i)))
    v_s = torch.stack([v_k for v_k, _, _, _ in steps], -1).flatten(0, 1)  # (rows, E, steps), a row per prefix
    delta_s = torch.stack([delta_k for _, delta_k, _, _ in steps], -1).flatten(0, 1)
    B_s = torch.stack([B_k for _, _, B_k, _ in steps], -2).flatten(0, 1)  # (rows, steps, N)
    C_t = steps[-1][3]  # the newest item's C: the only readout
    y = final_state_scan(v_s, delta_s, A, B_s, C_t.flatten(0, 1), D=mamba.D).reshape(batch, length, -1)

    # C_t · (Λ_t ⊙ Q_{t - lag}), Λ_t = exp(A · sum of the kept steps' Δ), Q_s = sum_{j <= s} (prod_{i < j} a_i) b_j.
    if lag < length:
        kept_delta = delta_s[..., -remain:].sum(-1).reshape(batch, length, -1)
        cut = length - lag
        shared = decayed_prefix_readout(reversed_delta[:, :cut] - delta[:, :cut], delta[:, :cut] * v[:, :cut], B[:, :cut],
                                        A, kept_delta[:, lag:], C_t[:, lag:])
        y = y + F.pad(shared, (0, 0, lag, 0))
    return mamba.out_proj(y * F.silu(z))


@register_block("bidirectional_mamba", aliases=("pf_mamba",))
class BidirectionalMamba(SequenceBlock):
    """PF-Mamba: ``M = Mamba(H)``, ``M^f = Mamba(H^f)``, ``y = G(H)·M + G(H^f)·M^f`` (SIGMA Eqs. 2-3).

    Source: SIGMA (Liu et al., AAAI'25) §"Partially Flipped Mamba" / "Dense Selective Gate";
    code-faithful modes: docs/models/sigma.md, "Released code".

    ``flip`` builds ``H^f``:

    * ``"partial"`` (paper): per sequence of ``n`` real items, the first ``n - remain`` real items are
      reversed and the last ``remain`` kept in place, ``[h_1..h_n, h_{n+1}..h_N] ->
      [h_n..h_1, h_{n+1}..h_N]`` with ``r = N - n = remain``; nothing flips when ``n <= remain``;
      length-aware, pads untouched;
    * ``"full"``: all real items reversed (the paper's ``r = 0``);
    * ``"none"``: ``H^f = H``, the paper's "w/o partial flipping" ablation (with ``shared=True`` the two
      streams are then identical);
    * ``"code"``: the released code's flip (docs/models/sigma.md, "Fixed-index flip"): the code right-pads, and reverses
      slots ``0 .. L - remain - 1`` of the *padded* tensor whatever each sequence's length. Our tensors
      are left-padded, so this mode right-aligns the batch, applies that fixed-index flip, runs
      everything in right-aligned slots and left-aligns the result. ``pad_slots`` says what the flipped
      stream reads in the padded slots the flip moves into it: nothing (``"masked"``, the default: zero
      input, no state update), or, with ``"read"``, what the input holds there -- in a model, the item
      encoder's encoding of padding row 0 -- as the released code does (its padded slots hold LayerNorm
      of RecBole's padding row, a random vector that never trains; docs/models/sigma.md, "Padding in the
      released code"). ``"read"`` reads padded slots (``reads_pads``), so the input must be exactly
      ``max_len`` wide, which :class:`zoo.model.SeqRecModel` ensures for a model holding such a block.

    ``map_back`` says whether ``G(H^f)·M^f`` is mapped back to the original positions before the sum
    (slot ``i`` then adds the flipped stream's output *for item* ``i``) or added slot by slot (slot ``i``
    adds the output at flipped slot ``i``, which belongs to another item wherever the flip moved one).
    SIGMA's Eq. 3 writes the plain sum ``G(H)·M + G(H^f)·M^f`` and does not say; the released code adds
    slot by slot. The default (``None``) maps back in the paper modes and not in ``"code"``. With
    ``remain >= 1`` the newest item stays in place, so the two readings give the same output at the
    newest position (what a ``last`` read-out scores); they differ at older positions, which matters
    for a full flip (``remain = 0``) or when another sequence-mixing layer follows.

    ``"code"`` works in ``max_len`` slots, as the code does (RecBole pads every batch to
    ``MAX_ITEM_LIST_LENGTH``): each batch is first left-padded to ``max_len``, so the flipped slots
    are fixed by the recipe, not by the batch, and the block stays padding-invariant. Which items a
    sequence's flipped stream sees still depends on its length in the code's way (a sequence of
    ``n <= (max_len - remain) / 2`` items sees only padding there; docs/models/sigma.md, "Fixed-index flip").

    The streams go through :class:`~zoo.blocks.ssm.mamba.Mamba` (``d_state``, ``d_conv``, ``expand``), one
    module for both (``shared=True``, as in the code; parameters ``mamba.*``) or two (the paper's "two
    Mamba blocks"; the second is ``flipped_mamba.*``).
    ``gate`` combines them:

    * ``"ds_gate"``: each stream weighted by a :class:`~blocks.ds_gate.DenseSelectiveGate` of its own
      input (one gate module for both, Eq. 3); ``gate_form="paper"`` gives ``G(H)·M + G(H^f)·M^f``,
      ``"code"`` gives ``M·(1 + G1) + M^f·(1 + G2)`` with ``G1 = g(H + W_1 H, H + W_1 H)``,
      ``G2 = g(H^f + W_2 H^f, G1)`` (the code's flipped gate reads ``σ(G1)``; docs/models/sigma.md, "Code gate");
    * ``"sum"``: ``M + M^f`` (no gate);
    * ``"linear"``: ``[M; M^f] W + b`` with ``W: 2D -> D`` (the "w/o DS gate" ablation's linear mix).

    ``stream_weights=(w_f, w_b)`` multiplies the two (gated) streams by learnable scalars initialised
    to these values before the sum, as the code's mixing does (0.8 forward, 0.1 flipped; docs/models/sigma.md, "Stream weights");
    ``None`` (paper): no scalars.

    Not causal: the flipped stream carries later items to earlier positions.
    """

    causal = False
    contract_variants = (
        {"flip": "full", "shared": False, "gate": "sum"},
        {"flip": "none", "gate": "linear", "remain": 0},
        {"remain": 2, "gate_form": "code", "gate_dropout": 0.2},
        {"flip": "code", "gate_form": "code", "stream_weights": (0.8, 0.1)},
        {"remain": 2, "map_back": False},
    )

    def __init__(
        self,
        d_model: int,
        flip: Flip = "partial",
        remain: int = 5,
        shared: bool = True,
        d_state: int = 32,
        d_conv: int = 4,
        expand: int = 2,
        gate: Literal["ds_gate", "sum", "linear"] = "ds_gate",
        gate_form: Literal["paper", "code"] = "paper",
        gate_kernel_size: int = 3,
        gate_dropout: float = 0.0,
        stream_weights: tuple[float, float] | None = None,
        map_back: bool | None = None,
        pad_slots: Literal["masked", "read"] = "masked",
        max_len: int = 50,
    ) -> None:
        super().__init__()
        if flip not in ("partial", "full", "none", "code"):
            raise ValueError(f"bidirectional_mamba: flip must be 'partial', 'full', 'none' or 'code', got {flip!r}")
        if pad_slots not in ("masked", "read"):
            raise ValueError(f"bidirectional_mamba: pad_slots must be 'masked' or 'read', got {pad_slots!r}")
        if pad_slots == "read" and flip != "code":
            raise ValueError("bidirectional_mamba: pad_slots='read' belongs to flip='code' (the other flips never move "
                             f"a padded slot into the sequence), got flip={flip!r}")
        if remain < 0:
            raise ValueError(f"bidirectional_mamba: remain (items kept in place) must be >= 0, got {remain}")
        if gate not in ("ds_gate", "sum", "linear"):
            raise ValueError(f"bidirectional_mamba: gate must be 'ds_gate', 'sum' or 'linear', got {gate!r}")
        if stream_weights is not None and (gate == "linear" or len(stream_weights) != 2):
            raise ValueError(
                "bidirectional_mamba: stream_weights must be two numbers (forward, flipped) and cannot be "
                f"combined with gate='linear' (its W already weights the streams), got {stream_weights!r} with gate={gate!r}"
            )
        self.d_model, self.flip, self.remain, self.gate_kind = d_model, flip, remain, gate
        self.mamba = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        self.flipped_mamba = None if shared else Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        if gate == "ds_gate":
            self.gate = DenseSelectiveGate(d_model, form=gate_form, kernel_size=gate_kernel_size, dropout=gate_dropout)
            if gate_form == "code":
                self.flipped_dense = nn.Linear(d_model, d_model)
        elif gate == "linear":
            self.mix = nn.Linear(2 * d_model, d_model)
        self.stream_weights = None if stream_weights is None else nn.Parameter(torch.tensor([float(w) for w in stream_weights]))
        self.map_back = flip != "code" if map_back is None else map_back
        self.reads_pads = pad_slots == "read"
        self.max_len = max_len

    def flip_index(self, mask: Tensor) -> Tensor:
        """Source slot of each slot of ``H^f`` (in right-aligned slots for ``flip="code"``)."""
        if self.flip == "none":
            return torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)
        if self.flip == "code":
            return partial_flip_index(torch.ones_like(mask), self.remain)
        return partial_flip_index(mask, 0 if self.flip == "full" else self.remain)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model or mask.shape != x.shape[:2]:
            raise ValueError(
                f"bidirectional_mamba: expected x (B, L, {self.d_model}) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        if self.reads_pads and x.shape[1] != self.max_len:
            raise ValueError(f"bidirectional_mamba: pad_slots='read' reads the padded slots of max_len={self.max_len} "
                             f"slots, as the released code does, and needs inputs exactly that wide, got {x.shape[1]}")
        if not self.reads_pads:
            x = zero_pads(x, mask)
        if self.flip == "code":
            slots_x, slots_mask = fit_to_length(x, mask, self.max_len, "bidirectional_mamba")
            y = left_align(self._streams(right_align(slots_x, slots_mask), right_align(slots_mask, slots_mask)), slots_mask)
            return y[:, -x.shape[1]:]
        return self._streams(x, mask)

    def _streams(self, x: Tensor, mask: Tensor) -> Tensor:
        index = self.flip_index(mask)
        x_f = gather_time(x, index)
        mask_f = torch.ones_like(mask) if self.reads_pads else mask.gather(1, index)  # "read": every slot is input
        m = self.mamba(x, mask)
        m_f = self._flipped_mamba()(x_f, mask_f)
        if self.gate_kind == "ds_gate":
            m, m_f = self._gated(x, mask, m, x_f, mask_f, m_f)
        return self._sum(m, gather_time(m_f, index) if self.map_back else m_f)

    def _flipped_mamba(self) -> Mamba:
        return self.mamba if self.flipped_mamba is None else self.flipped_mamba

    def _sum(self, m: Tensor, m_f: Tensor) -> Tensor:
        """The (gated) forward stream and the flipped one, at the original positions, combined."""
        if self.gate_kind == "linear":
            return self.mix(torch.cat([m, m_f], -1))
        if self.stream_weights is not None:
            m, m_f = self.stream_weights[0] * m, self.stream_weights[1] * m_f
        return m + m_f

    def offers_prefixes(self) -> bool:
        """Exact every-prefix outputs for the paper's flips that keep the newest item in place: ``"none"``,
        and ``"partial"`` with ``remain >= 1`` -- with the paper's DS gate, ``remain`` must also exceed the
        gate convolution's reach into the past, so that the flipped stream's gate window at the newest
        item holds only kept items. ``"full"`` and ``"code"`` move the newest item; they train with ``last``."""
        if self.flip == "none":
            return True
        if self.flip != "partial" or self.remain < 1:
            return False
        if self.gate_kind == "ds_gate" and self.gate.form == "paper" and not self.gate.causal:
            return self.remain > self.gate.conv.pads[0]
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """For every position ``t``, the output at the newest item of the prefix ending at ``t``.

        That item stays in place in the flipped stream (``remain >= 1``), so both streams are read at
        ``t`` (with or without ``map_back``): the forward Mamba is causal; the flipped one comes from
        :func:`flipped_prefix_outputs`; the gate of both streams is the DS gate at the newest item of the prefix (its window there holds the
        same items in both streams, see :meth:`offers_prefixes`).
        """
        if not self.offers_prefixes():
            raise NotImplementedError(
                f"bidirectional_mamba with flip={self.flip!r}, remain={self.remain} has no exact every-prefix pass")
        x = zero_pads(x, mask)
        m = self.mamba(x, mask)
        flipped = self._flipped_mamba()
        m_f = flipped(x, mask) if self.flip == "none" else flipped_prefix_outputs(flipped, x, mask, self.remain)
        if self.gate_kind == "ds_gate":
            if self.gate.form == "paper":
                g = g_f = self.gate.forward_prefixes(x, mask)
            else:
                g = self.gate(x, mask)
                g_f = self.gate.code_gate(x + self.flipped_dense(x), g)
            m, m_f = self.gate.modulate(m, g), self.gate.modulate(m_f, g_f)
        return self._sum(m, m_f)

    def _gated(self, x: Tensor, mask: Tensor, m: Tensor, x_f: Tensor, mask_f: Tensor, m_f: Tensor) -> tuple[Tensor, Tensor]:
        if self.gate.form == "paper":
            return self.gate.modulate(m, self.gate(x, mask)), self.gate.modulate(m_f, self.gate(x_f, mask_f))
        g = self.gate(x, mask)
        g_f = self.gate.code_gate(x_f + self.flipped_dense(x_f), g)
        return self.gate.modulate(m, g), self.gate.modulate(m_f, g_f)
