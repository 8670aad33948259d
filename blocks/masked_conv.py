"""A convolution over the time axis of left-padded sequences (SE-Conv, SIGMA's gate and FE-GRU use it)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.masking import zero_pads

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

    @property
    def lookahead(self) -> int:
        """How many later positions an output reads (0 for causal padding)."""
        return self.pads[1]

    def forward_truncated(self, x: Tensor, mask: Tensor, lookahead: int = 0) -> Tensor:
        """``forward`` as if every input more than ``lookahead`` positions after each output were absent.

        ``y_s = sum_{j <= lookahead} w_j x_{s+j}`` over the taps ``j`` (offsets from ``s``): what the
        convolution gives at ``s`` in a prefix that ends ``lookahead`` positions after ``s`` (its own zero
        padding stands in for the missing inputs). ``lookahead=0``: the output at the newest position of
        the prefix ending at each ``s``.
        """
        left = self.pads[0]
        taps = left + min(max(lookahead, 0), self.lookahead) + 1
        x = zero_pads(x, mask).transpose(1, 2)
        weight = self.conv.weight[..., :taps]
        return F.conv1d(F.pad(x, (left, taps - 1 - left)), weight, self.conv.bias).transpose(1, 2)

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
