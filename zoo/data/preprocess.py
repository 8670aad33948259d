"""From raw interactions to an :class:`InteractionDataset`: filter, de-duplicate, k-core, order, index.

Steps, in this order, all vectorised over the whole log:

1. rating threshold: keep interactions with ``rating >= rating_threshold``;
2. de-duplication of repeated (user, item) pairs: keep ``all``, the ``first`` or the ``last``
   (by time; equal timestamps are ordered by file position);
3. k-core: drop users with fewer than ``user_core`` and items with fewer than ``item_core``
   interactions, repeated until nothing changes (a fixed point);
4. indexing: items get indices 1..n in order of first appearance in the (filtered) file,
   users 0..m-1 likewise; raw ids stay strings;
5. time ordering: each user's interactions sorted by timestamp, ties kept in file order
   (a stable sort).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from zoo.data.atomic import RawInteractions
from zoo.data.dataset import InteractionDataset
from zoo.data.sequences import Sequences
from zoo.data.vocab import Vocabulary, factorize

DedupPolicy = Literal["all", "first", "last"]


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing settings (all off by default: the log is used as it is)."""

    rating_threshold: float | None = None
    dedup: DedupPolicy = "all"
    user_core: int = 0
    item_core: int = 0

    def __post_init__(self) -> None:
        if self.dedup not in ("all", "first", "last"):
            raise ValueError(f"dedup must be 'all', 'first' or 'last', got {self.dedup!r}")
        for name in ("user_core", "item_core"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dedup_mask(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, policy: DedupPolicy) -> np.ndarray:
    """Boolean mask over interactions (file order) keeping one per (user, item) pair, or all."""
    n = len(users)
    if policy == "all" or n == 0:
        return np.ones(n, dtype=bool)
    order = np.lexsort((timestamps, items, users))  # stable: equal keys stay in file order
    u, i = users[order], items[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    chosen = new_group if policy == "first" else np.append(new_group[1:], True)
    keep = np.zeros(n, dtype=bool)
    keep[order[chosen]] = True
    return keep


def k_core_mask(users: np.ndarray, items: np.ndarray, user_core: int, item_core: int) -> tuple[np.ndarray, int]:
    """Mask keeping interactions whose user has >= ``user_core`` and item >= ``item_core`` of them,
    iterated to a fixed point; also returns the number of rounds it took. ``users`` / ``items`` are codes."""
    keep = np.ones(len(users), dtype=bool)
    if user_core <= 1 and item_core <= 1:
        return keep, 0
    rounds = 0
    while True:
        rounds += 1
        user_counts = np.bincount(users[keep], minlength=int(users.max(initial=-1)) + 1)
        item_counts = np.bincount(items[keep], minlength=int(items.max(initial=-1)) + 1)
        new_keep = keep & (user_counts[users] >= user_core) & (item_counts[items] >= item_core)
        if np.array_equal(new_keep, keep):
            return keep, rounds
        keep = new_keep


def build_dataset(raw: RawInteractions, name: str, config: Preprocessing = Preprocessing()) -> InteractionDataset:
    """Apply :class:`Preprocessing` to ``raw`` and index the result (see the module docstring)."""
    steps: list[dict[str, Any]] = []
    keep = np.ones(len(raw), dtype=bool)
    if config.rating_threshold is not None:
        if raw.ratings is None:
            raise ValueError(f"rating_threshold={config.rating_threshold} but {raw.source} has no rating column")
        keep &= raw.ratings >= config.rating_threshold
        steps.append({"step": "rating_threshold", "kept": int(keep.sum())})

    index = np.flatnonzero(keep)
    _, user_codes = factorize(raw.users[index])
    _, item_codes = factorize(raw.items[index])
    dedup = dedup_mask(user_codes, item_codes, raw.timestamps[index], config.dedup)
    if config.dedup != "all":
        steps.append({"step": f"dedup_{config.dedup}", "removed": int((~dedup).sum())})
    index, user_codes, item_codes = index[dedup], user_codes[dedup], item_codes[dedup]
    core, rounds = k_core_mask(user_codes, item_codes, config.user_core, config.item_core)
    if rounds:
        steps.append({"step": "k_core", "user_core": config.user_core, "item_core": config.item_core,
                      "rounds": rounds, "removed": int((~core).sum())})
    index = index[core]
    if len(index) == 0:
        raise ValueError(f"no interactions left in {raw.source} after preprocessing {config.to_dict()}")

    user_ids, user_index = factorize(raw.users[index])
    item_ids, item_index = factorize(raw.items[index])
    times = raw.timestamps[index]
    order = np.lexsort((times, user_index))  # stable: equal timestamps keep file order
    counts = np.bincount(user_index, minlength=len(user_ids))
    sequences = Sequences(
        np.concatenate([[0], np.cumsum(counts)]),
        (item_index[order] + 1).astype(np.int64),
        times[order].astype(np.float64),
    )
    return InteractionDataset(
        name=name,
        sequences=sequences,
        item_vocab=Vocabulary(item_ids, padding=True, name="item"),
        user_vocab=Vocabulary(user_ids, padding=False, name="user"),
        ratings=None if raw.ratings is None else raw.ratings[index][order],
        facts={
            "source": raw.source,
            "time_order": raw.time_source,
            "raw_interactions": len(raw),
            "preprocessing": config.to_dict(),
            "preprocessing_steps": steps,
            **({"time_format": raw.time_format} if raw.time_format else {}),
            **({"columns": raw.columns} if raw.columns else {}),
        },
    )

