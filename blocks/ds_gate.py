"""SIGMA's Dense Selective Gate (DS gate): input-dependent weights for a Mamba stream."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock, State
from zoo.blocks.dropout import HashDropout
from zoo.blocks.masked_conv import MaskedConv1d, Padding
from zoo.registry import register_block


@register_block("ds_gate")
class DenseSelectiveGate(SequenceBlock):
    """Maps a sequence ``H (B, L, D)`` to gate values ``G(H) (B, L, D)`` for a stream ``M`` it weights.

    ``form="paper"`` -- SIGMA (Liu et al., AAAI'25) §"Dense Selective Gate", Eqs. 4-6:
    ``G0 = Conv1d(H W1 + b1)``; ``δ = G0 Wδ + bδ``; ``G(H) = SiLU(δ) + σ(δ)``; the stream is weighted
    as ``G(H) · M`` (Eq. 3). The convolution is a full ``Conv1d(D, D, kernel_size)`` over time (kernel
    size not given in the paper; 3 as in the code's other conv), pads zeroed before it; ``padding``
    ``"same"`` (centred, not causal) or ``"causal"`` (then the gate is causal and streams).

    ``form="code"`` -- the released code (docs/models/sigma.md, "Code gate"): no convolution;
    ``h = H + Linear(H)``; ``G = Dropout(Linear_si(SiLU(h)) + Linear_sig(σ(h)))`` (activations before
    the Linears, unbounded) and the stream is weighted as ``M · (1 + G)``. Position-wise, so causal.

    Interface for a caller such as ``bidirectional_mamba``: ``forward(h, mask)`` gives the gate values,
    :meth:`modulate` applies them to a stream in the form's way, and (code form)
    :meth:`code_gate` exposes the two-input gate the code uses for its flipped stream, whose sigmoid
    term reads the forward gate instead of its own input. ``dropout`` (on the gate values) is the
    code's 0.2-0.3; the paper has none (default 0).
    """

    causal = False
    contract_variants = ({"form": "code", "dropout": 0.2}, {"padding": "causal", "kernel_size": 4})

    def __init__(
        self,
        d_model: int,
        form: Literal["paper", "code"] = "paper",
        kernel_size: int = 3,
        padding: Padding = "same",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if form not in ("paper", "code"):
            raise ValueError(f"ds_gate: form must be 'paper' or 'code', got {form!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ds_gate: dropout must be in [0, 1), got {dropout}")
        self.d_model, self.form = d_model, form
        self.dense = nn.Linear(d_model, d_model)
        if form == "paper":
            self.conv = MaskedConv1d(d_model, d_model, kernel_size, padding)
            self.delta = nn.Linear(d_model, d_model)
            self.causal = padding == "causal"
        else:
            self.silu_proj = nn.Linear(d_model, d_model)
            self.sigmoid_proj = nn.Linear(d_model, d_model)
            self.causal = True
        self.dropout = HashDropout(dropout)
        self.streaming = self.causal

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model or mask.shape != x.shape[:2]:
            raise ValueError(
                f"ds_gate: expected x (B, L, {self.d_model}) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        if self.form == "code":
            h = x + self.dense(x)
            return self.code_gate(h, h)
        return self._paper_gate(self.conv(self.dense(x), mask))

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """The gate at the newest position only: the code form there alone (position-wise), the paper form's
        convolution over the few newest positions its window reaches (what lies after the newest is padding
        either way)."""
        if self.form == "code":
            return self.forward(x[:, -1:], mask[:, -1:])
        window = self.conv.pads[0] + 1
        return self.forward(x[:, -window:], mask[:, -window:])[:, -1:]

    def offers_prefixes(self) -> bool:
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """The gate at the newest position of every prefix: the convolution without its taps after it
        (the code form is position-wise, so its ``forward``)."""
        if self.form == "code" or self.causal:
            return self.forward(x, mask)
        return self._paper_gate(self.conv.forward_truncated(self.dense(x), mask, lookahead=0))

    def _paper_gate(self, g0: Tensor) -> Tensor:
        delta = self.delta(g0)
        return self.dropout(F.silu(delta) + torch.sigmoid(delta))

    def code_gate(self, h: Tensor, sigmoid_input: Tensor) -> Tensor:
        """Code form from the hidden ``h``: ``Dropout(Linear_si(SiLU(h)) + Linear_sig(σ(sigmoid_input)))``."""
        if self.form != "code":
            raise RuntimeError("ds_gate: code_gate belongs to form='code'")
        return self.dropout(self.silu_proj(F.silu(h)) + self.sigmoid_proj(torch.sigmoid(sigmoid_input)))

    def modulate(self, stream: Tensor, gate: Tensor) -> Tensor:
        """Apply gate values to a stream: ``G · M`` (paper, Eq. 3) or ``M · (1 + G)`` (code)."""
        return stream * gate if self.form == "paper" else stream * (1 + gate)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        if not self.streaming:
            return super().init_state(batch_size, device, dtype)
        return self.conv.init_state(batch_size, device, dtype) if self.form == "paper" else None

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.streaming:
            return super().step(x_t, state)
        if self.form == "code":
            h = x_t + self.dense(x_t)
            return self.code_gate(h, h), state
        g0, state = self.conv.step(self.dense(x_t), state)
        return self._paper_gate(g0), state
