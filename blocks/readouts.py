"""Readouts: from per-position states ``(B, L, D)`` to one user vector ``(B, D)``."""

from __future__ import annotations

from torch import Tensor

from zoo.blocks.base import ReadoutBlock
from zoo.blocks.masking import causal_prefix_mean, masked_mean
from zoo.registry import register_block


@register_block("last")
class LastPosition(ReadoutBlock):
    """``u = h_n``: the state at the newest item (position -1 under left padding).

    RecBole's ``gather_indexes(output, item_seq_len - 1)`` under right padding
    (docs/models/mamba4rec.md, "Right padding and last-position readout").
    """

    positionwise = True
    newest_only = True

    def __init__(self, d_model: int) -> None:
        super().__init__()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return x[:, -1]


@register_block("mean")
class MaskedMean(ReadoutBlock):
    """``u = (1/n) Σ_{t real} h_t``: the mean over the real positions."""

    causal = False

    def __init__(self, d_model: int) -> None:
        super().__init__()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(x, mask)

    def offers_prefixes(self) -> bool:
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """The running mean of the real positions up to each ``t``."""
        return causal_prefix_mean(x, mask)
