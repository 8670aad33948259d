"""Position-wise building blocks recipes put between layers: dropout, norms, a linear map."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from zoo.blocks.activations import make_activation
from zoo.blocks.base import PositionwiseBlock
from zoo.blocks.dropout import HashDropout
from zoo.registry import register_block


@register_block("dropout")
class Dropout(PositionwiseBlock):
    """``y = Dropout_p(x)`` (active in training only)."""

    def __init__(self, d_model: int, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout: p must be in [0, 1), got {p}")
        self.dropout = HashDropout(p)

    def transform(self, x: Tensor) -> Tensor:
        return self.dropout(x)


@register_block("layernorm")
class LayerNorm(PositionwiseBlock):
    """``y = (x - mean) / sqrt(var + eps) * gamma + beta`` over the feature axis (Ba et al. 2016).

    The default ``eps = 1e-12`` is RecBole's (SASRec, Mamba4Rec, SIGMA); torch's is 1e-5.
    """

    def __init__(self, d_model: int, eps: float = 1e-12) -> None:
        super().__init__()
        if not eps > 0.0:
            raise ValueError(f"layernorm: eps must be > 0, got {eps}")
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def transform(self, x: Tensor) -> Tensor:
        return self.norm(x)


@register_block("linear")
class Linear(PositionwiseBlock):
    """``y = act(x W + b)`` with ``W`` D x D -- e.g. SIGMA's projection after mixing (``Ẑ = Z W + b``)."""

    def __init__(self, d_model: int, bias: bool = True, activation: str = "identity") -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model, bias=bias)
        self.activation = make_activation(activation)

    def transform(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))


@register_block("scale")
class Scale(PositionwiseBlock):
    """``y = a ⊙ x`` with a learnable scalar (``per="scalar"``) or per-channel vector ``a`` starting at ``init``.

    LayerScale (Touvron et al. 2021, CaiT Eq. 6) in the channel form; in the scalar form one
    stream weight, as SIGMA's code weighs its GRU stream by a trainable 0.1 (docs/models/sigma.md, "Stream weights").
    """

    def __init__(self, d_model: int, init: float = 1.0, per: Literal["scalar", "channel"] = "scalar") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,) if per == "scalar" else (d_model,), float(init)))

    def transform(self, x: Tensor) -> Tensor:
        return self.weight * x


@register_block("ffn")
class FeedForward(PositionwiseBlock):
    """Position-wise feed-forward: ``y = Dropout(act(x W1 + b1)) W2 + b2``, W1: D -> expansion·D.

    SASRec's point-wise FFN (Kang & McAuley 2018 Eq. 4) and SIGMA's PFFN (SIGMA Eq. 10) with GELU.
    The dropout after ``W2`` and the residual + norm around it come from the ``residual`` combinator.
    """

    def __init__(self, d_model: int, expansion: float = 4.0, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(round(d_model * expansion))
        if hidden < 1:
            raise ValueError(f"ffn: expansion {expansion} gives a hidden width of {hidden}; it must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ffn: dropout must be in [0, 1), got {dropout}")
        self.w1 = nn.Linear(d_model, hidden)
        self.activation = make_activation(activation)
        self.dropout = HashDropout(dropout)
        self.w2 = nn.Linear(hidden, d_model)

    def transform(self, x: Tensor) -> Tensor:
        return self.w2(self.dropout(self.activation(self.w1(x))))
