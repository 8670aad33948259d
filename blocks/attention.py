"""Multi-head self-attention over the item sequence (SASRec, BERT4Rec)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks import compiled
from zoo.blocks.base import SequenceBlock
from zoo.blocks.masking import zero_pads
from zoo.registry import register_block


@register_block("self_attention", aliases=("attention",))
class SelfAttention(SequenceBlock):
    """``y = softmax(Q Kᵀ / sqrt(d_head) + M) V W_O`` with ``Q, K, V = x W_Q, x W_K, x W_V`` per head.

    Vaswani et al. 2017 Eq. 1, as used by SASRec (Kang & McAuley 2018 §III-C, ``causal=True``: the
    mask ``M`` forbids attending to later positions) and BERT4Rec (Sun et al. 2019, ``causal=False``).
    ``M`` also hides padded keys; every query also sees itself (so a padded query's softmax is
    defined), and padded queries' outputs are zeroed.
    """

    causal = True

    def __init__(self, d_model: int, num_heads: int = 2, dropout: float = 0.0, causal: bool = True, bias: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"self_attention: d_model {d_model} must be divisible by num_heads {num_heads} (>= 1)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"self_attention: dropout must be in [0, 1), got {dropout}")
        self.causal = causal
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.qkv(zero_pads(x, mask)).chunk(3, -1)
        return zero_pads(self._attend(q, k, v, mask), mask)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """Only the newest position's query: keys and values of every position, one query row."""
        width = x.shape[-1]
        x = zero_pads(x, mask)
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, -1:], weight[:width], None if bias is None else bias[:width])
        k, v = F.linear(x, weight[width:], None if bias is None else bias[width:]).chunk(2, -1)
        return zero_pads(self._attend(q, k, v, mask), mask[:, -1:])

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Attention of the query rows ``q (B, R, D)`` -- the last ``R`` positions -- over keys and values
        ``(B, L, D)``, heads merged and projected. A query sees the real keys (only those up to its own
        position when causal) and always itself, so a padded query has a defined output."""
        batch, rows, width = q.shape
        length = k.shape[1]
        if self._use_compiled_kernel(q):
            y = compiled.load("attention").attend(q, k, v, mask.contiguous(), self.num_heads, self.causal)
            return self.out(y)
        positions = torch.arange(length - rows, length, device=q.device)[:, None]
        keys = torch.arange(length, device=q.device)
        allowed = mask[:, None, None, :] & (keys <= positions if self.causal else True) | (keys == positions)
        heads = [t.view(batch, t.shape[1], self.num_heads, -1).transpose(1, 2) for t in (q, k, v)]
        y = F.scaled_dot_product_attention(*heads, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, rows, width))

    def _use_compiled_kernel(self, q: Tensor) -> bool:
        """The fused C++ attention (``attention_cpu.cpp``) serves inference on the CPU when the
        compiled kernels are enabled (:mod:`zoo.blocks.compiled`): no gradient to compute and no attention dropout
        to apply."""
        return compiled.serves_inference("attention", q, self, dropout_active=self.training and self.dropout > 0)
