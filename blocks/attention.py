"""Multi-head self-attention over the item sequence (SASRec, BERT4Rec)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.base import SequenceBlock
from blocks.masking import zero_pads
from zoo.registry import register_block


@register_block("self_attention", aliases=("attention",))
class SelfAttention(SequenceBlock):
    """``y = softmax(Q Kᵀ / sqrt(d_head) + M) V W_O`` with ``Q, K, V = x W_Q, x W_K, x W_V`` per head.

    Vaswani et al. 2017 Eq. 1, as used by SASRec (Kang & McAuley 2018 §III-C, ``causal=True``: the
    mask ``M`` forbids attending to later positions) and BERT4Rec (Sun et al. 2019, ``causal=False``).
    ``M`` also hides padded keys; a padded query attends only to itself, and its output is zeroed.
    """

    causal = True

    def __init__(self, d_model: int, num_heads: int = 2, dropout: float = 0.0, causal: bool = True, bias: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"self_attention: d_model {d_model} must be divisible by num_heads {num_heads}")
        self.causal = causal
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self._heads(self.qkv(zero_pads(x, mask)), 3)
        allowed = mask[:, None, None, :].expand(batch, 1, length, length)
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=x.device)
        return zero_pads(self._attend(q, k, v, allowed), mask)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """Only the newest position's query: keys and values of every position, one query row."""
        width = x.shape[-1]
        x = zero_pads(x, mask)
        weight, bias = self.qkv.weight, self.qkv.bias
        (q,) = self._heads(F.linear(x[:, -1:], weight[:width], None if bias is None else bias[:width]), 1)
        k, v = self._heads(F.linear(x, weight[width:], None if bias is None else bias[width:]), 2)
        allowed = mask[:, None, None, :].clone()  # the newest position sees every real one (causal or not)
        allowed[..., -1] = True  # and itself, like forward's padded queries
        return zero_pads(self._attend(q, k, v, allowed), mask[:, -1:])

    def _heads(self, projected: Tensor, parts: int) -> Tensor:
        """``(B, L, parts * D)`` -> ``(parts, B, heads, L, D / heads)``."""
        batch, length, _ = projected.shape
        return projected.view(batch, length, parts, self.num_heads, -1).permute(2, 0, 3, 1, 4)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        batch, _, queries, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(batch, queries, -1))
