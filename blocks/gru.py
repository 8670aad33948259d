"""Gated recurrent unit over the item sequence (GRU4Rec)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks import compiled
from zoo.blocks.base import SequenceBlock, State
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
    On the CPU the compiled kernel runs instead (:func:`compiled_gru`), in training too, except with dropout
    active between stacked layers.
    """
    if not gru.bidirectional and compiled.applies("gru", x) and not (
            gru.training and gru.dropout > 0 and gru.num_layers > 1):
        return compiled_gru(gru, x, mask)
    y, _ = gru(right_align(x, mask))
    return zero_pads(left_align(y, mask), mask)


def compiled_gru(gru: nn.GRU, x: Tensor, mask: Tensor) -> Tensor:
    """:func:`masked_gru` through the compiled CPU kernel (``gru_cpu.cpp``), layer by layer: each layer's input
    product for every step at once, then its recurrence, each row's steps in one fused loop from its first item
    (:class:`_CompiledGRULayer`, differentiable)."""
    dtype, y = compiled.kernel_dtype(x), x
    start = (mask.shape[1] - mask.long().sum(1)).contiguous()
    valid = mask.to(dtype).unsqueeze(-1)
    for layer in range(gru.num_layers):
        w_ih, w_hh = (getattr(gru, f"{kind}_l{layer}").to(dtype) for kind in ("weight_ih", "weight_hh"))
        if gru.bias:
            b_ih, b_hh = (getattr(gru, f"{kind}_l{layer}").to(dtype) for kind in ("bias_ih", "bias_hh"))
        else:
            b_ih, b_hh = None, x.new_empty(0, dtype=dtype)
        gates = F.linear(y.to(dtype), w_ih, b_ih).to(dtype)  # bf16 under autocast: the recurrence runs in dtype
        y = _CompiledGRULayer.apply(gates, w_hh, b_hh, start, valid)
    return y.to(x.dtype)


class _CompiledGRULayer(torch.autograd.Function):
    """One GRU layer's recurrence over left-padded rows from their input gates ``gi = x W_ih^T + b_ih`` (B, L, 3H):
    ``h = GRU(gi, W_hh, b_hh)`` (B, L, H), zero before each row's ``start``; the compiled kernel forward.

    The backward is the reverse-time adjoint of torch's GRU form (``r, z = sigmoid(gi + W_h h + b_h)`` for their
    blocks, ``n = tanh(gi_n + r (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``). Everything but the adjoint's own
    recurrence is done for all steps at once: the gates are recomputed from the saved outputs with one matrix
    product, and per unit of ``dL/dh'`` they give the gradients of the hidden product ``k_h = (k_r, k_z, r k_n)``
    and of the input gates ``(k_r, k_z, k_n)``, with ``k_n = (1 - z)(1 - n^2)``, ``k_z = (h - n) z (1 - z)`` and
    ``k_r = k_n (W_hn h + b_hn) r (1 - r)``. The loop over time then only carries the state's gradient,
    ``dh_{t-1} = (dh_t k_h,t) W_hh + dh_t z_t`` (a product and two elementwise passes a step, where torch's GRU
    backward ran each step's cell operations one by one); the weight gradients are one product each afterwards.
    Padded steps have zero coefficients, so nothing flows through them."""

    @staticmethod
    def forward(ctx, gi: Tensor, w_hh: Tensor, b_hh: Tensor, start: Tensor, valid: Tensor):
        y = compiled.load("gru").forward(gi.contiguous(), w_hh.t().contiguous(), b_hh.contiguous(), start)
        ctx.save_for_backward(gi, w_hh, b_hh, y, valid)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        gi, w_hh, b_hh, y, valid = ctx.saved_tensors
        batch, length, hidden = y.shape
        h = F.pad(y[:, :-1], (0, 0, 1, 0))  # the state each step starts from: zero at a row's first item
        gh = F.linear(h, w_hh, b_hh if b_hh.numel() else None)
        (i_r, i_z, i_n), (h_r, h_z, h_n) = gi.chunk(3, -1), gh.chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        k_n = (1 - z) * (1 - n * n) * valid
        k_z = (h - n) * z * (1 - z) * valid
        k_r = k_n * h_n * r * (1 - r)
        k_h = torch.cat([k_r, k_z, k_n * r], -1).view(batch, length, 3, hidden)
        keep = z * valid  # the state's own share of dh; nothing passes a padded step
        grad_h = torch.empty_like(y)
        grad_gh = torch.empty(batch, length, 3, hidden, dtype=y.dtype)
        carry = y.new_zeros(batch, hidden)
        grad_y = grad_y.contiguous()
        for t in range(length - 1, -1, -1):
            dh = grad_y[:, t] + carry
            grad_h[:, t] = dh
            step = torch.mul(k_h[:, t], dh.unsqueeze(1), out=grad_gh[:, t])
            carry = torch.addcmul(step.view(batch, 3 * hidden) @ w_hh, dh, keep[:, t])
        grad_gh = grad_gh.view(batch, length, 3 * hidden)
        grad_gi = torch.cat([grad_gh[..., : 2 * hidden], grad_h * k_n], -1)
        grad_w_hh = grad_gh.flatten(0, 1).t() @ h.flatten(0, 1)
        grad_b_hh = grad_gh.sum((0, 1)) if b_hh.numel() else None
        return grad_gi, grad_w_hh, grad_b_hh, None, None


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
