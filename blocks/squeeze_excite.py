"""Squeeze-and-excitation over channels for 1-D (time) sequences, with a masked squeeze."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock, State
from zoo.blocks.masking import causal_prefix_mean, masked_mean
from zoo.registry import register_block


@register_block("se", aliases=("squeeze_excite",))
class SqueezeExcite(SequenceBlock):
    """Channel re-weighting: ``p = masked_mean_t(x)``, ``w = σ(W2 ReLU(W1 p + b1) + b2)``, ``y_t = x_t ⊙ w``.

    ``W1: D -> max(1, D // reduction)``, ``W2: back to D``. Source: CNN-Mamba's SEAtt (Feng, Wang,
    Wang, §3.2, Eq. 5 and Eq. 9: "squeeze-and-excitation attention ... channel-wise weighted
    adjustment"), i.e. Hu et al.'s squeeze-and-excitation on the time axis; the paper gives no
    reduction ratio, so it is an argument (docs/models/cnn-mamba.md, "Squeeze-excitation"). The squeeze averages over the real items
    only (pads never enter it), so a sequence's output does not depend on its padding.

    The whole-sequence mean makes every position see the future, so the block is not causal by
    default. ``causal=True`` squeezes the running mean of the items so far instead
    (``p_t = mean_{s <= t} x_s``); the block is then causal and streams with the running sum and count.
    """

    causal = False
    contract_variants = ({"causal": True}, {"reduction": 1, "bias": False})

    def __init__(self, d_model: int, reduction: int = 4, causal: bool = False, bias: bool = True) -> None:
        super().__init__()
        if d_model < 1:
            raise ValueError(f"se: d_model must be a positive integer, got {d_model}")
        if reduction < 1:
            raise ValueError(f"se: reduction must be a positive integer (hidden width = d_model // reduction), got {reduction}")
        self.d_model = d_model
        hidden = max(1, d_model // reduction)
        self.squeeze = nn.Linear(d_model, hidden, bias=bias)
        self.excite = nn.Linear(hidden, d_model, bias=bias)
        self.causal = causal
        self.streaming = causal

    def channel_weights(self, pooled: Tensor) -> Tensor:
        """``w = σ(W2 ReLU(W1 p))`` for pooled features ``(..., D)``."""
        return torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model or mask.shape != x.shape[:2]:
            raise ValueError(
                f"se: expected x (B, L, {self.d_model}) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        pooled = causal_prefix_mean(x, mask) if self.causal else masked_mean(x, mask).unsqueeze(1)
        return x * self.channel_weights(pooled)

    def offers_prefixes(self) -> bool:
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """The prefix ending at ``t`` squeezes its own items, ``mean_{s <= t} x_s``: the running mean, exactly."""
        return x * self.channel_weights(causal_prefix_mean(x, mask))

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """Running sum ``(B, D)`` and count ``(B, 1)`` of the items seen so far (causal squeeze only)."""
        if not self.causal:
            return super().init_state(batch_size, device, dtype)
        dtype = self.excite.weight.dtype if dtype is None else dtype
        zeros = torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)
        return zeros, zeros[:, :1].clone()

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.causal:
            return super().step(x_t, state)
        total, count = state
        total, count = total + x_t, count + 1
        return x_t * self.channel_weights(total / count), (total, count)
