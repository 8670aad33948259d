"""SIGMA's Feature-Extract GRU: a time convolution followed by a GRU."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock, State
from zoo.blocks.gru import masked_gru
from zoo.blocks.masked_conv import MaskedConv1d, Padding
from zoo.blocks.masking import left_align, right_align, shift_time, zero_pads
from zoo.registry import register_block


@register_block("fe_gru")
class FeatureExtractGRU(SequenceBlock):
    """``C = Conv1d_k(H)``, ``F = GRU(C)`` -- SIGMA's FE-GRU (Liu et al., AAAI'25, Eq. 7).

    GRU (Eq. 7): ``z_t = σ(W_z [f_{t-1}, c_t] + b_z)``, ``r_t = σ(W_r [f_{t-1}, c_t] + b_r)``,
    ``f~_t = tanh(W [r_t ⊙ f_{t-1}, c_t] + b)``, ``f_t = z_t ⊙ f_{t-1} + (1 - z_t) ⊙ f~_t``, computed by
    torch's ``nn.GRU`` (hidden width D, one layer) as the released code does; like cuDNN it applies the
    reset gate after the hidden product, ``f~_t = tanh(W_c c_t + b_c + r_t ⊙ (W_f f_{t-1} + b_f))``, and
    its update gate weighs the candidate by ``1 - z_t`` as above. The paper leaves the kernel
    unspecified; the released code uses ``Conv1d(D, D, 3, padding=1)`` (centred, with bias) and
    ``GRU(bias=False)`` (docs/models/sigma.md, "FE-GRU"): ``kernel_size=3, padding="same", bias=False``
    reproduces it; ``bias=True`` has the paper's biases.

    With ``pad_slots="masked"`` (default) pads never enter: they are zeroed before the convolution
    (acting as its zero padding) and the GRU runs on the packed real items only, so its state is exactly
    zero at each sequence's first real item. ``padding="causal"`` makes the block causal and streamable
    (state: the conv window and the GRU hidden state).

    ``pad_slots="read"`` (with ``padding="same"``) convolves as the released SIGMA code does
    (docs/models/sigma.md, "Padding in the released code"): over ``max_len`` right-padded slots whose
    padded slots hold what the input holds there -- in a model, the item encoder's encoding of padding
    row 0, a vector RecBole's initialisation makes non-zero -- so the window at the newest item of a
    sequence shorter than ``max_len`` reads that vector in the slot after it. The GRU still starts at the
    first real item (the code's GRU runs from slot 0, where its items start). The block then reads padded
    slots (``reads_pads``): its input must be exactly ``max_len`` wide, which :class:`zoo.model.SeqRecModel`
    ensures by padding every batch to ``max_len`` for a model holding such a block.
    """

    causal = False
    contract_variants = ({"padding": "causal", "kernel_size": 5, "bias": False},)

    def __init__(
        self,
        d_model: int,
        kernel_size: int = 3,
        padding: Padding = "same",
        conv_bias: bool = True,
        bias: bool = True,
        pad_slots: Literal["masked", "read"] = "masked",
        max_len: int = 50,
    ) -> None:
        super().__init__()
        if pad_slots not in ("masked", "read"):
            raise ValueError(f"fe_gru: pad_slots must be 'masked' or 'read', got {pad_slots!r}")
        if pad_slots == "read" and padding != "same":
            raise ValueError("fe_gru: pad_slots='read' needs padding='same' (only a centred window reaches a padded slot)")
        self.d_model = d_model
        self.conv = MaskedConv1d(d_model, d_model, kernel_size, padding, bias=conv_bias)
        self.gru = nn.GRU(d_model, d_model, num_layers=1, bias=bias, batch_first=True)
        self.causal = padding == "causal"
        self.streaming = self.causal
        self.reads_pads = pad_slots == "read"
        self.max_len = max_len

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model or mask.shape != x.shape[:2]:
            raise ValueError(
                f"fe_gru: expected x (B, L, {self.d_model}) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        conv = self._conv_reading_pads(x, mask) if self.reads_pads else self.conv(x, mask)
        return masked_gru(self.gru, conv, mask)

    def _conv_reading_pads(self, x: Tensor, mask: Tensor) -> Tensor:
        """The convolution over the right-aligned ``max_len`` slots, padded slots as given (``pad_slots="read"``)."""
        if x.shape[1] != self.max_len:
            raise ValueError(f"fe_gru: pad_slots='read' reads the padded slots of max_len={self.max_len} slots, as the "
                             f"released code does, and needs inputs exactly that wide, got {x.shape[1]}")
        slots = right_align(x, mask)
        return left_align(self.conv(slots, torch.ones_like(mask)), mask)

    def offers_prefixes(self) -> bool:
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """The FE-GRU at the newest position of every prefix, all at once.

        A centred convolution reads ``R`` later positions (``R = 1`` for kernel 3). In the prefix ending at
        ``t``, every position up to ``t - R`` still has all its taps, so the GRU state after ``t - R`` is
        the ordinary one; the last ``R`` positions have their later taps cut off by the prefix's end
        (:meth:`MaskedConv1d.forward_truncated`), so ``R`` more GRU steps per prefix start from that state.
        With ``pad_slots="read"`` the cut taps read the padded slots after the prefix's newest item instead
        (the code's zero padding past ``max_len`` slots): the vector each row holds in its first slot, which
        must be padding (as every window :class:`zoo.model.SeqRecModel` builds for such a block is); when all
        padded slots hold one vector, as in evaluation, this equals running each prefix alone.
        """
        if self.causal:
            return self.forward(x, mask)
        if self.reads_pads and mask[:, 0].any():
            raise ValueError("fe_gru: with pad_slots='read' the every-prefix pass reads the padding encoding from each "
                             f"row's first slot, which must be padding; got a {tuple(mask.shape)} mask with an item there")
        reach = self.conv.lookahead
        hidden = shift_time(zero_pads(masked_gru(self.gru, self.conv(x, mask), mask), mask), reach)
        rows = hidden.shape[0] * hidden.shape[1]
        for i in range(1, reach + 1):  # position t - reach + i of the prefix ending at t
            c = shift_time(self.conv.forward_truncated(x, mask, lookahead=reach - i), reach - i)
            if self.reads_pads:
                c = c + self._cut_taps_on_pads(x, mask, cut_after=reach - i)
            real = shift_time(mask, reach - i).unsqueeze(-1)
            _, stepped = self.gru(c.reshape(rows, 1, -1), hidden.reshape(1, rows, -1).contiguous())
            hidden = torch.where(real, stepped.reshape(hidden.shape), hidden)
        return hidden

    def _cut_taps_on_pads(self, x: Tensor, mask: Tensor, cut_after: int) -> Tensor:
        """At each ``t``, what the taps past ``t`` of the window at ``t - (reach - cut_after)`` add when they read the
        padding vector ``x[:, 0]`` in the right-padded ``max_len`` slots of the prefix ending at ``t``: tap offset
        ``d > cut_after`` lands on the prefix's slot ``n_t - 1 - cut_after + d``, a padded slot below ``max_len``."""
        items = mask.long().cumsum(1)  # n_t
        out = torch.zeros_like(x)
        for offset in range(cut_after + 1, self.conv.lookahead + 1):
            on_pad = ((items - 1 - cut_after + offset) < self.max_len).unsqueeze(-1).to(x.dtype)
            out = out + on_pad * F.linear(x[:, :1], self.conv.conv.weight[..., self.conv.pads[0] + offset])
        return out

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        if not self.streaming:
            return super().init_state(batch_size, device, dtype)
        dtype = self.gru.weight_hh_l0.dtype if dtype is None else dtype
        hidden = torch.zeros(1, batch_size, self.d_model, device=device, dtype=dtype)
        return self.conv.init_state(batch_size, device, dtype), hidden

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.streaming:
            return super().step(x_t, state)
        window, hidden = state
        c_t, window = self.conv.step(x_t, window)
        y, hidden = self.gru(c_t.unsqueeze(1), hidden)
        return y.squeeze(1), (window, hidden)
