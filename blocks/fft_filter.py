"""Learnable frequency-domain filter along time (FMLP-Rec's filter layer), padding-safe."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock, State
from zoo.blocks.dropout import HashDropout
from zoo.blocks.masking import zero_pads
from zoo.blocks.ssm._dispatch import causal_depthwise_conv1d
from zoo.registry import register_block


class TimeFilter(nn.Module):
    """``y = irfft(rfft(x) ⊙ W)`` along time, as an exact linear convolution with a fixed-grid filter.

    ``W`` (complex, ``(max_len + 1, channels)``) lives on the frequency grid of ``N = 2·max_len``
    points, so it never depends on a batch's length. Its impulse response ``h = irfft(W, n=N)`` is read
    as a kernel with lags ``-(max_len-1) .. max_len-1`` (``h[N-k]`` is lag ``-k``; the lag ``±max_len``
    tap is dropped) and applied as a *linear* convolution ``y_t = Σ_s h[t - s] x_s`` over the real items
    (pads zeroed): for a global filter with an FFT long enough (``L + max_len``) that nothing wraps around, for a
    causal one as a causal depthwise convolution (:meth:`forward`).

    For a sequence of ``n <= max_len`` items this equals FMLP-Rec's filter (Zhou et al. 2022, Eq. 5-7;
    docs/models/m2rec.md, "Fourier filter along time") applied to the sequence zero-padded to ``N``: ``irfft(rfft(x, N) ⊙ W, N)[:n]``.
    Because only lags enter, the result does not depend on where the items sit in the padded tensor.
    ``W = 1`` is the identity. ``causal=True`` keeps only lags ``>= 0`` (a one-sided kernel), so
    ``y_t`` depends on ``x_{<=t}`` only and :meth:`step` can stream it with the last ``max_len`` inputs.
    """

    def __init__(self, channels: int, max_len: int, causal: bool, init: Literal["random", "identity"]) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"fft filter: max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.causal = causal
        if init == "identity":
            weight = torch.zeros(max_len + 1, channels, 2)
            weight[..., 0] = 1.0
        else:
            weight = 0.02 * torch.randn(max_len + 1, channels, 2)
        self.weight = nn.Parameter(weight)

    def taps(self) -> Tensor:
        """Kernel taps ``(2·max_len - 1, C)``: lags ``0 .. max_len-1`` then ``-(max_len-1) .. -1``."""
        m = self.max_len
        h = torch.fft.irfft(torch.view_as_complex(self.weight), n=2 * m, dim=0)
        negative = h[m + 1:]
        return torch.cat([h[:m], torch.zeros_like(negative) if self.causal else negative], 0)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, L, C)`` with pads already zeroed -> ``(B, L, C)``.

        A causal filter is a causal depthwise convolution with ``min(L, max_len)`` taps, ``y_t = Σ_k h[k] x_{t-k}``,
        computed directly (the compiled short-convolution kernel on the CPU): about ``L / 2`` multiply-adds per
        value at ``L = 50``, where the FFTs made M2Rec's scoring 1.28x slower. A global filter goes through the FFT."""
        length, m = x.shape[1], self.max_len
        if self.causal:
            taps = self.taps()[: min(length, m)].to(x.dtype)  # lags 0, 1, ...: tap K - 1 - k multiplies x_{t-k}
            return causal_depthwise_conv1d(x.transpose(1, 2), taps.flip(0).t(), None).transpose(1, 2)
        n_fft = max(length, m) + m
        taps = self.taps().to(x.dtype)
        kernel = torch.cat([taps[:m], x.new_zeros(n_fft - 2 * m + 1, x.shape[2]), taps[m:]], 0)
        spectrum = torch.fft.rfft(x, n=n_fft, dim=1) * torch.fft.rfft(kernel, dim=0)
        return torch.fft.irfft(spectrum, n=n_fft, dim=1)[:, :length]

    def newest(self, x: Tensor) -> Tensor:
        """``forward(x)[:, -1]`` (``(B, C)``) as one dot product per channel: the newest position reads only
        non-negative lags, ``y = Σ_{k < min(L, max_len)} h[k] x_{L-1-k}``, for a causal and a global filter alike."""
        lags = min(x.shape[1], self.max_len)
        taps = self.taps()[:lags].to(x.dtype)  # lags 0 .. lags-1
        return (x[:, -lags:] * taps.flip(0)).sum(1)

    def init_state(self, batch_size: int, device: torch.device | None, dtype: torch.dtype | None) -> Tensor:
        """The last ``max_len`` inputs, oldest first (zeros before the sequence starts)."""
        return torch.zeros(batch_size, self.max_len, self.weight.shape[1], device=device, dtype=dtype)

    def step(self, x_t: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        """Causal filter only: ``y_t = Σ_{k < max_len} h[k] x_{t-k}``."""
        if not self.causal:
            raise RuntimeError("a non-causal time filter cannot be streamed")
        history = torch.cat([history[:, 1:], x_t.unsqueeze(1)], 1)
        lags = self.taps()[: self.max_len].to(x_t.dtype).flip(0)
        return (history * lags).sum(1), history


@register_block("fft_filter", aliases=("filter_layer",))
class FFTFilter(SequenceBlock):
    """FMLP-Rec's learnable filter layer along time: ``y = LN(x + Dropout(irfft(rfft(x) ⊙ W)))``.

    Source: FMLP-Rec (Zhou et al., WWW 2022) Eqs. 5-8 and its ``FilterLayer``; the time-axis
    FFT filter M2Rec adds to Mamba (docs/models/m2rec.md, "Fourier filter along time"). The filter itself is :class:`TimeFilter`:
    pads are zeroed, and the product in frequency is computed as an exact linear (not circular)
    convolution, so no padding and no late item wraps around into real positions, and the filter is
    defined on the fixed grid of ``2·max_len`` frequencies, so the output of a sequence never depends on
    its batch's padding. ``residual`` / ``norm`` / ``dropout`` give FMLP-Rec's ``LN(Dropout(y) + x)``
    (LayerNorm eps 1e-12 as there); ``init="random"`` is FMLP-Rec's ``0.02·N(0, 1)`` complex weight,
    ``"identity"`` an all-pass start (``W = 1``).

    Non-causal by default (a global filter, as in FMLP-Rec: every position sees the whole sequence).
    ``causal=True`` restricts the kernel to non-negative lags; the block is then causal and streams.
    """

    causal = False
    contract_variants = ({"causal": True}, {"residual": False, "norm": "none", "init": "identity"})

    def __init__(
        self,
        d_model: int,
        max_len: int = 50,
        causal: bool = False,
        residual: bool = True,
        norm: Literal["layernorm", "none"] = "layernorm",
        norm_eps: float = 1e-12,
        dropout: float = 0.0,
        init: Literal["random", "identity"] = "random",
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"fft_filter: dropout must be in [0, 1), got {dropout}")
        if not norm_eps > 0.0:
            raise ValueError(f"fft_filter: norm_eps must be > 0, got {norm_eps}")
        self.filter = TimeFilter(d_model, max_len, causal, init)
        self.residual = residual
        self.dropout = HashDropout(dropout)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps) if norm == "layernorm" else nn.Identity()
        self.causal = causal
        self.streaming = causal

    @staticmethod
    def _checked_input(x: Tensor, mask: Tensor) -> Tensor:
        """``x`` with its pads zeroed, after checking the shapes."""
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(f"fft_filter: expected x (B, L, D) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}")
        return zero_pads(x, mask)

    def _finish(self, y: Tensor, x: Tensor) -> Tensor:
        y = self.dropout(y)
        return self.norm(y + x if self.residual else y)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self._checked_input(x, mask)
        return self._finish(self.filter(x), x)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """The newest position only (what scoring reads): the filter's dot product there, no FFT."""
        x = self._checked_input(x, mask)
        return self._finish(self.filter.newest(x).unsqueeze(1), x[:, -1:])

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        if not self.causal:
            return super().init_state(batch_size, device, dtype)
        return self.filter.init_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.causal:
            return super().step(x_t, state)
        y_t, state = self.filter.step(x_t, state)
        return self._finish(y_t, x_t), state
