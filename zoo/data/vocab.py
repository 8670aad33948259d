"""Raw id <-> index vocabularies (items: index 0 is padding; users: no padding)."""

from __future__ import annotations

from typing import Any, Iterable, Literal

import numpy as np

PAD_TOKEN = "[PAD]"


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values in order of first appearance, and each value's 0-based code in that order."""
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[inverse.reshape(-1)]


def _as_str_array(raw_ids: Iterable[Any] | np.ndarray) -> np.ndarray:
    if isinstance(raw_ids, str):
        raise TypeError(f"expected a sequence of raw ids, got the single string {raw_ids!r}; wrap it in a list")
    array = np.asarray(raw_ids if isinstance(raw_ids, np.ndarray) else list(raw_ids))
    if array.ndim != 1:
        raise ValueError(f"raw ids must be a flat sequence, got shape {array.shape}")
    return array.astype(str) if array.size else np.zeros(0, dtype="<U1")


class Vocabulary:
    """A bijection between raw ids (strings) and indices.

    With ``padding=True`` (items) index 0 is the padding token ``[PAD]`` and real ids take
    ``1..size`` in the order given; with ``padding=False`` (users) they take ``0..size-1``.
    Lookups are vectorised (a sorted copy and ``searchsorted``), so a vocabulary of millions
    of ids needs no Python dict.
    """

    def __init__(self, raw_ids: Iterable[Any] | np.ndarray, *, padding: bool = True, name: str = "item") -> None:
        ids = _as_str_array(raw_ids)
        self.name = name
        self.padding = padding
        self._ids = ids
        self._order: np.ndarray | None = None
        self._sorted: np.ndarray | None = None
        if padding and len(ids) and np.any(ids == PAD_TOKEN):
            raise ValueError(f"raw id {PAD_TOKEN!r} is reserved for padding in the {name} vocabulary")
        self._build_lookup()

    @classmethod
    def numbered(cls, count: int, *, padding: bool = True, name: str = "item") -> "Vocabulary":
        """Raw ids ``"1".."count"`` (with padding: raw id == index) or ``"0".."count-1"`` (without);
        distinct by construction, so the lookup table is only built when first needed."""
        vocab = cls.__new__(cls)
        vocab.name, vocab.padding = name, padding
        vocab._ids = np.arange(int(padding), count + int(padding)).astype(str)
        vocab._order = vocab._sorted = None
        return vocab

    def _build_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted raw ids and the permutation that sorts them (checked for repeats once)."""
        if self._order is None or self._sorted is None:
            order = np.argsort(self._ids, kind="stable")
            ids_sorted = self._ids[order]
            repeated = ids_sorted[1:][ids_sorted[1:] == ids_sorted[:-1]]
            if len(repeated):
                raise ValueError(f"{self.name} vocabulary has repeated raw ids: {sorted(set(repeated.tolist()))[:20]}")
            self._order, self._sorted = order, ids_sorted
        return self._order, self._sorted

    @property
    def offset(self) -> int:
        """Index of the first real id (1 with padding, else 0)."""
        return int(self.padding)

    @property
    def size(self) -> int:
        """Number of real ids (padding not counted)."""
        return len(self._ids)

    def __len__(self) -> int:
        """Size of the index space: ``size + 1`` with padding."""
        return self.size + self.offset

    @property
    def raw_ids(self) -> np.ndarray:
        """Real raw ids in index order (``raw_ids[i]`` has index ``i + offset``)."""
        return self._ids

    def encode(self, raw_ids: Iterable[Any] | np.ndarray, unknown: Literal["error", "skip"] = "error") -> np.ndarray:
        """Indices (int64) of ``raw_ids``; unknown ids raise (listing them) or are dropped with ``unknown="skip"``."""
        if unknown not in ("error", "skip"):
            raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
        query = _as_str_array(raw_ids)
        order, ids_sorted = self._build_lookup()
        if not self.size:
            found = np.zeros(len(query), dtype=bool)
            pos = np.zeros(len(query), dtype=np.int64)
        else:
            pos = np.minimum(np.searchsorted(ids_sorted, query), self.size - 1)
            found = ids_sorted[pos] == query
        if not found.all():
            if unknown == "error":
                missing = list(dict.fromkeys(query[~found].tolist()))
                shown = ", ".join(repr(m) for m in missing[:20]) + (" ..." if len(missing) > 20 else "")
                raise KeyError(
                    f"{len(missing)} unknown {self.name} id(s) not in the vocabulary of {self.size}: {shown} "
                    f"(pass unknown='skip' to drop them)"
                )
            pos = pos[found]
        return order[pos].astype(np.int64) + self.offset

    def decode(self, indices: Iterable[int] | np.ndarray) -> list[str]:
        """Raw ids of ``indices`` (index 0 decodes to ``[PAD]`` when there is padding)."""
        idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64).reshape(-1)
        bad = idx[(idx < 0) | (idx >= len(self))]
        if len(bad):
            raise IndexError(f"{self.name} indices {bad[:20].tolist()} are out of range 0..{len(self) - 1}")
        out = np.empty(len(idx), dtype=object)
        real = idx >= self.offset
        out[real] = self._ids[idx[real] - self.offset]
        out[~real] = PAD_TOKEN
        return out.tolist()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: name, padding flag and raw ids in index order."""
        return {"name": self.name, "padding": self.padding, "raw_ids": self._ids.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Vocabulary":
        """Inverse of :meth:`to_dict`."""
        return cls(data["raw_ids"], padding=bool(data["padding"]), name=str(data.get("name", "item")))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self.padding == other.padding and np.array_equal(self._ids, other._ids)

    def __repr__(self) -> str:
        return f"Vocabulary(name={self.name!r}, size={self.size}, padding={self.padding})"

