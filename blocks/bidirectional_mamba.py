"""SIGMA's Partially Flipped Mamba (PF-Mamba): a forward and a partially reversed Mamba stream, gated."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock
from zoo.blocks.ds_gate import DenseSelectiveGate
from zoo.blocks.masking import fit_to_length, left_align, lengths_from_mask, right_align, zero_pads
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
      everything in right-aligned slots and left-aligns the result. Pads swapped into the flipped
      stream are masked (zero input, no state update) rather than fed as a padding embedding.

    In the paper modes ``G(H^f)·M^f`` is mapped back to the original positions before the sum; in
    ``"code"`` mode it is not (the code adds the flipped stream slot by slot).

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
        max_len: int = 50,
    ) -> None:
        super().__init__()
        if flip not in ("partial", "full", "none", "code"):
            raise ValueError(f"bidirectional_mamba: flip must be 'partial', 'full', 'none' or 'code', got {flip!r}")
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
        x = zero_pads(x, mask)
        if self.flip == "code":
            slots_x, slots_mask = fit_to_length(x, mask, self.max_len, "bidirectional_mamba")
            y = left_align(self._streams(right_align(slots_x, slots_mask), right_align(slots_mask, slots_mask)), slots_mask)
            return y[:, -x.shape[1]:]
        return self._streams(x, mask)

    def _streams(self, x: Tensor, mask: Tensor) -> Tensor:
        index = self.flip_index(mask)
        x_f, mask_f = gather_time(x, index), mask.gather(1, index)
        m = self.mamba(x, mask)
        m_f = (self.mamba if self.flipped_mamba is None else self.flipped_mamba)(x_f, mask_f)
        if self.gate_kind == "ds_gate":
            m, m_f = self._gated(x, mask, m, x_f, mask_f, m_f)
        back = (lambda t: t) if self.flip == "code" else (lambda t: gather_time(t, index))
        if self.gate_kind == "linear":
            return self.mix(torch.cat([m, back(m_f)], -1))
        if self.stream_weights is not None:
            m, m_f = self.stream_weights[0] * m, self.stream_weights[1] * m_f
        return m + back(m_f)

    def _gated(self, x: Tensor, mask: Tensor, m: Tensor, x_f: Tensor, mask_f: Tensor, m_f: Tensor) -> tuple[Tensor, Tensor]:
        if self.gate.form == "paper":
            return self.gate.modulate(m, self.gate(x, mask)), self.gate.modulate(m_f, self.gate(x_f, mask_f))
        g = self.gate(x, mask)
        g_f = self.gate.code_gate(x_f + self.flipped_dense(x_f), g)
        return self.gate.modulate(m, g), self.gate.modulate(m_f, g_f)
