"""The structural layers a recipe's encoder is made of: sequential, parallel + fuse, residual.

Each follows the sequence-block contract (``forward(x, mask)``; ``init_state`` / ``step`` when all
its parts stream; ``forward_prefixes`` when its parts offer it) and derives ``causal`` /
``streaming`` from its parts.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from zoo.blocks.base import State
from zoo.blocks.dropout import HashDropout
from zoo.blocks.norms import NormKind, create_norm


class Sequential(nn.Module):
    """``f_n(... f_1(x))``."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.causal = all(layer.causal for layer in self.layers)
        self.streaming = all(layer.streaming for layer in self.layers)
        self.mixes_positions = any(layer.mixes_positions for layer in self.layers)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self._run(x, mask, 0, len(self.layers))

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """``forward(x, mask)[:, -1:]``: layers after the last one that mixes positions see only the newest."""
        if not self.layers:
            return x[:, -1:]
        boundary = max((i for i, layer in enumerate(self.layers) if layer.mixes_positions), default=0)
        x = self._run(x, mask, 0, boundary)
        x = self.layers[boundary].forward_last(x, mask)
        return self._run(x, mask[:, -1:], boundary + 1, len(self.layers))

    def _run(self, x: Tensor, mask: Tensor, begin: int, end: int) -> Tensor:
        """Layers ``begin .. end - 1`` in turn."""
        for layer in self.layers[begin:end]:
            x = layer(x, mask)
        return x

    def offers_prefixes(self) -> bool:
        """Every layer offers it, and after the first one that looks ahead no layer mixes positions (a
        layer's prefix outputs at different positions belong to different prefixes, so what follows may
        only transform each position on its own)."""
        looked_ahead = False
        for layer in self.layers:
            if not layer.offers_prefixes() or (looked_ahead and layer.mixes_positions):
                return False
            looked_ahead = looked_ahead or not layer.causal
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """Causal layers run ``forward`` (their outputs at positions <= t do not see later ones), the
        layer that looks ahead runs ``forward_prefixes``, and the position-wise rest runs ``forward``."""
        if not self.offers_prefixes():
            raise NotImplementedError("this sequence of layers has no exact every-prefix pass (see offers_prefixes)")
        for layer in self.layers:
            x = layer(x, mask) if layer.causal else layer.forward_prefixes(x, mask)
        return x

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        return [layer.init_state(batch_size, device, dtype) for layer in self.layers]

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        new_state = []
        for layer, layer_state in zip(self.layers, state):
            x_t, layer_state = layer.step(x_t, layer_state)
            new_state.append(layer_state)
        return x_t, new_state


class Parallel(nn.Module):
    """``fuse([f_1(x), ..., f_k(x)], mask, x)``: branches see the same input."""

    def __init__(self, branches: Sequence[nn.Module], fuse: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.fuse = fuse
        self.causal = fuse.causal and all(b.causal for b in self.branches)
        self.streaming = fuse.streaming and all(b.streaming for b in self.branches)
        self.mixes_positions = True  # fusions may pool over time (e.g. adaptive fusion)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.fuse([branch(x, mask) for branch in self.branches], mask, x)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """``forward(x, mask)[:, -1:]``: a fusion that reads the streams position by position needs each branch at
        the newest position only."""
        if not self.fuse.streams_positionwise:
            return self.forward(x, mask)[:, -1:]
        return self.fuse.forward_last([branch.forward_last(x, mask) for branch in self.branches], mask, x)

    def offers_prefixes(self) -> bool:
        """Every branch and the fusion offer it."""
        return self.fuse.offers_prefixes() and all(b.offers_prefixes() for b in self.branches)

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.causal:
            return self.forward(x, mask)
        if not self.offers_prefixes():
            raise NotImplementedError("a branch or the fusion of this parallel layer has no exact every-prefix pass")
        return self.fuse.forward_prefixes([branch.forward_prefixes(x, mask) for branch in self.branches], mask, x)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        branch_states = [b.init_state(batch_size, device, dtype) for b in self.branches]
        return branch_states, self.fuse.init_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        branch_states, fuse_state = state
        outputs, new_states = [], []
        for branch, branch_state in zip(self.branches, branch_states):
            y_t, branch_state = branch.step(x_t, branch_state)
            outputs.append(y_t)
            new_states.append(branch_state)
        y_t, fuse_state = self.fuse.step(outputs, fuse_state, x_t)
        return y_t, (new_states, fuse_state)


class Residual(nn.Module):
    """Post-norm ``Norm(x + Dropout(f(x)))`` or, with ``norm_first``, pre-norm ``x + Dropout(f(Norm(x)))``."""

    def __init__(self, inner: nn.Module, d_model: int, dropout: float, norm: NormKind, norm_eps: float,
                 norm_first: bool) -> None:
        super().__init__()
        self.inner = inner
        self.dropout = HashDropout(dropout)
        self.norm = create_norm(norm, d_model, norm_eps)
        self.norm_first = norm_first
        self.causal = inner.causal
        self.streaming = inner.streaming
        self.mixes_positions = inner.mixes_positions

    def _combine(self, x: Tensor, y: Tensor) -> Tensor:
        return x + self.dropout(y) if self.norm_first else self.norm(x + self.dropout(y))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = self.inner(self.norm(x) if self.norm_first else x, mask)
        return self._combine(x, y)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        y = self.inner.forward_last(self.norm(x) if self.norm_first else x, mask)
        return self._combine(x[:, -1:], y)

    def offers_prefixes(self) -> bool:
        return self.inner.offers_prefixes()

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        y = self.inner.forward_prefixes(self.norm(x) if self.norm_first else x, mask)
        return self._combine(x, y)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        return self.inner.init_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        y_t, state = self.inner.step(self.norm(x_t) if self.norm_first else x_t, state)
        return self._combine(x_t, y_t), state
