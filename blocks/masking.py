"""Padding helpers shared by blocks (left padding, ``mask`` True at real items)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def zero_pads(x: Tensor, mask: Tensor) -> Tensor:
    """``x (B, L, ...)`` with every padded position set to zero."""
    return x * mask.reshape(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x (B, L, D)`` over the real positions of each sequence -> ``(B, D)``."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def positions_from_mask(mask: Tensor) -> Tensor:
    """0-based position of each real item counted from the oldest real item; 0 at pads.

    Counting from the mask (not from the tensor index) means left padding never shifts
    positions: a sequence gets the same positions however wide the batch it sits in.
    """
    return (mask.long().cumsum(1) - 1).clamp_min(0)


def lengths_from_mask(mask: Tensor) -> Tensor:
    """Number of real items per sequence ``(B,)``."""
    return mask.long().sum(1)


def causal_prefix_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real items at positions <= t, for every t -> ``(B, L, D)`` (0 where none yet)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    total = (x * weights).cumsum(1)
    count = weights.cumsum(1).clamp_min(1.0)
    return total / count


def right_align(x: Tensor, mask: Tensor) -> Tensor:
    """Move each row's real items from the end (left padding) to the start (right padding).

    Works for any trailing shape: ``x (B, L, ...)``. Padded slots receive the former pad values.
    Inverse: :func:`left_align` with the same mask.
    """
    return gather_time(x, _shift_index(mask, right=True))


def left_align(x: Tensor, mask: Tensor) -> Tensor:
    """Inverse of :func:`right_align`: real items back to the end of each row."""
    return gather_time(x, _shift_index(mask, right=False))


def _shift_index(mask: Tensor, right: bool) -> Tensor:
    length = mask.shape[1]
    pads = (length - mask.long().sum(1)).unsqueeze(1)
    steps = torch.arange(length, device=mask.device).unsqueeze(0)
    return (steps + pads) % length if right else (steps - pads) % length


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t]]`` for ``x (B, L, ...)`` and ``index (B, L)``: whole rows copied through ``index_select`` on
    the flattened ``(B * L, ...)`` tensor (its backward adds them back with ``index_add_``), where ``gather`` with the
    index expanded over the features walks element by element (0.97 against 0.17 ms for a ``(256, 50, 64)`` tensor)."""
    batch, length = x.shape[:2]
    rows = index + torch.arange(batch, device=index.device).unsqueeze(1) * length
    return x.reshape(batch * length, *x.shape[2:]).index_select(0, rows.reshape(-1)).view(x.shape)


def fit_to_length(x: Tensor, mask: Tensor, length: int, who: str) -> tuple[Tensor, Tensor]:
    """Left-pad (with zeros / False) or crop ``x (B, L, ...)`` and ``mask`` to exactly ``length`` positions.

    Cropping keeps the newest ``length`` positions; it is an error when it would drop real items.
    """
    current = mask.shape[1]
    if current < length:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (length - current, 0))
        mask = F.pad(mask, (length - current, 0), value=False)
    elif current > length:
        if mask[:, : current - length].any():
            longest = int(mask.sum(1).max())
            raise ValueError(f"{who}: a sequence has {longest} real items but the block was built for max_len={length}")
        x, mask = x[:, current - length:], mask[:, current - length:]
    return x, mask


def shift_time(x: Tensor, steps: int) -> Tensor:
    """``x (B, L, ...)`` moved ``steps`` positions later in time (earlier when negative):
    ``out[:, t] = x[:, t - steps]``, zeros where that falls outside ``0 .. L - 1``."""
    length = x.shape[1]
    if steps == 0:
        return x
    if abs(steps) >= length:
        return torch.zeros_like(x)
    zeros = x.new_zeros(x.shape[0], abs(steps), *x.shape[2:])
    return torch.cat([zeros, x[:, :-steps]], 1) if steps > 0 else torch.cat([x[:, -steps:], zeros], 1)
