"""Base classes that state the block contract (see docs/block-contract.md).

Every registered block subclasses one of these and declares, as class attributes:

* ``kind`` -- ``sequence``, ``fusion``, ``readout``, ``item-encoder`` or ``head``;
* ``causal`` -- output at position t depends on inputs at positions <= t only (with default
  arguments; an instance whose arguments change that sets ``self.causal`` in ``__init__``);
* ``streaming`` -- offers ``init_state`` / ``step`` (again overridable per instance).

Shapes: ``x`` is ``(B, L, D)``; ``mask`` is ``(B, L)`` bool, True at real items. Padding is on the
left, so position ``-1`` holds the newest item. Values at padded positions of an input are
arbitrary: a block must not let them reach real positions, and its own output at padded
positions is ignored by whatever follows.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

State = Any


class Block(nn.Module):
    """Common metadata of every registered block."""

    kind: ClassVar[str]
    causal: ClassVar[bool]
    streaming: ClassVar[bool] = False
    block_name: ClassVar[str]

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        raise NotImplementedError(f"{type(self).__name__} does not support streaming (step-by-step) inference")


class SequenceBlock(Block):
    """Maps ``x (B, L, D)`` and ``mask (B, L)`` to ``(B, L, D)``.

    Streaming blocks also implement ``step(x_t (B, D), state) -> (y_t (B, D), state)``, equal to
    ``forward`` on the sequence seen so far, position by position.
    """

    kind = "sequence"
    mixes_positions: ClassVar[bool] = True

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """The output at the newest position only, ``(B, 1, D)``: equal to ``forward(x, mask)[:, -1:]``.

        Scoring reads nothing else; blocks that can skip the other positions' work override this.
        """
        return self.forward(x, mask)[:, -1:]

    def offers_prefixes(self) -> bool:
        """Whether :meth:`forward_prefixes` is exact for this instance: every causal block, and the
        non-causal blocks that implement it."""
        return self.causal

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """For every position ``t`` at once, the output at the newest position of the prefix ending at ``t``.

        ``out[:, t] == forward(x[:, :t + 1], mask[:, :t + 1])[:, -1]``: what scoring the history up to ``t``
        would see, so one pass trains every target of a window (objective ``all``). For a causal block
        that is ``forward`` itself; a block that looks ahead overrides this with an exact computation
        (and :meth:`offers_prefixes`), or has none.
        """
        if not self.causal:
            raise NotImplementedError(f"{type(self).__name__} looks ahead and has no exact every-prefix pass")
        return self.forward(x, mask)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} does not support streaming (step-by-step) inference")


class PositionwiseBlock(SequenceBlock):
    """A sequence block that transforms each position on its own (no mixing over time).

    Subclasses implement ``transform(x)`` for ``(..., D)``; forward and streaming follow.
    """

    causal = True
    streaming = True
    mixes_positions = False

    def transform(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.transform(x)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.transform(x[:, -1:])

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        return None

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.transform(x_t), state


class FusionBlock(Block):
    """Combines ``k`` streams ``(B, L, D)`` into one, given the mask and the streams' common input ``x``."""

    kind = "fusion"
    causal = True
    positionwise: ClassVar[bool] = False  # combines the streams position by position (nothing over time)
    streams_positionwise: ClassVar[bool] = False  # its output at a position reads the streams at that position only
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = None

    def forward(self, streams: Sequence[Tensor], mask: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_last(self, newest: Sequence[Tensor], mask: Tensor, x: Tensor) -> Tensor:
        """``forward(streams, mask, x)[:, -1:]`` from each stream's newest position alone (``newest``, ``(B, 1, D)``
        each, what a branch's ``forward_last`` gives) and the whole input ``x`` with its mask: for fusions whose
        ``streams_positionwise`` holds, so that scoring runs every branch at the newest position only."""
        if not self.streams_positionwise:
            raise NotImplementedError(f"{type(self).__name__} reads the streams at other positions than the newest")
        return self.forward(newest, mask[:, -1:], x[:, -1:])

    def offers_prefixes(self) -> bool:
        """Whether :meth:`forward_prefixes` is exact: causal and position-wise fusions, and those that implement it."""
        return self.causal or self.positionwise

    def forward_prefixes(self, streams: Sequence[Tensor], mask: Tensor, x: Tensor) -> Tensor:
        """At each position ``t``, the fusion of the streams' prefix outputs as the prefix ending at ``t`` would
        fuse them (see :meth:`SequenceBlock.forward_prefixes`); ``x`` is the layer's (causal) input."""
        if not self.offers_prefixes():
            raise NotImplementedError(f"{type(self).__name__} pools over time and has no exact every-prefix pass")
        return self.forward(streams, mask, x)

    def step(self, streams_t: Sequence[Tensor], state: State, x_t: Tensor) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} does not support streaming (step-by-step) inference")


class ReadoutBlock(Block):
    """Turns ``(B, L, D)`` into the user vector ``(B, D)``.

    ``positionwise`` readouts (the last position) read every prefix at once: applied to each
    position they give that prefix's user vector, which all-position training and streaming use.
    ``newest_only`` readouts read nothing but the newest position, so scoring may run the encoder's
    ``forward_last``.
    """

    kind = "readout"
    causal = True
    positionwise: ClassVar[bool] = False
    newest_only: ClassVar[bool] = False

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def offers_prefixes(self) -> bool:
        """Whether :meth:`forward_prefixes` is exact: position-wise readouts, and those that implement it."""
        return self.positionwise

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """For every position ``t`` at once, the user vector of the prefix ending at ``t``, ``(B, L, D)``:
        ``out[:, t] == forward(x[:, :t + 1], mask[:, :t + 1])``, so one pass over a window's states trains
        every target of the window (objective ``all``). A position-wise readout reads each position itself."""
        if not self.positionwise:
            raise NotImplementedError(f"{type(self).__name__} reads the whole sequence and has no exact every-prefix pass")
        return x


class ItemEncoderBlock(Block):
    """Turns item ids ``(B, L)`` (+ optional timestamps ``(B, L)``) into ``(B, L, D)``.

    ``item_table()`` returns the ``(num_items + 1, D)`` item representations a tied head scores
    against (row 0 is padding). Streaming encoders implement
    ``step(item_ids_t (B,), state, timestamps_t=None) -> (x_t (B, D), state)``.
    """

    kind = "item-encoder"
    causal = True

    def forward(self, item_ids: Tensor, mask: Tensor, timestamps: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def item_table(self) -> Tensor:
        raise NotImplementedError

    def step(self, item_ids_t: Tensor, state: State, timestamps_t: Tensor | None = None) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} does not support streaming (step-by-step) inference")


class HeadBlock(Block):
    """Scores user vectors ``(B, D)`` against item representations.

    ``items`` is ``(N, D)`` (the same candidates for every user, e.g. the whole table) or
    ``(B, C, D)`` (per-user candidates); ``item_ids`` has shape ``(N,)`` or ``(B, C)``. Returns
    logits ``(B, N)`` or ``(B, C)``.
    """

    kind = "head"
    causal = True

    def forward(self, user: Tensor, items: Tensor, item_ids: Tensor) -> Tensor:
        raise NotImplementedError
