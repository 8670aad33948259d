"""Generated interaction data for scale tests: seeded Markov and periodic user sequences.

Every array is built with vectorised numpy over all users at once (one Python iteration per
time step for the Markov chain, none per user or interaction), so millions of items and
sequences of 10k items stay cheap. Item ``i`` has raw id ``str(i)`` and index ``i``.

- ``markov``: each item has one fixed successor (a seeded random permutation); the next item
  is the current item's successor with probability ``1 - noise``, else a uniform random item.
- ``periodic``: each user repeats a cycle of ``period`` random items (period drawn per user
  from ``periods``); each position is replaced by a uniform random item with probability ``noise``.
- ``mixed``: each user is Markov or periodic with probability 1/2.

Timestamps increase within each user by exponential gaps (mean 1 hour, in seconds).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from zoo.data.dataset import InteractionDataset
from zoo.data.sequences import Sequences
from zoo.data.vocab import Vocabulary

Pattern = Literal["markov", "periodic", "mixed"]


def _lengths(rng: np.random.Generator, num_users: int, length: int | tuple[int, int]) -> np.ndarray:
    if isinstance(length, int):
        low = high = length
    else:
        low, high = length
    if not 1 <= low <= high:
        raise ValueError(f"length must be an int >= 1 or a (min, max) pair with 1 <= min <= max, got {length}")
    return rng.integers(low, high + 1, size=num_users, dtype=np.int64)


def generate_sequences(
    num_users: int,
    num_items: int,
    length: int | tuple[int, int] = 50,
    pattern: Pattern = "mixed",
    noise: float = 0.1,
    periods: tuple[int, int] = (2, 8),
    seed: int = 0,
) -> Sequences:
    """Seeded user sequences (see the module docstring); items are indices ``1..num_items`` (int32)."""
    if num_users < 1 or num_items < 2:
        raise ValueError(f"need num_users >= 1 and num_items >= 2, got {num_users} and {num_items}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if pattern not in ("markov", "periodic", "mixed"):
        raise ValueError(f"pattern must be 'markov', 'periodic' or 'mixed', got {pattern!r}")
    if not 1 <= periods[0] <= periods[1]:
        raise ValueError(f"periods must be (min, max) with 1 <= min <= max, got {periods}")
    rng = np.random.default_rng(seed)
    lengths = _lengths(rng, num_users, length)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    rows = np.repeat(np.arange(num_users, dtype=np.int64), lengths)
    step = np.arange(total, dtype=np.int64) - offsets[rows]

    random_items = rng.integers(1, num_items + 1, size=total, dtype=np.int32)
    replaced = rng.random(total) < noise
    if pattern == "mixed":
        is_markov_user = rng.random(num_users) < 0.5
    else:
        is_markov_user = np.full(num_users, pattern == "markov")

    items = np.empty(total, dtype=np.int32)
    # Periodic users: position t repeats cycle slot t mod period.
    user_period = rng.integers(periods[0], periods[1] + 1, size=num_users, dtype=np.int64)
    cycles = rng.integers(1, num_items + 1, size=(num_users, periods[1]), dtype=np.int32)
    periodic = ~is_markov_user[rows]
    p_rows = rows[periodic]
    items[periodic] = cycles[p_rows, step[periodic] % user_period[p_rows]]
    items[periodic & replaced] = random_items[periodic & replaced]

    # Markov users: first item random, then successor[prev] unless replaced by noise.
    successor = np.empty(num_items + 1, dtype=np.int32)
    successor[1:] = rng.permutation(num_items).astype(np.int32) + 1
    successor[0] = 0
    markov_starts = offsets[:-1][is_markov_user]
    markov_lengths = lengths[is_markov_user]
    items[markov_starts] = random_items[markov_starts]
    for t in range(1, int(markov_lengths.max(initial=0))):
        at = markov_starts[markov_lengths > t] + t
        items[at] = np.where(replaced[at], random_items[at], successor[items[at - 1]])

    gaps = rng.exponential(3600.0, size=total)
    times = np.cumsum(gaps)
    user_base = times[offsets[:-1]] - gaps[offsets[:-1]]
    times = times - np.repeat(user_base, lengths) + 1.0e9
    return Sequences(offsets, items, times)


def generate_dataset(
    num_users: int = 1000,
    num_items: int = 10_000,
    length: int | tuple[int, int] = 50,
    pattern: Pattern = "mixed",
    noise: float = 0.1,
    periods: tuple[int, int] = (2, 8),
    seed: int = 0,
) -> InteractionDataset:
    """A generated :class:`InteractionDataset` with ``num_items`` items (raw id ``str(i)`` = index ``i``)."""
    sequences = generate_sequences(num_users, num_items, length, pattern, noise, periods, seed)
    settings = {"num_users": num_users, "num_items": num_items, "length": length, "pattern": pattern,
                "noise": noise, "periods": list(periods), "seed": seed}
    return InteractionDataset(
        name=f"synthetic-{pattern}",
        sequences=sequences,
        item_vocab=Vocabulary.numbered(num_items, padding=True, name="item"),
        user_vocab=Vocabulary.numbered(num_users, padding=False, name="user"),
        facts={"source": "generated", "generator": settings},
    )
