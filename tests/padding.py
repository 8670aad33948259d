"""Left-padded test inputs shared by the block tests: real values, large garbage at the pads."""

from __future__ import annotations

import torch


def left_mask(lengths: list[int], width: int) -> torch.Tensor:
    """``(B, width)`` bool, True at the last ``lengths[b]`` positions of row ``b``."""
    return torch.arange(width).expand(len(lengths), width) >= width - torch.tensor(lengths).unsqueeze(1)


def left_padded(lengths: list[int], width: int, d: int, seed: int = 0, garbage: float = 100.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``x (B, width, d)`` with ``garbage``-scaled noise at padded positions, and the mask."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    mask = left_mask(lengths, width)
    x = torch.randn(len(lengths), width, d, generator=g)
    return torch.where(mask[..., None], x, garbage * torch.randn(x.shape, generator=g)), mask
