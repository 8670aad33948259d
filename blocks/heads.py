"""Heads: score the user vector against item representations."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.blocks.activations import make_activation
from zoo.blocks.base import HeadBlock
from zoo.registry import register_block


@register_block("tied_dot")
class TiedDot(HeadBlock):
    """``s_i = δ(u W + b) · e_i + b_i`` -- dot product with the (tied) item table.

    Plain tied scoring ``s_i = u · e_i`` (SASRec, Mamba4Rec, SIGMA Eq. 11) by default;
    ``projection=True`` adds CNN-Mamba's D x D map with activation δ (Eq. 13) and
    ``item_bias=True`` its per-item bias ``b_O``.
    """

    def __init__(
        self,
        d_model: int,
        num_items: int,
        projection: bool = False,
        activation: str = "identity",
        item_bias: bool = False,
    ) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(d_model, d_model), make_activation(activation)) if projection else None
        if not projection and activation != "identity":
            raise ValueError("tied_dot: an activation needs projection=True (it acts on the projected user vector)")
        self.bias = nn.Parameter(torch.zeros(num_items + 1)) if item_bias else None

    def forward(self, user: Tensor, items: Tensor, item_ids: Tensor) -> Tensor:
        if self.projection is not None:
            user = self.projection(user)
        if items.dim() == 2:
            logits = user @ items.T
        else:
            logits = (items @ user.unsqueeze(-1)).squeeze(-1)
        if self.bias is not None:
            logits = logits + self.bias[item_ids]
        return logits
