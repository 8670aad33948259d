"""CNN-Mamba's short-term module (convolution + squeeze-excitation) and the masked time convolution."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.activations import make_activation
from blocks.base import SequenceBlock, State
from blocks.masking import zero_pads
from blocks.squeeze_excite import SqueezeExcite
from zoo.registry import register_block

Padding = Literal["causal", "same"]


class MaskedConv1d(nn.Module):
    """``Conv1d`` over the time axis of left-padded ``(B, L, C_in)`` sequences -> ``(B, L, C_out)``.

    Pads are zeroed before the convolution, so they act exactly like the convolution's own zero
    padding and a sequence's output does not depend on how much padding its batch has.
    ``padding="causal"`` pads ``k - 1`` zeros on the left (``y_t`` sees ``x_{t-k+1..t}``) and can be
    streamed with the last ``k - 1`` inputs; ``"same"`` centres the window (``(k - 1) // 2`` zeros on
    the left, the rest on the right), so ``y_t`` also sees ``k // 2`` later positions.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: Padding, bias: bool = True) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"conv1d: kernel_size must be a positive integer, got {kernel_size}")
        if padding not in ("causal", "same"):
            raise ValueError(f"conv1d: padding must be 'causal' or 'same', got {padding!r}")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, bias=bias)
        self.padding = padding
        left = kernel_size - 1 if padding == "causal" else (kernel_size - 1) // 2
        self.pads = (left, kernel_size - 1 - left)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = zero_pads(x, mask).transpose(1, 2)
        return self.conv(F.pad(x, self.pads)).transpose(1, 2)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """The last ``k - 1`` inputs ``(B, k - 1, C_in)``, zeros before the sequence starts (causal only)."""
        if self.padding != "causal":
            raise RuntimeError("a 'same'-padded convolution sees later positions and cannot be streamed")
        dtype = self.conv.weight.dtype if dtype is None else dtype
        return torch.zeros(batch_size, self.conv.kernel_size[0] - 1, self.conv.in_channels, device=device, dtype=dtype)

    def step(self, x_t: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        """``x_t (B, C_in)`` -> ``(y_t (B, C_out), new window)``; equals ``forward`` position by position."""
        full = torch.cat([window, x_t.unsqueeze(1)], 1)
        return self.conv(full.transpose(1, 2)).squeeze(-1), full[:, 1:]


@register_block("se_conv")
class SEConv(SequenceBlock):
    """CNN-Mamba's short-term module: ``y = SE(LN(Dropout(act(Conv1d_k(U)))))``.

    Source: CNN-Mamba (Feng, Wang, Wang) §3.2.1, Eqs. 1-5 (NOTES.md §5.1):

    * optional input transform, Eq. 1: ``U = LN(Dropout(H W_en + b_en))`` (``input_transform=True``;
      in the paper ``U`` is shared with the long-term SSD branch, so a recipe may instead put it
      before the parallel branches);
    * Eqs. 2-3: ``C = act(Conv1d(U))``, a full ``Conv1d(D, D, k)`` (the paper's m kernels of width k
      concatenated over features); kernel sizes 3..11 are studied (k = 7 best on Beauty), activation
      by name (GELU best);
    * Eq. 4: ``S = LN(Dropout(C))``;
    * Eq. 5: ``L_conv = SEAtt(S)``, the :class:`~blocks.squeeze_excite.SqueezeExcite` block.

    Pads are zeroed before the convolution and excluded from the squeeze, so outputs at real
    positions do not depend on padding. ``padding="same"`` centres the window (the paper's window
    ``[j, j+k-1]`` also looks ahead); ``"causal"`` looks back only. The block is causal, and
    streams, when ``padding="causal"`` and ``se_causal=True`` (running-mean squeeze).
    """

    causal = False
    contract_variants = (
        {"padding": "causal", "se_causal": True, "input_transform": True},
        {"kernel_size": 7, "activation": "relu", "reduction": 2},
    )

    def __init__(
        self,
        d_model: int,
        kernel_size: int = 3,
        padding: Padding = "same",
        activation: str = "gelu",
        dropout: float = 0.0,
        input_transform: bool = False,
        reduction: int = 4,
        se_causal: bool = False,
        norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"se_conv: dropout must be in [0, 1), got {dropout}")
        self.d_model = d_model
        self.input_transform = (
            nn.Sequential(nn.Linear(d_model, d_model), nn.Dropout(dropout), nn.LayerNorm(d_model, eps=norm_eps))
            if input_transform
            else nn.Identity()
        )
        self.conv = MaskedConv1d(d_model, d_model, kernel_size, padding)
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.se = SqueezeExcite(d_model, reduction=reduction, causal=se_causal)
        self.causal = padding == "causal" and se_causal
        self.streaming = self.causal

    def _short_term(self, conv_out: Tensor) -> Tensor:
        return self.norm(self.dropout(self.activation(conv_out)))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model or mask.shape != x.shape[:2]:
            raise ValueError(
                f"se_conv: expected x (B, L, {self.d_model}) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        s = self._short_term(self.conv(self.input_transform(x), mask))
        return self.se(s, mask)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        if not self.streaming:
            return super().init_state(batch_size, device, dtype)
        return self.conv.init_state(batch_size, device, dtype), self.se.init_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.streaming:
            return super().step(x_t, state)
        window, se_state = state
        c_t, window = self.conv.step(self.input_transform(x_t), window)
        y_t, se_state = self.se.step(self._short_term(c_t), se_state)
        return y_t, (window, se_state)
