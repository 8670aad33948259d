"""Gated recurrent unit over the item sequence (GRU4Rec)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks import compiled
from zoo.blocks.base import SequenceBlock, State
from zoo.blocks.ssm.cpu_kernel import kernel_dtype
from zoo.blocks.masking import left_align, right_align, zero_pads
from zoo.registry import register_block


def masked_gru(gru: nn.GRU, x: Tensor, mask: Tensor) -> Tensor:
    """Run a batch-first ``gru`` over the real items of left-padded ``x``; pads never reach a real item
    and their outputs are zero.

    The rows are right-aligned, so each row's real items come first and the hidden state starts at
    zero at its first real item exactly as for an unpadded sequence; the steps over the trailing pads
    follow them and are dropped. Packing the rows (``pack_padded_sequence``) gives the same outputs,
    but torch's CPU backward of a packed GRU fills a gradient the size of the whole packed input at
    every step, which is quadratic in the length (batch 32, L 2000: 26 s against 0.43 s unpacked).
    Where nothing is differentiated on the CPU, the compiled kernel runs instead (:func:`compiled_gru`).
    """
    if not gru.bidirectional and compiled.serves_inference(
            "gru", x, gru, dropout_active=gru.training and gru.dropout > 0 and gru.num_layers > 1):
        return compiled_gru(gru, x, mask)
    y, _ = gru(right_align(x, mask))
    return zero_pads(left_align(y, mask), mask)


def compiled_gru(gru: nn.GRU, x: Tensor, mask: Tensor) -> Tensor:
    """:func:`masked_gru` through the compiled CPU kernel (``gru_cpu.cpp``), layer by layer: each layer's input
    product for every step at once, then its recurrence, each row's steps in one fused loop from its first item."""
    dtype, y = kernel_dtype(x), x
    start = (mask.shape[1] - mask.long().sum(1)).contiguous()
    kernel = compiled.load("gru")
    for layer in range(gru.num_layers):
        w_ih, w_hh = (getattr(gru, f"{kind}_l{layer}").to(dtype) for kind in ("weight_ih", "weight_hh"))
        if gru.bias:
            b_ih, b_hh = (getattr(gru, f"{kind}_l{layer}").to(dtype) for kind in ("bias_ih", "bias_hh"))
        else:
            b_ih, b_hh = None, x.new_empty(0, dtype=dtype)
        gates = F.linear(y.to(dtype), w_ih, b_ih).to(dtype)  # bf16 under autocast: the recurrence runs in dtype
        y = kernel.forward(gates.contiguous(), w_hh.t().contiguous(), b_hh.contiguous(), start)
    return y.to(x.dtype)


@register_block("gru")
class GRU(SequenceBlock):
    """``h_t = GRU(x_t, h_{t-1})`` (Cho et al. 2014), ``y_t = h_t`` -- GRU4Rec's recurrence (Hidasi et al. 2016).

    ``num_layers`` stacked with ``dropout`` between them. The hidden width is ``d_model`` unless
    ``hidden_size`` sets another; then ``y_t = h_t W + b`` maps the state back to ``d_model`` (parameters
    ``proj.*``), as RecBole's GRU4Rec does with its ``dense`` layer when its ``hidden_size`` differs from
    its ``embedding_size`` (``recbole/model/sequential_recommender/gru4rec.py``).
    """

    causal = True
    streaming = True
    contract_variants = ({"hidden_size": 24, "num_layers": 2, "bias": False},)

    def __init__(self, d_model: int, num_layers: int = 1, bias: bool = True, dropout: float = 0.0,
                 hidden_size: int | None = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"gru: num_layers must be >= 1, got {num_layers}")
        hidden = d_model if hidden_size is None else hidden_size
        if hidden < 1:
            raise ValueError(f"gru: hidden_size must be >= 1, got {hidden_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"gru: dropout must be in [0, 1), got {dropout}")
        self.gru = nn.GRU(d_model, hidden, num_layers=num_layers, bias=bias, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.proj = nn.Linear(hidden, d_model) if hidden != d_model else None

    def _output(self, h: Tensor) -> Tensor:
        return h if self.proj is None else self.proj(h)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self._output(masked_gru(self.gru, x, mask))

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        return torch.zeros(self.gru.num_layers, batch_size, self.gru.hidden_size, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        y, state = self.gru(x_t.unsqueeze(1), state)
        return self._output(y.squeeze(1)), state
