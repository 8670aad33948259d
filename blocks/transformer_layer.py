"""The post-norm Transformer encoder layer of SASRec and BERT4Rec, with its compiled CPU inference pass."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.blocks import compiled
from zoo.blocks.attention import SelfAttention
from zoo.blocks.base import SequenceBlock
from zoo.blocks.basic import FeedForward
from zoo.blocks.dropout import HashDropout
from zoo.registry import register_block

# The activations the compiled layer knows, by the code it takes.
ACTIVATION_CODES = {nn.Identity: 0, nn.ReLU: 1, nn.GELU: 2, nn.SiLU: 3, nn.Tanh: 4, nn.Sigmoid: 5}


@register_block("transformer_layer")
class TransformerLayer(SequenceBlock):
    """``h = LN_1(x + Dropout(MHA(x)))``, then ``y = LN_2(h + Dropout(FFN(h)))``.

    The post-norm encoder layer of Vaswani et al. 2017 (§3.1, sub-layers ``LayerNorm(x +
    Sublayer(x))``), as SASRec stacks it (Kang & McAuley 2018 §III-B/C, Eq. 4: causal attention,
    point-wise feed-forward) and BERT4Rec (Sun et al. 2019 §3.3, ``causal=False``). ``MHA`` is the
    ``self_attention`` block, ``FFN`` the ``ffn`` block; ``dropout`` is the dropout on each
    sub-layer's output before the residual sum, ``attention_dropout`` the dropout on attention
    weights, ``ffn_dropout`` the one between the feed-forward's two products.

    In inference on the CPU with the compiled kernels enabled (:mod:`zoo.blocks.compiled`; no gradient
    wanted, no active dropout)
    the whole layer runs as one compiled pass (``transformer_layer_cpu.cpp``) that takes a few
    thousand rows at a time through attention, both norms and the feed-forward while they are in
    cache; the result equals the PyTorch path. Under bf16 autocast its matrix products run in bf16,
    the rest in fp32, as autocast would.
    """

    causal = True

    def __init__(
        self,
        d_model: int,
        num_heads: int = 2,
        causal: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        expansion: float = 4.0,
        activation: str = "gelu",
        ffn_dropout: float = 0.0,
        norm_eps: float = 1e-12,
        bias: bool = True,
    ) -> None:
        super().__init__()
        for name, p in (("dropout", dropout), ("attention_dropout", attention_dropout), ("ffn_dropout", ffn_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"transformer_layer: {name} must be in [0, 1), got {p}")
        if not norm_eps > 0.0:
            raise ValueError(f"transformer_layer: norm_eps must be > 0, got {norm_eps}")
        self.causal = causal
        self.attention = SelfAttention(d_model, num_heads, attention_dropout, causal, bias)
        self.attention_dropout = HashDropout(dropout)
        self.attention_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.ffn = FeedForward(d_model, expansion, activation, ffn_dropout)
        self.ffn_dropout = HashDropout(dropout)
        self.ffn_norm = nn.LayerNorm(d_model, eps=norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self._use_compiled_kernel(x):
            return self._forward_compiled(x, mask, newest_only=False)
        h = self.attention_norm(x + self.attention_dropout(self.attention(x, mask)))
        return self._feed_forward(h)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """The newest position only: its query attends over every position, then its row alone goes on."""
        if self._use_compiled_kernel(x):
            return self._forward_compiled(x, mask, newest_only=True)
        h = self.attention_norm(x[:, -1:] + self.attention_dropout(self.attention.forward_last(x, mask)))
        return self._feed_forward(h)

    def _feed_forward(self, h: Tensor) -> Tensor:
        return self.ffn_norm(h + self.ffn_dropout(self.ffn.transform(h)))

    def activation_code(self) -> int | None:
        """The compiled layer's code for the feed-forward's activation (None: it has none, e.g. tanh-GELU)."""
        activation = self.ffn.activation
        if isinstance(activation, nn.GELU) and activation.approximate != "none":
            return None
        return ACTIVATION_CODES.get(type(activation))

    def _use_compiled_kernel(self, x: Tensor) -> bool:
        dropouts = (self.attention_dropout.p, self.attention.dropout, self.ffn_dropout.p, self.ffn.dropout.p)
        return self.activation_code() is not None and compiled.serves_inference(
            "transformer_layer", x, self, dropout_active=self.training and any(dropouts))

    def _forward_compiled(self, x: Tensor, mask: Tensor, newest_only: bool) -> Tensor:
        """The layer -- or, with ``newest_only``, its newest position ``(B, 1, D)`` -- from the compiled pass."""
        attention, ffn = self.attention, self.ffn
        dtype = compiled.kernel_dtype(x)
        autocast = torch.is_autocast_enabled("cpu") and dtype == torch.float32
        gemm_dtype = torch.get_autocast_dtype("cpu") if autocast else dtype

        def matrix(linear: nn.Linear) -> Tensor:
            return linear.weight.to(gemm_dtype)

        def vector(parameter: Tensor | None, size: int) -> Tensor:
            return torch.zeros(size, dtype=dtype) if parameter is None else parameter.to(dtype).contiguous()

        width = x.shape[-1]
        return compiled.load("transformer_layer").forward(
            x.to(dtype).contiguous(), mask.contiguous(),
            matrix(attention.qkv), vector(attention.qkv.bias, 3 * width),
            matrix(attention.out), vector(attention.out.bias, width),
            vector(self.attention_norm.weight, width), vector(self.attention_norm.bias, width), self.attention_norm.eps,
            matrix(ffn.w1), vector(ffn.w1.bias, ffn.w1.out_features),
            matrix(ffn.w2), vector(ffn.w2.bias, width),
            vector(self.ffn_norm.weight, width), vector(self.ffn_norm.bias, width), self.ffn_norm.eps,
            attention.num_heads, attention.causal, newest_only, self.activation_code(),
        )
