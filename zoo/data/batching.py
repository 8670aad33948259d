"""Samples and left-padded batches, built with vectorised numpy gathers.

A sample is a window of one user's sequence: ``history = items[start:end]`` (flat positions
of a :class:`~zoo.data.sequences.Sequences`). A batch keeps the most recent ``max_len`` items of
each history, left-padded with 0, and the timestamps aligned with them (0.0 at pads):

- :class:`NextItemSamples`: history -> the next item ``items[end]`` (evaluation, and
  training objective ``last``: every prefix of a training sequence is one sample);
- :class:`ShiftedSequenceSamples`: objective ``all``: per user ``input = seq[:-1]``,
  ``targets = seq[1:]`` (0 at pads), one sample per user.

Both are ``torch.utils.data.Dataset`` s: ``ds[i]`` is one sample, ``ds[list_of_indices]``
is a whole batch in one gather, and :meth:`loader` wraps them in a ``DataLoader`` that
fetches by batch. :func:`collate_left_padded` left-pads variable-length samples for
objectives built sample by sample.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from zoo.data.sequences import Sequences


def gather_windows(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int, fill: Any = 0) -> np.ndarray:
    """``(B, width)``: row ``b`` holds ``values[max(starts[b], ends[b] - width):ends[b]]`` right-aligned,
    with ``fill`` on the left."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    index = ends[:, None] - width + np.arange(width, dtype=np.int64)[None, :]
    valid = index >= starts[:, None]
    out = values[np.where(valid, index, 0)] if len(values) else np.zeros(index.shape, dtype=values.dtype)
    out[~valid] = fill
    return out


def flat_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges ``[starts[b], ends[b])``: the range number and the position of every element, concatenated."""
    lengths = np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
    positions = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(first, lengths) + np.repeat(starts, lengths)
    return rows, positions


def trim_padding(batch: dict[str, torch.Tensor], key: str = "item_ids") -> dict[str, torch.Tensor]:
    """Drop leading columns that are padding in every row of ``batch[key]`` (from all 2-D entries)."""
    ids = batch[key]
    real_columns = (ids > 0).any(0).nonzero()
    first = int(real_columns[0]) if len(real_columns) else ids.shape[1]
    if first == 0:
        return batch
    return {k: (v[:, first:] if v.dim() == 2 and v.shape == ids.shape else v) for k, v in batch.items()}


def left_pad(rows: Sequence[np.ndarray], width: int | None = None, dtype: Any = np.int64) -> np.ndarray:
    """Stack 1-D arrays right-aligned into ``(len(rows), width)`` with 0 on the left; longer rows keep their last ``width``."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = np.zeros((len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        tail = np.asarray(row)[len(row) - min(len(row), width):]
        if len(tail):
            out[i, width - len(tail):] = tail
    return out


def collate_left_padded(samples: Sequence[Mapping[str, Any]], width: int | None = None) -> dict[str, torch.Tensor]:
    """Collate samples (dicts of 1-D arrays and scalars): 1-D entries are left-padded to a common width
    (the longest, or ``width`` keeping the most recent entries), scalars are stacked."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    out: dict[str, torch.Tensor] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = np.asarray(values[0])
        if first.ndim == 0:
            out[key] = torch.as_tensor(np.asarray(values))
        elif first.ndim == 1:
            out[key] = torch.from_numpy(left_pad([np.asarray(v) for v in values], width, dtype=first.dtype))
        else:
            raise ValueError(f"sample entry {key!r} has {first.ndim} dimensions; expected a scalar or a 1-D array")
    return out


class WindowSamples(Dataset):
    """Base for sample sets over a :class:`Sequences`: indexing by an int gives one sample, by a
    sequence of ints a batch (``dict`` of tensors); subclasses define :meth:`batch`."""

    sequences: Sequences
    max_len: int

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int | Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(f"sample {index} out of range for {len(self)} samples")
            return {k: v[0] for k, v in self.batch(np.array([index % len(self)])).items()}
        return self.batch(np.asarray(index, dtype=np.int64))

    def iter_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False, trim: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches in order, or in a seeded random order; ``trim`` drops all-padding leading columns."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for begin in range(0, stop, batch_size):
            batch = self.batch(order[begin:begin + batch_size])
            yield trim_padding(batch) if trim else batch

    def loader(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        sampler: Sampler[int] | None = None,
        **kwargs: Any,
    ) -> DataLoader:
        """A ``DataLoader`` that fetches whole batches with one vectorised gather each. Pass
        ``sampler`` (e.g. a ``DistributedSampler``) to choose the sample indices yourself."""
        if sampler is None:
            sampler = RandomSampler(self, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(self)
        return DataLoader(self, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last), **kwargs)

    def _window(self, starts: np.ndarray, ends: np.ndarray) -> dict[str, torch.Tensor]:
        items = gather_windows(self.sequences.items, starts, ends, self.max_len).astype(np.int64)
        times = gather_windows(self.sequences.timestamps, starts, ends, self.max_len, fill=0.0)
        return {"item_ids": torch.from_numpy(items), "timestamps": torch.from_numpy(times.astype(np.float64))}


def _check_max_len(max_len: int) -> int:
    if int(max_len) < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return int(max_len)


class NextItemSamples(WindowSamples):
    """Samples ``history = items[starts[s]:ends[s]] -> target = items[ends[s]]`` over ``sequences``.

    ``rows[s]`` is the user index of sample ``s`` (``starts`` default to the rows' first
    positions). A batch holds ``item_ids`` (B, max_len) and ``timestamps`` (B, max_len), left-
    padded, most recent items kept; ``target`` (B,); ``user`` (B,); ``history_length`` (B,)
    (full length, before truncation).
    """

    def __init__(self, sequences: Sequences, rows: np.ndarray, ends: np.ndarray, max_len: int,
                 starts: np.ndarray | None = None) -> None:
        self.sequences = sequences
        self.max_len = _check_max_len(max_len)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.starts = sequences.offsets[self.rows] if starts is None else np.asarray(starts, dtype=np.int64)
        if not len(self.rows) == len(self.ends) == len(self.starts):
            raise ValueError("rows, ends and starts must have one entry per sample")
        empty = np.flatnonzero(self.ends <= self.starts)
        if len(empty):
            raise ValueError(
                f"{len(empty)} sample(s) have an empty history (samples {empty[:10].tolist()}, users "
                f"{self.rows[empty[:10]].tolist()}): a next-item sample needs at least one earlier item"
            )
        if len(self.ends) and (self.ends.max() >= len(sequences.items) or
                               np.any(self.ends >= sequences.offsets[self.rows + 1])):
            raise ValueError("every target position must lie inside its user's sequence")

    @classmethod
    def every_prefix(cls, sequences: Sequences, max_len: int) -> "NextItemSamples":
        """Objective ``last``: every item of every sequence except each user's first is the target of
        the prefix before it (RecBole's data augmentation)."""
        rows = sequences.row_of_position()
        positions = np.arange(sequences.num_interactions, dtype=np.int64)
        later = positions > sequences.offsets[rows]
        return cls(sequences, rows[later], positions[later], max_len)

    @property
    def history_lengths(self) -> np.ndarray:
        return self.ends - self.starts

    @property
    def targets(self) -> np.ndarray:
        return self.sequences.items[self.ends].astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        starts, ends = self.starts[indices], self.ends[indices]
        out = self._window(starts, ends)
        out["target"] = torch.from_numpy(self.sequences.items[ends].astype(np.int64))
        out["user"] = torch.from_numpy(self.rows[indices])
        out["history_length"] = torch.from_numpy(ends - starts)
        return out


class ShiftedSequenceSamples(WindowSamples):
    """Objective ``all``: one sample per user with at least 2 items; ``item_ids`` = the last
    ``max_len`` items of ``seq[:-1]``, ``targets`` = the items after each of them (``seq[1:]``),
    0 at pads; ``timestamps`` aligned with ``item_ids``; ``user`` (B,)."""

    def __init__(self, sequences: Sequences, max_len: int) -> None:
        self.sequences = sequences
        self.max_len = _check_max_len(max_len)
        self.rows = np.flatnonzero(sequences.lengths >= 2).astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        rows = self.rows[indices]
        starts, ends = self.sequences.offsets[rows], self.sequences.offsets[rows + 1]
        out = self._window(starts, ends - 1)
        targets = gather_windows(self.sequences.items, starts + 1, ends, self.max_len)
        out["targets"] = torch.from_numpy(targets.astype(np.int64))
        out["user"] = torch.from_numpy(rows)
        return out
