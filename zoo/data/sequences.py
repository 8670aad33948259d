"""Variable-length item sequences stored flat: the one container every data step passes along."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Sequences:
    """Variable-length sequences stored flat (CSR layout): row ``u`` is ``items[offsets[u]:offsets[u+1]]``.

    ``items`` are item indices (1..num_items, never 0) and ``timestamps`` are aligned with
    them; within a row both are in time order. No Python object per interaction is made, so
    millions of rows and interactions stay cheap.
    """

    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")
        if self.offsets[-1] != len(self.items) or len(self.items) != len(self.timestamps):
            raise ValueError(
                f"offsets end at {self.offsets[-1]} but there are {len(self.items)} items and "
                f"{len(self.timestamps)} timestamps"
            )

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], timestamps: Sequence[Sequence[float]] | None = None) -> "Sequences":
        """Build from Python lists (small data and tests); timestamps default to positions."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else np.zeros(0, np.int64)
        if timestamps is None:
            times = (np.arange(len(items)) - np.repeat(offsets[:-1], lengths)).astype(np.float64)
        else:
            times = np.concatenate([np.asarray(t, dtype=np.float64) for t in timestamps]) if len(rows) else np.zeros(0)
        return cls(offsets, items, times)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_interactions(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def starts(self) -> np.ndarray:
        """First flat position of every row."""
        return self.offsets[:-1]

    def row_of_position(self) -> np.ndarray:
        """The row of every flat position (int64, length ``num_interactions``)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def __getitem__(self, row: int) -> np.ndarray:
        return self.items[self.offsets[row]:self.offsets[row + 1]]

    def prefixes(self, lengths: np.ndarray) -> "Sequences":
        """Keep the first ``lengths[u]`` items of every row (``0 <= lengths[u] <= len(row u)``)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(lengths) != len(self) or np.any(lengths < 0) or np.any(lengths > self.lengths):
            raise ValueError("prefix lengths must be one per row and within 0..row length")
        keep = (np.arange(self.num_interactions) - np.repeat(self.starts, self.lengths)) < np.repeat(lengths, self.lengths)
        return Sequences(np.concatenate([[0], np.cumsum(lengths)]), self.items[keep], self.timestamps[keep])
