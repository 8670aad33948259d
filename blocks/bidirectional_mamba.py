"""SIGMA's Partially Flipped Mamba (PF-Mamba): a forward and a partially reversed Mamba stream, gated."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock
from zoo.blocks.compiled import tracing
from zoo.blocks.ds_gate import DenseSelectiveGate
from zoo.blocks.flips import (code_flip_contents, code_flip_index, code_flip_newest_index, code_flip_prefix_outputs,
                              partial_flip_index, partial_flip_prefix_outputs)
from zoo.blocks.masking import fit_to_length, gather_time, left_align, right_align, zero_pads
from zoo.blocks.ssm.mamba import Mamba
from zoo.registry import register_block

Flip = Literal["partial", "full", "none", "code"]


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
            return code_flip_index(mask.shape[1], self.remain, mask.device).expand(mask.shape)
        return partial_flip_index(mask, 0 if self.flip == "full" else self.remain)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        self._check_input(x, mask)
        if not self.reads_pads:
            x = zero_pads(x, mask)
        if self.flip == "code":
            slots_x, slots_mask = fit_to_length(x, mask, self.max_len, "bidirectional_mamba")
            y = left_align(self._streams(right_align(slots_x, slots_mask), right_align(slots_mask, slots_mask)), slots_mask)
            return y[:, -x.shape[1]:]
        return self._streams(x, mask)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """``forward(x, mask)[:, -1:]`` with both Mambas read out at one position alone
        (:meth:`~zoo.blocks.ssm.mamba.Mamba.forward_last`) and the gates taken there, where the flip allows:

        * ``flip`` "none" or "partial" (``remain >= 1``): the newest item is also the newest of the flipped stream;
        * ``"code"`` added slot by slot (no ``map_back``) with the code's gate or none: the newest item's slot
          ``n - 1`` adds the flipped stream's output at that slot, which reads the flipped slots ``0 .. n - 1``
          only (Mamba is causal): those slots, moved to the end of the row, are a sequence whose newest output
          it is. Both streams then skip the columns before the batch's longest row (the block works in
          ``max_len`` slots, so a batch of short rows has many).

        Other flips run ``forward``."""
        code_shortcut = self.flip == "code" and not self.map_back and not (
            self.gate_kind == "ds_gate" and self.gate.form == "paper")
        paper_shortcut = not self.reads_pads and (self.flip == "none" or (self.flip == "partial" and self.remain >= 1))
        if not (code_shortcut or paper_shortcut):
            return super().forward_last(x, mask)
        self._check_input(x, mask)
        if not self.reads_pads:
            x = zero_pads(x, mask)
        if self.flip == "code":
            x, mask = fit_to_length(x, mask, self.max_len, "bidirectional_mamba")
            index = code_flip_newest_index(mask, self.remain)
            x_f = gather_time(x, index)
            mask_f = mask if self.reads_pads else mask.gather(1, index) & mask
            if not tracing():  # the columns before any item (a tracer keeps them: the count depends on the data)
                unused = min(int((~mask).all(0).long().cumprod(0).sum()), mask.shape[1] - 1)
                x, mask, x_f, mask_f = (t[:, unused:] for t in (x, mask, x_f, mask_f))
        else:
            _, x_f, mask_f = self._flipped(x, mask)
        m = self.mamba.forward_last(x, mask)
        m_f = self._flipped_mamba().forward_last(x_f, mask_f)
        if self.gate_kind == "ds_gate":
            g, g_f = self._gates(x, mask, x_f, mask_f, newest_only=True)
            m, m_f = self.gate.modulate(m, g), self.gate.modulate(m_f, g_f)
        return self._sum(m, m_f)

    def _check_input(self, x: Tensor, mask: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model or mask.shape != x.shape[:2]:
            raise ValueError(
                f"bidirectional_mamba: expected x (B, L, {self.d_model}) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        if self.reads_pads and x.shape[1] != self.max_len:
            raise ValueError(f"bidirectional_mamba: pad_slots='read' reads the padded slots of max_len={self.max_len} "
                             f"slots, as the released code does, and needs inputs exactly that wide, got {x.shape[1]}")

    def _flipped(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The flip's index, the flipped input ``H^f`` and its mask (every slot with ``pad_slots="read"``)."""
        index = self.flip_index(mask)
        mask_f = torch.ones_like(mask) if self.reads_pads else mask.gather(1, index)
        return index, gather_time(x, index), mask_f

    def _streams(self, x: Tensor, mask: Tensor) -> Tensor:
        index, x_f, mask_f = self._flipped(x, mask)
        m = self.mamba(x, mask)
        m_f = self._flipped_mamba()(x_f, mask_f)
        if self.gate_kind == "ds_gate":
            g, g_f = self._gates(x, mask, x_f, mask_f)
            m, m_f = self.gate.modulate(m, g), self.gate.modulate(m_f, g_f)
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
        """Exact every-prefix outputs for ``"none"``; for ``"partial"`` with ``remain >= 1`` (the newest item stays
        in place; with the paper's DS gate ``remain`` must also exceed the gate convolution's reach into the past,
        so that the flipped stream's gate window at the newest item holds only kept items); and for ``"code"``
        unless the paper's DS gate convolves the flipped stream. ``"full"`` moves the newest item to the front of
        the flipped stream; it trains with ``last``."""
        paper_gate = self.gate_kind == "ds_gate" and self.gate.form == "paper"
        if self.flip in ("none", "code"):
            return self.flip == "none" or not paper_gate
        if self.flip != "partial" or self.remain < 1:
            return False
        if paper_gate and not self.gate.causal:
            return self.remain > self.gate.conv.pads[0]
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """For every position ``t``, the output at the newest item of the prefix ending at ``t``.

        Paper flips: that item stays in place in the flipped stream (``remain >= 1``), so both streams are read at
        ``t`` (with or without ``map_back``): the forward Mamba is causal; the flipped one comes from
        :func:`~zoo.blocks.flips.partial_flip_prefix_outputs`; the gate of both streams is the DS gate at the newest
        item of the prefix (its window there holds the same items in both streams, see :meth:`offers_prefixes`).
        ``"code"``: see :meth:`_code_prefixes`.
        """
        if not self.offers_prefixes():
            raise NotImplementedError(
                f"bidirectional_mamba with flip={self.flip!r}, remain={self.remain} has no exact every-prefix pass")
        if self.flip == "code":
            return self._code_prefixes(x, mask)
        x = zero_pads(x, mask)
        m = self.mamba(x, mask)
        flipped = self._flipped_mamba()
        m_f = flipped(x, mask) if self.flip == "none" else partial_flip_prefix_outputs(flipped, x, mask, self.remain)
        if self.gate_kind == "ds_gate":
            if self.gate.form == "paper":
                g = g_f = self.gate.forward_prefixes(x, mask)
            else:
                g = self.gate(x, mask)
                g_f = self.gate.code_gate(x + self.flipped_dense(x), g)
            m, m_f = self.gate.modulate(m, g), self.gate.modulate(m_f, g_f)
        return self._sum(m, m_f)

    def _code_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """Every-prefix outputs of the fixed-slot flip, each prefix right-padded to ``max_len`` slots as in
        :meth:`forward`: the forward stream and the gates are read at each prefix's newest slot, the flipped
        stream comes from :func:`~zoo.blocks.flips.code_flip_prefix_outputs`, and the flipped gate reads what
        the prefix's flipped slot there holds (:func:`~zoo.blocks.flips.code_flip_contents`).

        With ``pad_slots="read"`` the padded slots a prefix's flipped stream reads are taken from the first
        ``max_len - remain`` slots of each row, which must all be padding holding the padding encoding
        (:class:`zoo.model.SeqRecModel` left-pads every window by ``max_len`` for this); when those slots hold one
        vector, as in evaluation, this equals running each prefix alone."""
        flipped = max(self.max_len - self.remain, 0)
        if self.reads_pads:
            if x.shape[1] < flipped or mask[:, :flipped].any():
                raise ValueError(f"bidirectional_mamba: with pad_slots='read' the every-prefix pass reads the padded slots "
                                 f"from each row's first {flipped} slots, which must all be padding; got a "
                                 f"{tuple(mask.shape)} mask with items there (SeqRecModel left-pads by max_len)")
            pads = x[:, :flipped]
        else:
            x = zero_pads(x, mask)
            pads = x.new_zeros(x.shape[0], flipped, x.shape[2])
        slots_x, slots_mask = fit_to_length(x, mask, self.max_len, "bidirectional_mamba")
        items, items_mask = right_align(slots_x, slots_mask), right_align(slots_mask, slots_mask)
        m = self.mamba(items, items_mask)
        m_f = code_flip_prefix_outputs(self._flipped_mamba(), items, pads, self.remain, self.reads_pads)
        if self.gate_kind == "ds_gate":
            contents = code_flip_contents(items, pads, self.remain)
            g = self.gate(items, items_mask)
            g_f = self.gate.code_gate(contents + self.flipped_dense(contents), g)
            m, m_f = self.gate.modulate(m, g), self.gate.modulate(m_f, g_f)
        y = left_align(self._sum(m, m_f), slots_mask)
        return F.pad(y, (0, 0, x.shape[1] - self.max_len, 0)) if x.shape[1] > self.max_len else y[:, -x.shape[1]:]

    def _gates(self, x: Tensor, mask: Tensor, x_f: Tensor, mask_f: Tensor,
               newest_only: bool = False) -> tuple[Tensor, Tensor]:
        """The DS gate's values for the forward and the flipped stream (Eq. 3; in the code form the flipped
        stream's gate also reads the forward one's), at every position or (``newest_only``) at the newest."""
        gate = self.gate.forward_last if newest_only else self.gate
        if self.gate.form == "paper":
            return gate(x, mask), gate(x_f, mask_f)
        g = gate(x, mask)
        if newest_only:
            x_f = x_f[:, -1:]
        return g, self.gate.code_gate(x_f + self.flipped_dense(x_f), g)
