"""The in-memory dataset: per-user item sequences in time order, vocabularies and item side information."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import numpy as np

from zoo.data.sequences import Sequences
from zoo.data.vocab import Vocabulary


@dataclass
class ItemFeatures:
    """Item side information aligned with item indices (row / entry 0 belongs to padding).

    ``attributes`` is a multi-hot float32 matrix ``(num_items + 1, len(attribute_names))``
    (e.g. MovieLens genres); ``text`` holds one string per item (e.g. ``"Toy Story (1995)"``),
    ``""`` for padding and for items the item file does not describe (or all ``""`` when the
    item file has no text field; see :func:`zoo.data.features.item_features`).
    """

    attributes: np.ndarray
    attribute_names: list[str]
    text: list[str]

    @property
    def num_with_text(self) -> int:
        """How many items have a non-empty text (0: the dataset has no item texts)."""
        return sum(bool(t) for t in self.text)

    def to_dict(self) -> dict[str, Any]:
        """Facts for a config file: the attribute vocabulary and how many items have text."""
        return {"attribute_names": list(self.attribute_names), "num_with_text": self.num_with_text}


@dataclass
class InteractionDataset:
    """A preprocessed interaction log: one time-ordered item sequence per user.

    ``sequences`` row ``u`` belongs to user index ``u`` (``user_vocab`` has no padding);
    items are indices into ``item_vocab`` (index 0 = padding). ``ratings`` (if the log had
    them) are aligned with ``sequences.items``. ``facts`` records the source and every
    preprocessing step with its counts, and goes into a trained model's ``config.json``.
    """

    name: str
    sequences: Sequences
    item_vocab: Vocabulary
    user_vocab: Vocabulary
    ratings: np.ndarray | None = None
    item_features: ItemFeatures | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.sequences) != self.user_vocab.size:
            raise ValueError(f"{len(self.sequences)} sequences but {self.user_vocab.size} users in the vocabulary")
        if self.sequences.num_interactions:
            low, high = int(self.sequences.items.min()), int(self.sequences.items.max())
            if low < 1 or high > self.num_items:
                raise ValueError(f"item indices span {low}..{high}, expected 1..{self.num_items}")

    @property
    def num_items(self) -> int:
        """Number of real items (the model's ``num_items``; scores have ``num_items + 1`` columns)."""
        return self.item_vocab.size

    @property
    def num_users(self) -> int:
        return self.user_vocab.size

    @property
    def num_interactions(self) -> int:
        return self.sequences.num_interactions

    def encode_items(self, raw_ids: Iterable[Any], unknown: Literal["error", "skip"] = "error") -> np.ndarray:
        """Item indices of raw ids (see :meth:`Vocabulary.encode`)."""
        return self.item_vocab.encode(raw_ids, unknown=unknown)

    def decode_items(self, indices: Iterable[int]) -> list[str]:
        """Raw item ids of indices."""
        return self.item_vocab.decode(indices)

    def split(self, method: Literal["loo", "ratio"] = "loo", ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)):
        """Split for training and evaluation (see :mod:`zoo.data.split`)."""
        from zoo.data.split import leave_one_out, ratio_by_time

        if method == "loo":
            return leave_one_out(self)
        if method == "ratio":
            return ratio_by_time(self, ratios)
        raise ValueError(f"split method must be 'loo' or 'ratio', got {method!r}")

    def to_dict(self, with_vocabulary: bool = True) -> dict[str, Any]:
        """JSON-serialisable dataset facts, with the item vocabulary (raw ids in index order)."""
        out: dict[str, Any] = {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": self.num_interactions,
            **self.facts,
        }
        if self.item_features is not None:
            out["item_features"] = self.item_features.to_dict()
        if with_vocabulary:
            out["item_vocabulary"] = self.item_vocab.to_dict()
        return out

    def __repr__(self) -> str:
        return (
            f"InteractionDataset({self.name!r}: {self.num_users} users, {self.num_items} items, "
            f"{self.num_interactions} interactions)"
        )
